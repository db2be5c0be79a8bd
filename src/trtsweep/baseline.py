"""What a configuration is compared with, found in MLflow with ``mlflow.search_runs`` (no files to keep).

* :func:`history`: its last N successful nightly runs on this machine (child runs tagged ``nightly``, with
  the same ``trtsweep.config_id`` and ``trtsweep.machine_id``, measured — not failed, skipped or served
  from the cache);
* :func:`pinned`: its pinned baseline on this machine, in any experiment: a run tagged
  ``trtsweep.pinned=true`` by ``trtsweep baseline pin <run-or-sweep>`` (:func:`pin`; one per
  configuration and machine: pinning another run unpins the earlier one);
* :func:`previous_nightly`: the last nightly of the same suite (the same overrides) on this machine, to
  tell which configurations disappeared.

The tracking URI is MLflow's current one (``mlflow.set_tracking_uri``; :func:`connect` sets and checks it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtsweep.results import MEASURED, TrialStatus
from trtsweep.run_tags import CONFIG_TAG, LABEL_TAG, MACHINE_TAG
from trtsweep.tracking import ROLE_TAG

NIGHTLY_TAG = "nightly"  # "true" on every run of a nightly (parent and children)
RUN_TAG = "nightly_run"  # one nightly: its start stamp, e.g. 20261130T020000
DATE_TAG = "nightly_date"
SUITE_TAG = "nightly_suite"  # what the nightly ran: a digest of its overrides
PINNED_TAG = "trtsweep.pinned"
PINNED_AT_TAG = "trtsweep.pinned_at"
PARENT_ID_TAG = "mlflow.parentRunId"
#: a measurement: the status tag is none of the others (MLflow has no IN for tags)
MEASURED_FILTER = " and ".join(f"tags.status != '{s.value}'" for s in TrialStatus if s not in MEASURED)


def connect(uri: str) -> None:
    """Use the tracking store at ``uri`` (a resolved URI) and check that it answers."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.search_experiments(max_results=1)


def search(filter_string: str, experiment_ids: list[str] | None = None, max_results: int = 100_000,
           order_by: list[str] | None = None) -> list[Any]:
    """``mlflow.search_runs`` as a list of runs; every experiment when ``experiment_ids`` is None."""
    import mlflow

    return mlflow.search_runs(experiment_ids=experiment_ids, search_all_experiments=experiment_ids is None,
                              filter_string=filter_string, max_results=max_results, output_format="list",
                              order_by=order_by or ["attributes.start_time DESC"])


def _same(run: Any) -> str:
    tags = run.data.tags
    return f"tags.`{CONFIG_TAG}` = '{tags[CONFIG_TAG]}' and tags.`{MACHINE_TAG}` = '{tags[MACHINE_TAG]}'"


def history(run: Any, n: int) -> list[Any]:
    """The last ``n`` successful nightly runs of ``run``'s configuration on its machine, started before it
    and not part of its nightly, newest first."""
    tags = run.data.tags
    return search(f"tags.{NIGHTLY_TAG} = 'true' and {_same(run)} and tags.`{ROLE_TAG}` = 'trial' "
                  f"and tags.cached = 'false' and {MEASURED_FILTER} and tags.{RUN_TAG} != '{tags.get(RUN_TAG, '')}' "
                  f"and attributes.start_time < {run.info.start_time}", [run.info.experiment_id], max_results=n)


def pinned(run: Any) -> Any | None:
    """The pinned baseline of ``run``'s configuration on its machine (any experiment), or None."""
    found = search(f"tags.`{PINNED_TAG}` = 'true' and {_same(run)}", max_results=2)
    return next((r for r in found if r.info.run_id != run.info.run_id), None)


def previous_nightly(parent: Any) -> Any | None:
    """The nightly before ``parent`` (its parent run) of the same suite on the same machine, or None."""
    tags = parent.data.tags
    if SUITE_TAG not in tags or MACHINE_TAG not in tags:
        return None
    found = search(f"tags.{SUITE_TAG} = '{tags[SUITE_TAG]}' and tags.`{MACHINE_TAG}` = '{tags[MACHINE_TAG]}' "
                   f"and tags.`{ROLE_TAG}` = 'parent' and attributes.start_time <= {parent.info.start_time}",
                   [parent.info.experiment_id], max_results=5)
    return next((r for r in found if r.info.run_id != parent.info.run_id), None)


