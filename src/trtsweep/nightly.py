"""``trtsweep nightly [--history N] [--floor F] [--sigmas Z] [Hydra overrides…]``: the nightly regression run.

1. Runs the preset ``sweeps/nightly.yaml`` with the overrides given (``model=mobilenet_v2 engine=tflite``
   narrows it) as a sweep of its own: every trial measured afresh (``force=true``; a conversion is reused
   when its key proves the model and libraries unchanged), every MLflow run tagged ``nightly``,
   ``nightly_date``, ``nightly_run``, ``nightly_suite`` (``tracking.tags``; the trials also carry their
   configuration, machine, library versions and model revision), and MLflow required
   (``tracking.required=true``: tracking=none or an unreachable server stops it before the first trial).
2. Judges each configuration against its history and pinned baseline (:mod:`trtsweep.nightly_verdict`)
   and prints what regressed, by how much and against what.
3. Writes ``nightly.txt``, ``nightly.json`` and the HTML report (``report.html`` / ``report.md``, with each
   configuration's throughput over the nights and its regression band) to the sweep directory and logs
   them to the nightly's parent run, with the verdict as tags (``nightly.verdict`` on the parent and each
   trial).

Exit code: 0 nothing regressed, 1 a regression or a configuration that newly fails, 2 a configuration or
infrastructure error (the sweep stopped, MLflow unavailable, nothing could be measured).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from trtsweep import baseline
from trtsweep.atomic import atomic_write_json, atomic_write_text
from trtsweep.errors import one_line
from trtsweep.identity import digest, machine_id
from trtsweep.nightly_verdict import NightlyVerdict, judge
from trtsweep.regression import Rule
from trtsweep.run_tags import MACHINE_TAG

log = logging.getLogger("trtsweep")

PRESET = "nightly"  # sweeps/nightly.yaml


def hydra_args(overrides: list[str], stamp: str, date: str, sweep_dir: Path) -> list[str]:
    """The sweep's command line: the preset, the user's overrides, the nightly's tags and settings."""
    suite = digest([PRESET, sorted(o for o in overrides if not o.startswith("hydra."))], 12)
    tags = {baseline.NIGHTLY_TAG: "true", baseline.DATE_TAG: date, baseline.RUN_TAG: stamp,
            baseline.SUITE_TAG: suite}
    return (["-m", f"+sweep={PRESET}", *overrides] + [f"+tracking.tags.{k}='{v}'" for k, v in tags.items()]
            + ["tracking.required=true"]
            + ([] if any(o.startswith("hydra.sweep.dir=") for o in overrides) else [f"hydra.sweep.dir={sweep_dir}"]))


def run(overrides: list[str], history: int = 7, rule: Rule | None = None) -> int:
    """The nightly: sweep, judge, report.  Returns the exit code."""
    rule = (rule or Rule()).validate()
    if history < 1:
        raise ValueError(f"--history={history} must be ≥ 1; fix: --history 7")
    now = time.localtime()
    stamp, date = time.strftime("%Y%m%dT%H%M%S", now), time.strftime("%Y-%m-%d", now)
    given = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra.sweep.dir=")), None)
    sweep_dir = Path(given.strip("'\"") if given else f"outputs/nightly/{date}/{time.strftime('%H-%M-%S', now)}")
    code = _sweep(hydra_args(overrides, stamp, date, sweep_dir))
    if code == 2:  # a configuration error: the sweep said which, in one line
        return 2
    if code not in (0, 1):  # 1: no trial succeeded, which the nightly judges (and exits 1 for) like a regression
        return _error(f"the nightly sweep stopped (exit code {code}, see above); nothing was judged")
    try:
        tracker, parent = _parent(sweep_dir, stamp)
        verdict = judge(parent, history, rule)
    except Exception as e:  # MLflow or the sweep's files: one line, the traceback in the log
        log.debug("nightly judging failed", exc_info=True)
        return _error(f"could not judge the nightly from MLflow: {one_line(e)}; fix: check the tracking store "
                      "(tracking.uri / MLFLOW_TRACKING_URI) and the sweep's log")
    print("\n" + verdict.text(), flush=True)
    record(verdict, sweep_dir, tracker)
    return max(verdict.exit_code, code)


