"""One sweep's lifecycle, the same for the grid sweeper, the Optuna sweeper and a single run.

:func:`sweep_session` opens a sweep (its directory with ``multirun.yaml``, the MLflow parent run, the
environment its jobs read) and closes it: results.csv and the summary, the interleaved confirmation of
the winners and the parent run FINISHED — or, when the sweep is interrupted (Ctrl-C, a crash of the
sweep itself), what was measured is kept and the parent run is KILLED, with no confirmation.  The
trial worker is stopped either way, and by :func:`fail` when a sweep stops before it starts.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from trtsweep import runner, sync
from trtsweep.atomic import atomic_write_json, atomic_write_text, unwritable
from trtsweep.config import confirm_config, tracking_config
from trtsweep.errors import one_line
from trtsweep.identity import digest
from trtsweep.redact import mask_logs, mask_text, mask_url

log = logging.getLogger("trtsweep")

# what a sweeper tells its jobs (they may run in this process or, with another launcher, elsewhere)
ENV_PARENT = "TRTSWEEP_PARENT_RUN_ID"
ENV_TOTAL = "TRTSWEEP_TOTAL"
ENV_BATCH_SIZES = "TRTSWEEP_BATCH_SIZES"
ENV_SWEEP_DIR = "TRTSWEEP_SWEEP_DIR"
ENV_OFFSET = "TRTSWEEP_INDEX_OFFSET"
ENV_EXPERIMENT = "TRTSWEEP_EXPERIMENT"  # the sweep's MLflow experiment (its jobs may name another model)
#: MLflow run statuses of the sweep's parent run
FINISHED, KILLED = "FINISHED", "KILLED"


def fail(message: str, code: int = 2) -> NoReturn:
    """One clear line for the user, then exit (the traceback, if any, is in the log); a trial worker
    started for the sweep is stopped first."""
    runner.stop_pool()
    print(f"trtsweep: error: {mask_text(message)}", file=sys.stderr, flush=True)  # no URL's password
    log.debug("error detail", exc_info=True)
    sys.exit(code)


@contextmanager
def sweep_session(cfg: dict, sweep_dir: Path, key: str, run_name: str, total: int, batch_sizes: list[int], *,
                  tags: dict | None = None, tracker_future: Any = None,
                  multirun_config: Any = None, varying: list[str] | None = None) -> Iterator[SweepContext]:
    """Open the sweep (:func:`start_sweep`), run the block (the jobs), close it (:func:`finish_sweep`):
    FINISHED when the block ends, KILLED when it raises (the exception goes on).

    ``multirun_config``: the sweeper's config, saved as ``multirun.yaml`` in the sweep directory.
    ``varying``: the parameters that vary in the sweep (:mod:`trtsweep.mlflow_view`): its children's params.
    Afterwards ``ctx.table`` holds the sweep's results table.
    """
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if multirun_config is not None:
            from omegaconf import OmegaConf

            atomic_write_text(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(multirun_config))
    except OSError as e:
        if unwritable(e) is None:
            raise
        fail(unwritable(e) or "")
    ctx = start_sweep(cfg, sweep_dir, key, run_name, total, batch_sizes, tags, tracker_future, varying)
    try:
        yield ctx
    except BaseException as e:  # Ctrl-C or a crash of the sweep itself: keep what was measured, mark it
        full = unwritable(e)  # the outputs' disk is full or read-only: one line, and the same command resumes
        try:
            ctx.table = finish_sweep(ctx, status=KILLED)
        except OSError as again:
            if full is None or unwritable(again) is None:
                raise
            log.debug("closing the sweep on a full disk", exc_info=True)
        if full is not None:
            fail(full)
        raise
    try:
        ctx.table = finish_sweep(ctx, status=FINISHED)
    except OSError as e:
        if unwritable(e) is None:
            raise
        fail(unwritable(e) or "")


def joined_sweep(cfg: dict) -> SweepContext:
    """The sweep a job belongs to, from the environment its sweeper set (:func:`start_sweep`).  A job
    that runs in the sweep's own process logs through the sweep's open MLflow client (MLflow is opened
    once per sweep); a job elsewhere (another launcher) opens its own.  It logs into the sweep's
    experiment (its own config may name another model)."""
    from trtsweep.mlflow_view import ENV_VARYING, parse_env

    ctx = SweepContext(Path(os.environ[ENV_SWEEP_DIR]), os.environ.get(ENV_PARENT), None,
                       varying=parse_env(os.environ.get(ENV_VARYING)))
    if ctx.parent_run_id:  # MLflow down: None at once (trtsweep.sync keeps what it misses)
        ctx.tracker = sync.job_tracker(cfg, lambda: _open_tracker(cfg, os.environ.get(ENV_EXPERIMENT)))
    return ctx


#: the MLflow client of the sweep this process runs, with its tracking settings (open_tracker_early or
#: start_sweep .. finish_sweep)
_OPEN: dict[str, Any] = {}


def open_tracker_early(cfg: dict) -> None:
    """Start MLflow (its own process: import and schema take seconds) as soon as a sweeper knows the
    tracking settings, before its own start-up work; the sweep it then starts uses it when its settings
    are the same.  Nothing is raised here: a bad setting is reported when the sweep starts."""
    try:
        tcfg = tracking_config(cfg)
        if tcfg.enabled and "tracking" not in _OPEN:
            _OPEN["tracking"] = (tcfg, _tracker(cfg))
    except Exception:  # start_sweep opens MLflow again and reports the error
        log.debug("MLflow not opened early", exc_info=True)


def _tracking(cfg: dict, experiment: str | None = None):
    tcfg = tracking_config(cfg)
    if experiment:
        tcfg.experiment = experiment
    return tcfg


def _open_tracker(cfg: dict, experiment: str | None = None):
    """The tracker this process opened for these settings, else a new one."""
    open_cfg, tracker = _OPEN.get("tracking", (None, None))
    if tracker is not None and open_cfg == _tracking(cfg, experiment):
        return tracker
    return _tracker(cfg, experiment)


def _close_open_tracker() -> None:
    _, tracker = _OPEN.pop("tracking", (None, None))
    close = getattr(tracker, "close", None)
    if close is not None:
        close()


@dataclass
class SweepContext:
    sweep_dir: Path
    parent_run_id: str | None
    tracker: Any
    started: float = field(default_factory=time.time)
    cfg: dict = field(default_factory=dict)  # the sweep's base config (confirm.*, tracking.*)
    table: Any = None  # the results table, once the sweep is finished (sweep_session)
    varying: list[str] | None = None  # the parameters that vary in the sweep (trtsweep.mlflow_view)


def sweep_key(name: str, arguments: Sequence[str], extra: str = "") -> str:
    return digest([name, sorted(arguments), extra])


def _tracker(cfg: dict, experiment: str | None = None):
    """A tracker for ``cfg``'s settings (None: tracking is off), in ``experiment`` if given.  It opens
    MLflow in a process of its own and returns at once; its first call waits until MLflow is open
    (:mod:`trtsweep.mlflow_process`)."""
    tcfg = _tracking(cfg, experiment)
    if not tcfg.enabled:
        return None
    from trtsweep.mlflow_process import RemoteTracker

    return RemoteTracker(tcfg)


def start_sweep(cfg: dict, sweep_dir: Path, key: str, run_name: str, total: int, batch_sizes: list[int],
                tags: dict | None = None, tracker_future: Any = None,
                varying: list[str] | None = None) -> SweepContext:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    mask_logs()  # every log record (console, sweep.log): no URL's password (Hydra logs each job's overrides)
    tracker = None
    parent = None
    # what the end of the sweep needs (its tables, the HTML report and its plots), while MLflow opens
    tables = _import_in_background("trtsweep.report", "trtsweep.html_report")
    try:
        if tracker_future is not None:
            tracker = tracker_future.result()
        else:
            tracker = _open_tracker(cfg)
            if tracker is not _OPEN.get("tracking", (None, None))[1]:
                _close_open_tracker()  # opened early for other settings
        if tracker is not None:  # waits until MLflow is open: it never runs beside a measurement
            parent = tracker.parent_run(key, run_name, {"sweep_dir": str(sweep_dir.resolve()), **(tags or {})})
    except Exception as e:
        if tracking_config(cfg).required:  # trtsweep nightly: no history to compare with, no point measuring
            from trtsweep.tracking import resolve_uri

            fail(f"MLflow at {resolve_uri(tracking_config(cfg).uri)} is unavailable ({one_line(e, 300)}); fix: start "
                 "the tracking server, or point tracking.uri= (or MLFLOW_TRACKING_URI) to a reachable one")
        log.error("MLflow unavailable, measuring anyway (trials kept in %s, logged once it answers, or by "
                  "`trtsweep sync`): %s", sweep_dir, one_line(e))
        log.debug("MLflow error", exc_info=True)
        tracker = None
        _close_open_tracker()
    if tracker is not None:
        _OPEN["tracking"] = (_tracking(cfg, tracker.cfg.experiment), tracker)  # its jobs log into its experiment
    tables.join()  # before the first trial: nothing runs beside a measurement
    os.environ[ENV_SWEEP_DIR] = str(sweep_dir.resolve())
    os.environ[ENV_TOTAL] = str(total)
    os.environ[ENV_BATCH_SIZES] = ",".join(map(str, batch_sizes))
    if parent:
        os.environ[ENV_PARENT] = parent
        os.environ[ENV_EXPERIMENT] = tracker.cfg.experiment
    else:
        os.environ.pop(ENV_PARENT, None)
    from trtsweep.mlflow_view import ENV_VARYING

    if varying is not None:
        os.environ[ENV_VARYING] = ",".join(varying)
    else:
        os.environ.pop(ENV_VARYING, None)
    sync.remember_sweep(sweep_dir, cfg, key, run_name, tags, varying)  # what `trtsweep sync` needs
    log.info("sweep: %d trial(s), results in %s%s", total, sweep_dir,
             f", MLflow parent run {parent} at {mask_url(tracker.uri)}" if parent else "")
    return SweepContext(sweep_dir, parent, tracker, cfg=dict(cfg), varying=varying)


def _import_in_background(*modules: str) -> threading.Thread:
    """Import ``modules`` in a thread (an error is left for the real import to raise)."""

    def run() -> None:
        for m in modules:
            with suppress(Exception):
                importlib.import_module(m)

    thread = threading.Thread(target=run, name="trtsweep-import", daemon=True)
    thread.start()
    return thread


def confirm_winners(ctx: SweepContext, records: list[dict]) -> list:
    """Re-measure each group's close candidates interleaved; write confirmation.json and best.yaml."""
    from trtsweep import confirm

    conf = confirm_config(ctx.cfg)
    if not conf.enabled:
        return []
    try:
        verdicts = confirm.run(records, conf.top_k, conf.rounds)
    except Exception as e:
        log.error("confirmation failed, keeping the sweep's own ranking: %s", one_line(e))
        log.debug("confirmation error", exc_info=True)
        return []
    if verdicts:
        by_key = {r["trial_key"]: r for r in records}
        atomic_write_json(ctx.sweep_dir / "confirmation.json", [v.__dict__ for v in verdicts])
        write_best_yaml(ctx.sweep_dir / "best.yaml", verdicts, by_key)
    return verdicts


