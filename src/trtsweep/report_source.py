"""Where a report's table comes from: a sweep directory, a results.csv, or MLflow.

:func:`load` turns ``trtsweep report``'s argument into a :class:`ReportData`: the results table (one
row per trial, the columns of results.csv), the confirmation's verdicts and ``best.yaml`` entries
when there are any, the MLflow parent run the report belongs to, and where to write it.

* a sweep directory (holding ``results.csv``; ``confirmation.json`` and ``best.yaml`` beside it);
* a ``results.csv`` file (the same files read from its directory);
* an MLflow experiment name (``trtsweep/<name>`` or just ``<name>``: its latest parent run) or a run id
  (a parent run, or a trial's child run: its parent), read with ``mlflow.search_runs``;
* nothing: the latest sweep under ``outputs/``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from trtsweep.results import TrialStatus

#: the child-run tags that are columns of results.csv (``tags.<name>`` → ``<name>``)
TAG_COLUMNS = ("status", "reason", "host.cpu_model", "host.cpu_flags", "host.cores", "host.gpu")
FLAG_TAGS = ("cached", "unstable", "best", "tie")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class ReportData:
    table: pd.DataFrame
    label: str  # what the report was made from, for its title
    out_dir: Path  # where the report goes by default (next to the source)
    verdicts: list[dict] = field(default_factory=list)  # confirmation.json: group, winner, tied, text
    best: list[dict] = field(default_factory=list)  # best.yaml entries: trial_key, overrides, command
    parent_run_id: str | None = None  # the sweep's MLflow parent run, when known
    tracking_uri: str | None = None  # the store that holds it


def latest_sweep(root: Path = Path("outputs")) -> Path:
    """The most recently written sweep directory (one holding results.csv) under ``root``."""
    found = sorted(root.rglob("results.csv"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not found:
        raise ValueError(f"no sweep under {root}/ (no results.csv); fix: trtsweep report <sweep dir | results.csv "
                         f"| MLflow experiment or run id>, or run a sweep first")
    return found[-1].parent


def load(source: str | Path | None = None, tracking_uri: str | None = None) -> ReportData:
    """The report's data from ``source`` (see the module doc); None: the latest sweep under ``outputs/``."""
    path = latest_sweep() if source is None else Path(source)
    if path.is_dir():
        csv = path / "results.csv"
        if not csv.is_file():
            raise ValueError(f"{path} holds no results.csv; fix: give a sweep directory "
                             f"(outputs/multirun/<date>/<time>) or a results.csv")
        return from_csv(csv)
    if path.is_file():
        return from_csv(path)
    if str(source).endswith((".csv", ".parquet")):
        raise ValueError(f"{source} does not exist; fix: give a sweep directory, a results.csv, an MLflow "
                         f"experiment name or run id")
    return from_mlflow(str(source), tracking_uri)


def from_csv(csv: Path) -> ReportData:
    df = pd.read_csv(csv)
    if "status" not in df or "model" not in df:
        raise ValueError(f"{csv} is no trtsweep results table (no model/status columns); fix: give the "
                         f"results.csv a sweep wrote")
    d = csv.parent
    verdicts = json.loads((d / "confirmation.json").read_text()) if (d / "confirmation.json").is_file() else []
    return ReportData(df, str(csv), d, verdicts, _best_entries(d / "best.yaml"))


