"""Converted models in MLflow (parent side, beside :mod:`trtsweep.tracking`): a trial's packaged MLflow model
(:mod:`trtsweep.mlflow_models`) logged as an MLflow 3 logged model of its child run, and each sweep's
confirmed winners registered in the Model Registry.

- :func:`log_model`: the packaged directory uploaded as a logged model whose source run is the trial's
  child run (the run's model output), with the trial's metrics linked to it; a trial whose model could
  not be packaged has its converted files logged under ``model/`` instead, as before, with one line
  saying why.
- :func:`register_winners`: each confirmed winner becomes a version of the registered model
  ``trtsweep.<model>`` (MLflow forbids ``/`` in registered model names).  The alias ``champion`` moves
  to it only when it is faster than the current champion: a higher ``confirm_throughput_ips`` on its run
  than on the champion version's run, at the same batch size on the same machine (:func:`machine_id`;
  other machines or batch sizes are not comparable, and the champion stays).  Earlier versions are kept.

Every failure here is one error line; the result cache and results.csv hold the sweep regardless.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from trtsweep.config import TrialSpec, mlflow_params
from trtsweep.errors import one_line
from trtsweep.identity import digest
from trtsweep.results import MEASURED, TrialResult

log = logging.getLogger("trtsweep")

CHAMPION = "champion"
#: the model version's tag naming the machine its trial was measured on (:func:`machine_id`)
MACHINE_TAG = "trtsweep.machine_id"


def registered_name(model: str) -> str:
    """The registered model of a trtsweep model (``trtsweep.<model>``)."""
    return "trtsweep." + re.sub(r"[/:]", "_", model)


# ---- a trial's logged model ----
def log_model(client: Any, experiment_id: str, run_id: str, result: TrialResult, spec: TrialSpec) -> str | None:
    """Log the trial's MLflow model under its child run ``run_id`` (once per run); its model id, or None."""
    if result.status not in MEASURED:
        return None
    try:
        packaged = result.report.get("mlflow_model")
        if not packaged or not Path(packaged, "MLmodel").exists():
            _log_files(client, run_id, result, spec)
            return None
        model_id = run_model_id(client, run_id) or _create(client, experiment_id, run_id, Path(packaged), result, spec)
        _link_metrics(client, run_id, model_id)
        return model_id
    except Exception as e:  # the run keeps its metrics; the cache holds the result
        log.error("could not log the MLflow model of %s: %s", spec.label(), one_line(e))
        log.debug("MLflow model error", exc_info=True)
        return None


def run_model_id(client: Any, run_id: str) -> str | None:
    """The logged model a run produced (its model output), or None."""
    outputs = client.get_run(run_id).outputs
    models = outputs.model_outputs if outputs is not None else []
    return models[0].model_id if models else None