def write_best_yaml(path: Path, verdicts: list, by_key: dict[str, dict]) -> Path:
    """The exact overrides that reproduce each confirmed winner (``python sweep.py <overrides>``)."""
    import yaml

    entries = []
    for v in verdicts:
        rec = by_key[v.winner]
        spec = rec["spec"]
        overrides = [o for o in rec.get("overrides", []) if not o.startswith(("threads=", "hydra."))]
        overrides.append(f"threads={spec['threads']}")  # the resolved core budget, never "all cores"
        st = v.stats[v.winner]
        entries.append({
            "model": spec["model"]["name"], "batch_size": spec["batch_size"], "engine": spec["engine"],
            "precision": spec["precision"], "engine_params": spec["engine_params"], "threads": spec["threads"],
            "trial_key": v.winner, "overrides": overrides, "command": "python sweep.py " + " ".join(overrides),
            "confirm_throughput_ips": round(st["confirm_throughput_ips"], 3),
            "confirm_ci": [round(st["confirm_ci_low"], 3), round(st["confirm_ci_high"], 3)],
            "tie": v.is_tie, "tied_with": [k for k in v.tied if k != v.winner], "verdict": v.text,
        })
    return atomic_write_text(path, yaml.safe_dump({"best": entries}, sort_keys=False, allow_unicode=True))