def _best_entries(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    import yaml

    return list((yaml.safe_load(path.read_text()) or {}).get("best") or [])


# ---- MLflow ----
def from_mlflow(ref: str, tracking_uri: str | None = None) -> ReportData:
    """The trials of a parent run (given, the parent of a given child, or an experiment's latest)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    from trtsweep.tracking import ROLE_TAG, resolve_uri

    uri = resolve_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ValueError(f"{ref} is no sweep directory or file, and there is no MLflow store at {uri}; "
                         f"fix: give a sweep directory or results.csv, or --tracking-uri / MLFLOW_TRACKING_URI")
    client = MlflowClient(tracking_uri=uri)
    parent = _parent_run(client, ref, uri, ROLE_TAG)
    runs = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = "
                              f"'{parent.info.run_id}'", max_results=10000, order_by=["attributes.start_time ASC"])
    if not runs:
        raise ValueError(f"MLflow run {parent.info.run_id} has no trial runs; fix: give a sweep's parent run")
    df = pd.DataFrame([_row(r) for r in runs])
    tags = parent.data.tags
    sweep_dir = Path(tags.get("sweep_dir", ""))
    out = sweep_dir if tags.get("sweep_dir") and sweep_dir.is_dir() else Path.cwd()
    verdicts = [{"group": k.split(".", 1)[1] if "." in k else "", "winner": tags.get("best" + k[14:], ""),
                 "text": v} for k, v in tags.items() if k.startswith("recommendation")]
    exp = client.get_experiment(parent.info.experiment_id).name
    return ReportData(df, f"MLflow run {parent.info.run_id} ({exp})", out, verdicts,
                      _mlflow_best(client, parent.info.run_id), parent.info.run_id, uri)


def _parent_run(client: Any, ref: str, uri: str, role_tag: str) -> Any:
    if RUN_ID.match(ref):
        run = client.get_run(ref)
        parent_id = run.data.tags.get("mlflow.parentRunId")
        return client.get_run(parent_id) if parent_id else run
    exp = client.get_experiment_by_name(ref) or client.get_experiment_by_name(f"trtsweep/{ref}")
    if exp is None:
        raise ValueError(f"{ref} is no sweep directory, file, MLflow run id or experiment at {uri}; fix: "
                         f"give a sweep directory, a results.csv, an experiment (trtsweep/<name>) or a run id")
    parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`{role_tag}` = 'parent'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise ValueError(f"MLflow experiment {exp.name} has no sweep (parent run); fix: give another experiment")
    return parents[0]


def _row(run: Any) -> dict:
    """One child run as a results.csv row: params and metrics under their own names, typed."""
    tags, params = run.data.tags, run.data.params
    r: dict[str, Any] = {"trial_key": tags.get("trtsweep.trial_key", run.info.run_id)}
    for k in ("model", "engine", "precision", "batch_size", "data", "threads", "core_set"):
        if k in params:
            r[k] = _typed(params[k])
    r.update({k: _typed(v) for k, v in params.items() if k.startswith("engine.")})
    r.update({k: tags[k] for k in TAG_COLUMNS if k in tags})
    r.update({k: tags.get(k) == "true" for k in FLAG_TAGS})
    r["status"] = r.get("status") or (TrialStatus.FAILED if run.info.status == "FAILED" else "")
    r["measured_at"] = tags.get("cached_measured_at") or pd.Timestamp(run.info.start_time, unit="ms").strftime(
        "%Y-%m-%d %H:%M:%S")
    metrics = dict(run.data.metrics)
    r["violates"] = ",".join(k[len("violation_"):] for k, v in metrics.items() if k.startswith("violation_") and v > 0)
    r.update({k: v for k, v in metrics.items() if not k.startswith("violation_")})
    r["mlflow_run_id"] = run.info.run_id
    return r


def _typed(value: str) -> Any:
    """An MLflow param (always text) as the value it was: int, float, bool, None or text."""
    if value in ("True", "False", "true", "false"):
        return value.lower() == "true"
    if value in ("null", "None"):
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def find_parent(data: ReportData, tracking_uri: str | None = None) -> tuple[str, str, str] | None:
    """The sweep's MLflow parent run as (run id, tracking URI, experiment name): the one the data came
    from, else the parent of the table's child runs (``mlflow_run_id``) in the store ``tracking_uri``
    (or ``MLFLOW_TRACKING_URI``, or ``sqlite:///mlflow.db`` here).  None where there is none (a sweep
    with ``tracking=none``, no such store, runs this store does not hold)."""
    from mlflow.tracking import MlflowClient

    from trtsweep.tracking import resolve_uri

    uri = data.tracking_uri or resolve_uri(tracking_uri)
    children = [c for c in data.table.get("mlflow_run_id", pd.Series(dtype=object)).dropna().astype(str) if c]
    if not data.parent_run_id and not children:
        return None
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return None  # no store here (opening one would create it)
    client = MlflowClient(tracking_uri=uri)
    try:
        parent_id = data.parent_run_id or client.get_run(children[0]).data.tags.get("mlflow.parentRunId")
        if not parent_id:
            return None
        parent = client.get_run(parent_id)
    except Exception:  # noqa: BLE001 - runs of another store (the sweep logged elsewhere): nothing to log to
        return None
    return parent.info.run_id, uri, client.get_experiment(parent.info.experiment_id).name


def _mlflow_best(client: Any, parent_id: str) -> list[dict]:
    """The parent's best.yaml artifact (the winners' overrides), when it has one."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as d:
            return _best_entries(Path(client.download_artifacts(parent_id, "best.yaml", d)))
    except Exception:  # noqa: BLE001 - no best.yaml (no confirmation): the commands are built from params alone
        return []


__all__ = ["ReportData", "find_parent", "from_csv", "from_mlflow", "latest_sweep", "load"]
