"""The only module that talks to MLflow.

One experiment per sweep name, one parent run per sweep (identified by a sweep key, so a resumed
sweep reuses its parent), one child run per trial (identified by the trial key under that parent,
so re-logging a trial updates its run instead of duplicating it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from trtsweep.config import TrackingConfig, TrialSpec, mlflow_params
from trtsweep.constraints import violations
from trtsweep.mlflow_view import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    INTERNAL_METRICS,
    child_params,
    dataset_inputs,
    run_name,
)
from trtsweep.redact import mask_config, mask_text
from trtsweep.results import MEASURED, TrialResult, TrialStatus
from trtsweep.run_tags import trial_tags

log = logging.getLogger(__name__)

PARENT_TAG = "trtsweep.sweep_key"
TRIAL_TAG = "trtsweep.trial_key"
ROLE_TAG = "trtsweep.role"
#: MLflow's own defaults (7 retries, backoff factor 2) wait minutes for a tracking server that is down, at
#: every call; set the variables to keep others
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
MLFLOW_STATUS = {TrialStatus.OK: "FINISHED", TrialStatus.ACCURACY_VIOLATION: "FINISHED",
                 TrialStatus.INFEASIBLE: "FINISHED", TrialStatus.SKIPPED: "KILLED", TrialStatus.FAILED: "FAILED",
                 TrialStatus.PRUNED: "KILLED"}  # stopped by the search after a measurement step


def absolute_sqlite_uri(uri: str) -> str:
    """A relative ``sqlite:///path`` made absolute (processes in one directory agree); other URLs as given.

    Shared by MLflow's tracking URI and the Optuna sweeper's storage URL.
    """
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def resolve_uri(uri: str | None) -> str:
    """Explicit ``tracking.uri`` > ``MLFLOW_TRACKING_URI`` > ``sqlite:///mlflow.db`` in the current directory."""
    return absolute_sqlite_uri(uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db")


class Tracker:
    def __init__(self, cfg: TrackingConfig):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        self.cfg = cfg
        self.uri = resolve_uri(cfg.uri)
        if self.uri.startswith(("http://", "https://")):  # a server that is down: fail in seconds, not minutes
            for var, value in HTTP_RETRY_DEFAULTS.items():  # (trial results are kept; trtsweep.sync logs them)
                os.environ.setdefault(var, value)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = self._experiment(cfg.experiment)

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if EXPERIMENT_KIND not in exp.tags:
                self.client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND_TAG)
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:") or self.uri.startswith("file:"):
            db_dir = Path(self.uri.split("///", 1)[1]).parent if self.uri.startswith("sqlite:") else Path.cwd()
            location = (db_dir / "mlartifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND_TAG]))
        except MlflowException:  # created concurrently by another worker
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    # ---- parent ----
    def parent_run(self, sweep_key: str, run_name: str, tags: dict[str, str] | None = None) -> str:
        """Get or create the sweep's parent run. Concurrent creators converge on the oldest one."""
        found = self._find(f"tags.`{PARENT_TAG}` = '{sweep_key}' and tags.`{ROLE_TAG}` = 'parent'")
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=mask_text(run_name),  # it may hold the overrides
                                     tags={PARENT_TAG: sweep_key, ROLE_TAG: "parent", **self.cfg.tags, **(tags or {})})
        found = self._find(f"tags.`{PARENT_TAG}` = '{sweep_key}' and tags.`{ROLE_TAG}` = 'parent'")
        winner = found[0].info.run_id if found else run.info.run_id
        if winner != run.info.run_id:
            self.client.delete_run(run.info.run_id)
        return winner

    def find_parent(self, sweep_key: str) -> tuple[str, str] | None:
        """The sweep's parent run (id, status), if it exists; unlike :meth:`parent_run`, changes nothing."""
        found = self._find(f"tags.`{PARENT_TAG}` = '{sweep_key}' and tags.`{ROLE_TAG}` = 'parent'")
        return (found[0].info.run_id, found[0].info.status) if found else None

    def child_runs(self, parent_id: str) -> dict[str, tuple[str, str]]:
        """The parent's trial runs: trial key -> (run id, status); the oldest where a trial has several."""
        out: dict[str, tuple[str, str]] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], max_results=1000, page_token=token,
                                           filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and "
                                                         f"tags.`{ROLE_TAG}` = 'trial'",
                                           order_by=["attributes.start_time ASC"])
            for r in page:
                out.setdefault(r.data.tags.get(TRIAL_TAG, ""), (r.info.run_id, r.info.status))
            token = page.token
            if not token:
                return out

    def _find(self, filter_string: str) -> list:
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=50,
                                       order_by=["attributes.start_time ASC"])
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    def finish_parent(self, run_id: str, summary: dict[str, Any] | None = None, files: list[Path] | None = None,
                      status: str = "FINISHED") -> None:
        from mlflow.entities import Metric, RunTag

        ts = int(time.time() * 1000)
        if summary:
            metrics = [Metric(k, float(v), ts, 0) for k, v in summary.items() if isinstance(v, (int, float))]
            tags = [RunTag(f"summary.{k}", str(v)[:5000]) for k, v in summary.items()
                    if not isinstance(v, (int, float))]
            self.client.log_batch(run_id, metrics=metrics, tags=tags)
        for f in files or []:
            if Path(f).exists():
                self.client.log_artifact(run_id, str(f))
        self.client.set_terminated(run_id, status=status)

    def apply(self, function: str, *args: Any, **kwargs: Any) -> Any:
        """``function(self, *args, **kwargs)`` (``"module:name"``): work that uses this tracker's client,
        run where the client is (a :class:`~trtsweep.mlflow_process.RemoteTracker`: in MLflow's process)."""
        import importlib

        module, name = function.split(":")
        return getattr(importlib.import_module(module), name)(self, *args, **kwargs)

    def register_winners(self, verdicts: list, records: list[dict], parent_id: str) -> None:
        """The confirmed winners in the Model Registry (:func:`trtsweep.mlflow_registry.register_winners`)."""
        from trtsweep.mlflow_registry import register_winners

        register_winners(self.client, verdicts, records, parent_id)

    def tag(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def run_tags(self, run_id: str) -> dict[str, str]:
        """A run's tags (e.g. to extend a tag that another worker set)."""
        return dict(self.client.get_run(run_id).data.tags)

    def log_extras(self, run_id: str, metrics: dict[str, float] | None = None, files: list[Path] | None = None) -> None:
        """Metrics and artifact files on a run without changing its status (a study's results on its parent)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        if metrics:
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()])
        for f in files or []:
            if Path(f).exists():
                self.client.log_artifact(run_id, str(f))

    def log_confirmation(self, parent_id: str, verdicts: list, child_runs: dict[str, str], best_yaml: Path) -> None:
        """The confirmation step: ``confirm_*`` metrics on each candidate's child run, tag ``best`` on
        each group's winner (``tie`` where it was a statistical tie), the winner named on the parent,
        and ``best.yaml`` (the overrides that reproduce it) as a parent artifact."""
        from mlflow.entities import Metric, RunTag

        ts = int(time.time() * 1000)
        parent_tags = {}
        for v in verdicts:
            for key, st in v.stats.items():
                run_id = child_runs.get(key)
                if not run_id:
                    continue
                tags = [RunTag("confirmed", "true")]
                if key == v.winner:
                    tags.append(RunTag("best", "true"))
                if v.is_tie and key in v.tied:
                    tags.append(RunTag("tie", "true"))
                self.client.log_batch(run_id, metrics=[Metric(k, float(x), ts, 0) for k, x in st.items()], tags=tags)
            suffix = "" if len(verdicts) == 1 else "." + re.sub(r"[^0-9A-Za-z_.-]+", "", v.group.replace(" ", "."))
            parent_tags[f"best{suffix}"] = v.winner
            parent_tags[f"best_run{suffix}"] = child_runs.get(v.winner, "")
            parent_tags[f"recommendation{suffix}"] = v.text
        self.tag(parent_id, parent_tags)
        if Path(best_yaml).exists():
            self.client.log_artifact(parent_id, str(best_yaml))

    # ---- child ----
    def log_trial(self, parent_id: str, result: TrialResult, spec: TrialSpec, resolved_cfg: dict | None = None,
                  varying: list[str] | None = None) -> str:
        """Create (or update, if this trial already has a run under this parent) the trial's child run.

        ``varying``: the sweep's varying parameter names (:mod:`trtsweep.mlflow_view`): the params are the
        key axes and those, and the run's name is made of them and a non-ok status."""
        from mlflow.entities import Metric, Param, RunTag

        run_id = result.mlflow_run_ids.get(parent_id)
        existing: Any = None  # the child run's data, when it exists already
        if run_id:
            try:
                existing = self.client.get_run(run_id).data
            except Exception:  # noqa: BLE001 - deleted or from another store
                run_id = None
        if not run_id:
            found = self._find(f"tags.`{TRIAL_TAG}` = '{result.trial_key}' and tags.`mlflow.parentRunId` = "
                               f"'{parent_id}'")
            if found:
                run_id, existing = found[0].info.run_id, found[0].data
        resolved_cfg = mask_config(resolved_cfg)  # no credentials in params or the config.yaml artifact
        all_params = mlflow_params(spec, resolved_cfg)
        name = run_name(all_params, varying, str(result.status))
        if not run_id:
            run_id, existing_params = self._create_child(parent_id, result, spec, name)
        else:
            existing_params = existing.params
            self.client.update_run(run_id, status="RUNNING")
        ts = int((result.ended_at or time.time()) * 1000)
        params = {k: v for k, v in child_params(all_params, varying).items() if k not in existing_params}
        # host and library facts go on the parent once (mlflow_view.publish_sweep); a child keeps host_id
        tags = {"status": str(result.status), "cached": str(result.cached).lower(), "mlflow.runName": name}
        if result.cached:
            tags["cached_measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result.started_at))
        if result.unstable:
            tags["unstable"] = "true"
        if spec.host:
            from trtsweep.identity import digest

            tags["host_id"] = digest(spec.host, 12)
        elif result.host:
            from trtsweep.identity import digest

            tags["host_id"] = digest({k: v for k, v in result.host.items() if k.startswith("host.")}, 12)
        if result.reason:
            tags["reason"] = result.reason
        # history tags (trtsweep nightly / baseline): tracking.tags, and the config, machine and model revision
        tags.update({**self.cfg.tags, **trial_tags(spec)})
        violation = _violation_metrics(result, spec)
        if existing is not None:  # judged again under other bounds (a cached result): no stale verdict stays
            violation = {**{k: 0.0 for k in existing.metrics if k.startswith("violation_")}, **violation}
            if "reason" in existing.tags and not result.reason:
                self.client.delete_tag(run_id, "reason")
        judged_at = int(time.time() * 1000)  # a verdict is newer than the measurement: it is the latest value
        metrics = [Metric(k, float(v), judged_at if k in violation else ts, 0)
                   for k, v in {**result.metrics, **violation}.items()
                   if k not in INTERNAL_METRICS and isinstance(v, (int, float)) and v == v and abs(v) != float("inf")]
        param_list = [Param(k, v) for k, v in params.items()]
        tag_list = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        for i in range(0, max(len(param_list), len(metrics), 1), 100):
            self.client.log_batch(run_id, metrics=metrics[i:i + 100], params=param_list[i:i + 100],
                                  tags=tag_list if i == 0 else [])
        if result.status in MEASURED:
            self.client.log_inputs(run_id, datasets=dataset_inputs(spec, result.metrics))
        self._log_artifacts(run_id, result, spec, resolved_cfg)
        self.client.set_terminated(run_id, status=MLFLOW_STATUS[result.status], end_time=ts)
        return run_id

    def _create_child(self, parent_id: str, result: TrialResult, spec: TrialSpec,
                      name: str | None = None) -> tuple[str, dict[str, str]]:
        """Create the trial's child run.  Workers that measured the same configuration at the same moment
        (several sweeps on one study) converge on the oldest child, as parents do; the others are deleted."""
        run = self.client.create_run(self.experiment_id, run_name=name or _run_name(spec),
                                     start_time=int(result.started_at * 1000),
                                     tags={"mlflow.parentRunId": parent_id, TRIAL_TAG: result.trial_key,
                                           ROLE_TAG: "trial"})
        found = self._find(f"tags.`{TRIAL_TAG}` = '{result.trial_key}' and tags.`mlflow.parentRunId` = '{parent_id}'")
        winner = found[0] if found else run
        if winner.info.run_id != run.info.run_id:
            self.client.delete_run(run.info.run_id)
            return winner.info.run_id, dict(self.client.get_run(winner.info.run_id).data.params)
        return run.info.run_id, {}

    def _log_artifacts(self, run_id: str, result, spec: TrialSpec, resolved_cfg: dict | None) -> None:
        with tempfile.TemporaryDirectory() as d:
            report = Path(d) / "trial_report.json"
            report.write_text(json.dumps({k: v for k, v in result.to_dict().items() if k != "traceback"},
                                         indent=1, default=str))
            self.client.log_artifact(run_id, str(report))
            if resolved_cfg is not None:
                import yaml

                cfg_path = Path(d) / "config.yaml"
                cfg_path.write_text(yaml.safe_dump(resolved_cfg, sort_keys=False))
                self.client.log_artifact(run_id, str(cfg_path))
            if result.traceback:
                tb = Path(d) / "traceback.txt"
                tb.write_text(result.traceback)
                self.client.log_artifact(run_id, str(tb))
        if self.cfg.log_models:  # the trial's MLflow model (trtsweep.mlflow_models) as a logged model of the run
            from trtsweep.mlflow_registry import log_model

            log_model(self.client, self.experiment_id, run_id, result, spec)

    # ---- an Optuna study (hydra/sweeper=optuna): its trials' child runs and its parent ----
    def tag_study_trial(self, run_id: str, study_name: str, number: int, state: str) -> None:
        """Tag a trial's child run with its study, trial number and Optuna state.

        A configuration served from the result cache reuses its run, so ``optuna.trial_numbers`` lists
        every trial (of any worker) that asked for it.
        """
        earlier = self.run_tags(run_id).get("optuna.trial_numbers", "")
        numbers = sorted({int(n) for n in earlier.split(",") if n.strip().isdigit()} | {number})
        self.tag(run_id, {"optuna.trial_number": number, "optuna.trial_numbers": ",".join(map(str, numbers)),
                          "optuna.state": state, "optuna.study": study_name})

    def log_study(self, parent_id: str, n_trials: int, best: dict[str, Any] | None = None,
                  pareto_run_ids: list[str] | None = None, importances: dict[str, float] | None = None,
                  files: list[Path] | None = None) -> None:
        """A study's result on its parent run.

        ``best``: ``number``, ``value``, ``params`` (text) and ``run_id`` (may be empty) of the best feasible
        trial, or None.  Its run is tagged ``optuna.best=true`` (a different earlier best of this parent is
        untagged); the Pareto front's runs ``optuna.pareto_front=true``; metrics ``optuna.n_trials``,
        ``optuna.best_value``, ``optuna.importance.<param>``; ``files`` as artifacts.
        """
        metrics = {f"optuna.importance.{k}": v for k, v in (importances or {}).items()}
        metrics["optuna.n_trials"] = float(n_trials)
        parent_tags: dict[str, Any] = {}
        previous = self.run_tags(parent_id).get("optuna.best_run_id")
        best_run = (best or {}).get("run_id") or None
        if previous and previous != best_run:
            self.tag(previous, {"optuna.best": "false"})
        if best is not None:
            metrics["optuna.best_value"] = best["value"]
            parent_tags.update({"optuna.best_trial": best["number"], "optuna.best_params": best["params"]})
            if best_run:
                self.tag(best_run, {"optuna.best": "true"})
                parent_tags["optuna.best_run_id"] = best_run
        for run_id in pareto_run_ids or []:
            self.tag(run_id, {"optuna.pareto_front": "true"})
        if parent_tags:
            self.tag(parent_id, parent_tags)
        self.log_extras(parent_id, metrics=metrics, files=files)


def _violation_metrics(result: TrialResult, spec: TrialSpec) -> dict[str, float]:
    """``violation_<name>``: by how much a measured trial is over each bound it violates (value − bound);
    logged only where > 0 (0 only replaces one that a new verdict made stale)."""
    if result.status not in MEASURED:
        return {}
    over = violations(result.metrics, spec.constraints, spec.fidelity.max_accuracy_drop)
    return {f"violation_{k}": v for k, v in over.items() if v > 0}


def _run_name(spec: TrialSpec) -> str:
    return f"{spec.model.name}/{spec.engine}/{spec.precision}/bs{spec.batch_size}"