def finish_sweep(ctx: SweepContext, status: str = FINISHED) -> Any:
    """results.csv/.parquet and the summary; for a FINISHED sweep the confirmation of its winners first;
    the parent run closed with ``status``; the trial worker stopped.  Returns the results table."""
    from trtsweep import report

    sync.catch_up(ctx)  # the trials MLflow missed, if it answers now (else ctx.tracker is dropped)
    records = report.load_trial_records(ctx.sweep_dir)
    verdicts = confirm_winners(ctx, records) if status == FINISHED else []
    df = report.apply_confirmation(report.table(records), verdicts)
    paths = report.write(df, ctx.sweep_dir) if not df.empty else []
    # MLflow's part of the end runs in its process while this one writes the report (nothing is measured now)
    logging_end = _log_sweep_end(ctx, df, records, verdicts) if ctx.tracker is not None and ctx.parent_run_id else []
    pages = write_html_report(ctx.sweep_dir) if status == FINISHED and not df.empty else []  # Ctrl-C: no wait
    if not df.empty:
        print("\n" + report.short_table(df) + "\n\n" + report.summary_text(df)
              + f"\n\nresults: {ctx.sweep_dir / 'results.csv'}" + "".join(f"\nreport: {p}" for p in pages[:1]),
              flush=True)
    if ctx.tracker is not None and ctx.parent_run_id:
        try:
            counts = df.status.value_counts().to_dict() if not df.empty else {}
            summary = {f"trials_{k}": v for k, v in counts.items()}
            best = report.best_per_model(df)
            if not best.empty:
                b = best.sort_values("throughput_ips").iloc[-1]
                summary.update({"best_throughput_ips": float(b.throughput_ips), "best_trial_key": b.trial_key})
            for what, call in logging_end:
                try:
                    call.result()
                except Exception as e:  # best.yaml and results.csv hold it; still finish the parent
                    log.error("could not %s: %s", what, one_line(e))
                    log.debug("MLflow error", exc_info=True)
            ctx.tracker.finish_parent(ctx.parent_run_id, summary, paths[:1] + pages, status=status)
            from trtsweep.mlflow_view import ui_link

            print(ui_link(ctx.tracker.uri, ctx.tracker.experiment_id, ctx.parent_run_id), flush=True)
        except Exception as e:  # noqa: BLE001 - results.csv holds the sweep; the worker must still be stopped
            log.error("could not finish the MLflow parent run: %s", one_line(e))
    sync.after_sweep(ctx.sweep_dir, status)  # "MLflow unreachable for N trial(s); run `trtsweep sync`..."
    runner.stop_pool()
    _close_open_tracker()  # every call was answered: MLflow's process exits
    for var in (ENV_PARENT, ENV_TOTAL, ENV_BATCH_SIZES, ENV_SWEEP_DIR, ENV_OFFSET, ENV_EXPERIMENT,
                "TRTSWEEP_VARYING"):
        os.environ.pop(var, None)
    return df