def _sweep(args: list[str]) -> int:
    """Run the Hydra app in this process; its exit code (a configuration error is 2, Hydra's own 1)."""
    from trtsweep.entry import run as run_app

    try:
        run_app(args, prog="trtsweep nightly")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


def _error(message: str) -> int:
    print(f"trtsweep: error: {message}", file=sys.stderr, flush=True)
    return 2


def _parent(sweep_dir: Path, stamp: str) -> tuple[Any, Any]:
    """The tracker and the nightly's parent run, from the tracking settings the sweep saved in its
    ``multirun.yaml``."""
    from omegaconf import OmegaConf

    from trtsweep.config import TrackingConfig
    from trtsweep.tracking import Tracker, resolve_uri
    from trtsweep.validation import typed

    cfg = OmegaConf.load(sweep_dir / "multirun.yaml")
    tcfg = typed(TrackingConfig, OmegaConf.to_container(cfg.tracking, resolve=True), "tracking")
    baseline.connect(resolve_uri(tcfg.uri))
    tracker = Tracker(tcfg)
    return tracker, parent_run(tracker, stamp)


def parent_run(tracker: Any, stamp: str) -> Any:
    """The parent run of the nightly ``stamp``, tagged with this machine's id and host facts (versions)."""
    from trtsweep.host import host_facts
    from trtsweep.tracking import ROLE_TAG

    found = baseline.search(f"tags.{baseline.RUN_TAG} = '{stamp}' and tags.`{ROLE_TAG}` = 'parent'",
                            [tracker.experiment_id], max_results=1)
    if not found:
        raise LookupError(f"no parent run tagged {baseline.RUN_TAG}={stamp} in experiment {tracker.cfg.experiment}")
    run_id = found[0].info.run_id
    tracker.tag(run_id, {MACHINE_TAG: machine_id(), **host_facts()})
    return tracker.client.get_run(run_id)


def record(verdict: NightlyVerdict, sweep_dir: Path, tracker: Any) -> list[Path]:
    """nightly.txt / nightly.json (and the HTML report) in the sweep directory, logged to the parent run
    with the verdict as tags.  A failure here is logged: the verdict and the exit code stand."""
    files = [atomic_write_text(sweep_dir / "nightly.txt", verdict.text() + "\n"),
             atomic_write_json(sweep_dir / "nightly.json", verdict.to_dict())]
    files += html_report(sweep_dir, verdict)
    try:
        for c in verdict.configs:
            tracker.tag(c.run_id, {"nightly.verdict": c.kind, **({"nightly.regression": "; ".join(c.lines())}
                                                                  if c.kind == "regressed" else {})})
        kinds = {k: len(verdict.of(k)) for k in ("regressed", "newly_failing", "ok", "new")}
        tracker.tag(verdict.parent_run_id, {"nightly.verdict": {0: "ok", 1: "regressed", 2: "error"}[verdict.exit_code],
                                            "nightly.exit_code": verdict.exit_code, "nightly.summary": verdict.text(),
                                            **{f"nightly.{k}": n for k, n in kinds.items()}})
        tracker.log_extras(verdict.parent_run_id, files=files)
    except Exception as e:  # noqa: BLE001 - the verdict is printed and in the sweep directory already
        log.error("could not log the nightly's verdict to MLflow: %s", one_line(e))
    print(f"nightly report: {sweep_dir / 'nightly.txt'}" + "".join(f", {f}" for f in files[2:]), flush=True)
    return files


def html_report(sweep_dir: Path, verdict: NightlyVerdict) -> list[Path]:
    """---- THE HTML REPORT CALL SITE ----
    report.html / report.md (:func:`trtsweep.html_report.write_report`), written again over the ones the
    sweep wrote, now with each configuration's throughput over the nights and tonight's regression band;
    :func:`record` logs them to the parent run with the rest."""
    try:
        from trtsweep.html_report import write_report

        return [Path(p) for p in write_report(sweep_dir, sweep_dir, history=verdict.history_frame())]
    except Exception as e:  # the text report stands without the HTML one
        log.error("could not write the HTML report: %s", one_line(e))
        log.debug("HTML report error", exc_info=True)
        return []


__all__ = ["PRESET", "hydra_args", "html_report", "parent_run", "record", "run"]