def _create(client: Any, experiment_id: str, run_id: str, packaged: Path, result: TrialResult,
            spec: TrialSpec) -> str:
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    name = f"{spec.model.name}-{spec.engine}-{spec.precision}-bs{spec.batch_size}"
    params = {k: v for k, v in mlflow_params(spec).items() if k != "core_set"}
    model = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, params=params,
                                       tags={"trtsweep.trial_key": result.trial_key, "status": str(result.status)})
    try:
        client.log_model_artifacts(model.model_id, str(packaged))
        meta = Model.load(str(packaged))  # the MLmodel names the logged model it belongs to
        meta.run_id, meta.model_id, meta.model_uuid = run_id, model.model_id, model.model_id
        meta.artifact_path = model.artifact_location
        with tempfile.TemporaryDirectory() as d:
            meta.save(str(Path(d) / "MLmodel"))
            client.log_model_artifact(model.model_id, str(Path(d) / "MLmodel"))
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    except BaseException:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    client.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def _link_metrics(client: Any, run_id: str, model_id: str) -> None:
    """The run's metrics, logged again with the model's id: they show on the logged model too."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    metrics = [Metric(k, v, ts, 0, model_id=model_id) for k, v in client.get_run(run_id).data.metrics.items()]
    for i in range(0, len(metrics), 100):
        client.log_batch(run_id, metrics=metrics[i:i + 100])


def _log_files(client: Any, run_id: str, result: TrialResult, spec: TrialSpec) -> None:
    """No packaged MLflow model: the converted files under ``model/`` (not engine=tf's: the user's own
    SavedModel), and one line saying why."""
    art = Path(result.artifact) if result.artifact else None
    why = result.report.get("mlflow_model_error") or "none was packaged for this result"
    if art is None or not art.exists() or spec.engine == "tf":
        log.error("no MLflow model for %s: %s", spec.label(), why)
        return
    log.error("no MLflow model for %s (%s); its converted files are logged under model/", spec.label(), why)
    if art.is_dir():
        client.log_artifacts(run_id, str(art), artifact_path="model")
    else:
        client.log_artifact(run_id, str(art), artifact_path="model")


# ---- the Model Registry ----
def register_winners(client: Any, verdicts: list, records: list[dict], parent_id: str) -> None:
    """Register each confirmed winner (``trtsweep.confirm`` verdicts) and move ``champion`` where it is faster."""
    by_key = {r["trial_key"]: r for r in records}
    for v in verdicts:
        try:
            _register(client, v, by_key[v.winner], parent_id)
        except Exception as e:  # best.yaml and the runs hold the winner
            log.error("could not register the winner of %s in the MLflow Model Registry: %s", v.group, one_line(e))
            log.debug("registry error", exc_info=True)


def _register(client: Any, verdict: Any, record: dict, parent_id: str) -> None:
    run_id = (record.get("mlflow_run_ids") or {}).get(parent_id)
    model_id = run_model_id(client, run_id) if run_id else None
    if model_id is None:
        log.info("registry: the winner of %s has no logged model; not registered", verdict.group)
        return
    spec = record["spec"]
    name = registered_name(spec["model"]["name"])
    _ensure_registered(client, name, spec["model"]["name"])
    # source: the logged model's own location (a ``models:/<id>`` source is looked up through MLflow's
    # global tracking URI, which need not be this client's); it identifies the version of a model too
    source = client.get_logged_model(model_id).artifact_location
    known = [mv for mv in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
             if mv.source == source]
    version = known[0] if known else client.create_model_version(
        name, source, run_id=run_id, model_id=model_id, description=verdict.text,
        tags={"trtsweep.trial_key": verdict.winner, "engine": spec["engine"], "precision": spec["precision"],
              "batch_size": str(spec["batch_size"]), "threads": str(spec.get("threads")),
              "confirm_throughput_ips": f"{verdict.stats[verdict.winner]['confirm_throughput_ips']:.6g}",
              MACHINE_TAG: machine_id(spec)})
    _crown(client, name, version, verdict, spec["batch_size"], machine_id(spec))


def _ensure_registered(client: Any, name: str, model: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description=f"Confirmed winners of trtsweep sweeps of {model}; alias "
                                                             f"{CHAMPION}: the fastest at its batch size and host")
        except MlflowException:  # created by another sweep meanwhile
            client.get_registered_model(name)


def _crown(client: Any, name: str, version: Any, verdict: Any, batch_size: Any, machine: str) -> None:
    """Move ``champion`` to ``version`` when there is none, or when it is faster than the champion's at
    the same batch size on the same machine."""
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # noqa: BLE001 - no champion yet (MLflow raises for a missing alias)
        champion = None
    if champion is not None and champion.version == version.version:
        return
    throughput = verdict.stats[verdict.winner]["confirm_throughput_ips"]
    where = f"{name} version {version.version} ({throughput:.1f} items/s, bs={batch_size})"
    try:
        old = _standing(client, champion) if champion is not None else None
    except Exception:  # noqa: BLE001 - the champion's run is gone: nothing to compare with
        old = None
    if old is not None:
        other = ("another batch size" if old["batch_size"] != str(batch_size) else
                 "another machine" if old["machine"] not in (None, machine) else "")
        if other:
            log.info("registry: %s registered; %s stays at version %s (bs=%s): not comparable, %s", where, CHAMPION,
                     champion.version, old["batch_size"], other)
            return
        if old["throughput"] is not None and throughput <= old["throughput"]:
            log.info("registry: %s registered; %s stays at version %s (%.1f items/s)", where, CHAMPION,
                     champion.version, old["throughput"])
            return
    client.set_registered_model_alias(name, CHAMPION, version.version)
    log.info("registry: %s is the %s%s", where, CHAMPION,
             f" (was version {champion.version}, {old['throughput']:.1f} items/s)" if old and old["throughput"] else "")


def _standing(client: Any, version: Any) -> dict:
    """What a registered version is judged by: its run's confirmed throughput (else the trial's) and batch
    size, and the machine it was measured on (its tag; None for a version registered otherwise)."""
    run = client.get_run(version.run_id)
    m = run.data.metrics
    return {"throughput": m.get("confirm_throughput_ips", m.get("throughput_ips")),
            "batch_size": run.data.params.get("batch_size"), "machine": (version.tags or {}).get(MACHINE_TAG)}


def machine_id(spec: dict) -> str:
    """The machine a result was measured on: its host identity (CPU model and flags, GPU) without the core
    set, which is the trial's core budget (a setting), not another machine."""
    return digest({k: v for k, v in (spec.get("host") or {}).items() if k != "core_set"}, 12)