class _Done:
    """A call made at once, its outcome kept for ``result()`` (a tracker that cannot run calls later)."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.value, self.error = None, None
        try:
            self.value = function(*args)
        except Exception as e:  # noqa: BLE001 - raised by result(), as a submitted call's would be
            self.error = e

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


def _submit(tracker: Any, method: str, *args: Any) -> Any:
    """``tracker.<method>(*args)``, running in MLflow's process while the caller goes on where the
    tracker can (:meth:`trtsweep.mlflow_process.RemoteTracker.submit`), else now; ``.result()``."""
    if hasattr(tracker, "submit"):
        sent = _Done(tracker.submit, method, *args)  # fails if MLflow's process is gone
        return sent.value if sent.error is None else sent
    return _Done(lambda: getattr(tracker, method)(*args))


def _log_sweep_end(ctx: SweepContext, df: Any, records: list[dict], verdicts: list) -> list[tuple[str, Any]]:
    """Send MLflow the end of the sweep (the confirmation, the winners registered, the sweep's view:
    :func:`trtsweep.mlflow_view.publish_sweep`); each with what failed if it did, for ``finish_sweep``."""
    calls = []
    if verdicts:
        calls.append(("log the confirmation to MLflow", _submit(
            ctx.tracker, "log_confirmation", ctx.parent_run_id, verdicts, _child_runs(records, ctx.parent_run_id),
            ctx.sweep_dir / "best.yaml")))
        tcfg = tracking_config(ctx.cfg)
        if tcfg.register_best and tcfg.log_models:  # their logged models exist with tracking.log_models
            calls.append(("register the winners in MLflow", _submit(
                ctx.tracker, "register_winners", verdicts, records, ctx.parent_run_id)))
    if not df.empty:
        calls.append(("describe the sweep in MLflow", _submit(
            ctx.tracker, "apply", "trtsweep.mlflow_view:publish_sweep", ctx.parent_run_id, df, records,
            ctx.sweep_dir, ctx.varying)))
    return calls


def write_html_report(sweep_dir: Path) -> list[Path]:
    """report.html and report.md in the sweep directory (trtsweep.html_report), or none if that fails."""
    try:
        from trtsweep.html_report import write_report

        return write_report(sweep_dir, sweep_dir)
    except Exception as e:  # results.csv holds the sweep; the report is only a view of it
        log.error("could not write the HTML report: %s", one_line(e))
        log.debug("report error", exc_info=True)
        return []


def _child_runs(records: list[dict], parent: str) -> dict[str, str]:
    return {r["trial_key"]: r.get("mlflow_run_ids", {}).get(parent) for r in records
            if r.get("mlflow_run_ids", {}).get(parent)}