def children(parent: Any) -> list[Any]:
    """The trial runs under a parent run."""
    return search(f"tags.`{PARENT_ID_TAG}` = '{parent.info.run_id}' and tags.`{ROLE_TAG}` = 'trial'",
                  [parent.info.experiment_id], order_by=["attributes.start_time ASC"])


# ---- trtsweep baseline pin | unpin | ls ----
@dataclass
class Pinned:
    runs: list[Any]  # the runs now pinned (or unpinned)
    replaced: list[Any]  # earlier pins of the same configurations, unpinned


def target_runs(target: str) -> list[Any]:
    """The measured trial runs ``target`` names: a trial run id, a sweep's parent run id (its trials), or a
    sweep directory (``outputs/multirun/<date>/<time>``, found by its parent's ``sweep_dir`` tag)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if Path(target).is_dir():
        parents = search(f"tags.sweep_dir = '{Path(target).resolve()}' and tags.`{ROLE_TAG}` = 'parent'",
                         max_results=1)
        if not parents:
            raise ValueError(f"no MLflow parent run has sweep_dir={Path(target).resolve()} at "
                             f"{_uri()}; fix: pass the run id, or set MLFLOW_TRACKING_URI / --tracking-uri")
        run = parents[0]
    else:
        try:
            run = MlflowClient().get_run(target)
        except MlflowException as e:
            raise ValueError(f"no MLflow run {target!r} at {_uri()} ({e.error_code}); fix: a run id from the "
                             "MLflow UI (a trial or a sweep's parent), or a sweep directory") from None
    runs = children(run) if run.data.tags.get(ROLE_TAG) == "parent" else [run]
    measured = [r for r in runs if r.data.tags.get("status") in {s.value for s in MEASURED}]
    unusable = [r for r in measured if CONFIG_TAG not in r.data.tags or MACHINE_TAG not in r.data.tags]
    if unusable:
        raise ValueError(f"run {unusable[0].info.run_id} has no {CONFIG_TAG} tag (logged by an older trtsweep); "
                         "fix: run that configuration again and pin the new run")
    if not measured:
        statuses = ", ".join(sorted({r.data.tags.get("status", "?") for r in runs})) or "no trial"
        raise ValueError(f"{target} holds no measured trial ({statuses}); fix: pin a sweep or trial whose status "
                         "is ok")
    return measured


def pin(target: str) -> Pinned:
    """Pin the measured trials ``target`` names as their configurations' baselines (see :func:`target_runs`)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    runs, replaced = target_runs(target), []
    ids = {r.info.run_id for r in runs}
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    for r in runs:
        for old in search(f"tags.`{PINNED_TAG}` = 'true' and {_same(r)}"):
            if old.info.run_id not in ids:
                client.set_tag(old.info.run_id, PINNED_TAG, "false")
                replaced.append(old)
        client.set_tag(r.info.run_id, PINNED_TAG, "true")
        client.set_tag(r.info.run_id, PINNED_AT_TAG, stamp)
    return Pinned(runs, replaced)


def unpin(target: str) -> Pinned:
    from mlflow.tracking import MlflowClient

    runs = [r for r in target_runs(target) if r.data.tags.get(PINNED_TAG) == "true"]
    for r in runs:
        MlflowClient().set_tag(r.info.run_id, PINNED_TAG, "false")
    return Pinned(runs, [])


def pinned_runs(machine: str | None = None) -> list[Any]:
    """Every pinned baseline (on ``machine`` only, when given)."""
    where = f" and tags.`{MACHINE_TAG}` = '{machine}'" if machine else ""
    return search(f"tags.`{PINNED_TAG}` = 'true'{where}")


def describe(run: Any) -> str:
    """One line: the configuration, its run id, when it ran, its throughput."""
    tags, m = run.data.tags, run.data.metrics
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000))
    tput = f", {m['throughput_ips']:.1f} items/s" if "throughput_ips" in m else ""
    return f"{tags.get(LABEL_TAG, run.info.run_name)} — run {run.info.run_id} ({when}{tput})"


def _uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


__all__ = ["DATE_TAG", "NIGHTLY_TAG", "PINNED_TAG", "RUN_TAG", "SUITE_TAG", "Pinned", "children", "connect",
           "describe", "history", "pin", "pinned", "pinned_runs", "previous_nightly", "search", "target_runs",
           "unpin"]
