"""When the MLflow tracking server is down: measure anyway, keep what MLflow missed, log it later.

A trial's record (``trials/<n>-<key>.json`` in the sweep directory) is written whether MLflow answers or
not.  When the trial could not be logged (the server was down when the sweep started, or went down during
it), its record says so (``mlflow_pending``: why) and keeps the trial's resolved config (``config``: its
params); the sweep goes on without waiting for MLflow again until the server answers a quick health probe.
The trials MLflow missed are logged

* during the sweep, by the first trial that is logged again once the server is back;
* at the end of the sweep, if the server answers by then (the parent run is created then, if the server
  was down when the sweep started);
* on the next run of the same sweep command (the same parent run: the results come from the cache and a
  cached result that has no child run under that parent is logged, one that has is not);
* by ``trtsweep sync <sweep dir>``, which finds or creates the sweep's parent run (the sweep key in
  ``mlflow_sweep.json``), logs every trial that has no finished child run under it (children are found by
  their trial key tag, so nothing is logged twice) and closes the parent as the sweep would have.

Otherwise a sweep ends with one line: ``MLflow unreachable for N trial(s); run `trtsweep sync <dir>` once it
is back``.  Every record, cached or not, stays in results.csv either way.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from trtsweep.atomic import atomic_write_json
from trtsweep.errors import one_line
from trtsweep.redact import MASK, mask_config

log = logging.getLogger("trtsweep")

SWEEP_FILE = "mlflow_sweep.json"  # in the sweep directory: what finds or creates its parent run
PENDING = "mlflow_pending"  # a trial record's field: why the trial is not in MLflow yet
CONFIG = "config"  # a pending trial record's field: its resolved job config (its MLflow params)
PROBE_TIMEOUT_S = 3.0

_down: dict[str, float] = {}  # tracking URI -> when MLflow last failed in this process
_missed: set[str] = set()  # sweep directories with trials MLflow missed, in this process


# ---- the sweep's identity in MLflow ----
def remember_sweep(sweep_dir: Path, cfg: dict, key: str, run_name: str, tags: dict | None,
                   varying: list[str] | None) -> None:
    """``mlflow_sweep.json``: the sweep key, parent run name and tags, varying params and tracking config."""
    from trtsweep.config import to_container

    try:
        atomic_write_json(Path(sweep_dir) / SWEEP_FILE, mask_config({
            "sweep_key": key, "run_name": run_name, "tags": {"sweep_dir": str(Path(sweep_dir).resolve()),
                                                             **(tags or {})},
            "varying": varying, "tracking": to_container(cfg).get("tracking") or {}, "status": None}))
    except Exception as e:  # noqa: BLE001 - only `trtsweep sync` needs it
        log.warning("could not write %s: %s", SWEEP_FILE, one_line(e))


def sweep_info(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.exists():
        raise ValueError(f"{sweep_dir} has no {SWEEP_FILE} (not a sweep directory, or one written by an older "
                         f"trtsweep); fix: trtsweep sync <outputs/multirun/<date>/<time>>")
    return json.loads(path.read_text())


def tracking_cfg(tracking: dict, uri: str | None = None) -> Any:
    """The sweep's tracking config (``uri``: another store, e.g. for a sweep run with tracking=none)."""
    from trtsweep.config import tracking_config

    tcfg = tracking_config({"tracking": dict(tracking or {})})
    if uri:
        tcfg.uri, tcfg.enabled = uri, True
    elif MASK in str(tcfg.uri):
        raise ValueError(f"the sweep's tracking URI {tcfg.uri} held a credential, which trtsweep does not store; "
                         "fix: trtsweep sync <dir> --tracking-uri <the URI with its credential>")
    return tcfg


# ---- is the server there? ----
def answering(uri: str) -> bool:
    """One quick request (no retries) to an HTTP tracking server's ``/health``; other stores: True."""
    if not uri.startswith(("http://", "https://")):
        return True
    import requests

    try:
        return requests.get(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S).ok
    except requests.RequestException:
        return False


def usable(uri: str) -> bool:
    """False while MLflow at ``uri`` failed earlier in this process and still does not answer (then a trial
    does not wait for MLflow's retries); True again once it answers."""
    if uri not in _down:
        return True
    if answering(uri):
        log.info("MLflow at %s answers again", uri)
        _down.pop(uri, None)
        return True
    return False


def _mark_down(uri: str) -> None:
    _down[uri] = time.time()


# ---- during a sweep ----
def job_tracker(cfg: dict, make: Any) -> Any:
    """A job's tracker (``make()``), or None without waiting when MLflow failed earlier in this process and
    still does not answer, or when ``make()`` fails (then it counts as down)."""
    from trtsweep.config import tracking_config
    from trtsweep.tracking import resolve_uri

    uri = resolve_uri(tracking_config(cfg).uri)
    if not usable(uri):
        return None
    try:
        return make()
    except Exception as e:  # noqa: BLE001 - the result is still cached and written to results.csv
        log.error("MLflow unavailable: %s", one_line(e))
        _mark_down(uri)
        return None


def log_trial(ctx: Any, result: Any, spec: Any, plain: dict) -> dict:
    """Log one trial to the sweep's parent run (``ctx``: :class:`trtsweep.session.SweepContext`).

    Returns the fields its record gets besides the result: none when it was logged (or tracking is off),
    else the pending marker and its config.  Never raises.  Once logging works again, the trials of this
    sweep that MLflow missed are logged too."""
    from trtsweep import runner
    from trtsweep.config import tracking_config
    from trtsweep.results import TrialStatus
    from trtsweep.tracking import resolve_uri

    tcfg = tracking_config(plain)
    if not tcfg.enabled:
        return {}
    tracker, parent = ctx.tracker, ctx.parent_run_id
    if not parent:
        return _pending(ctx, f"MLflow at {resolve_uri(tcfg.uri)} was unreachable when the sweep started", plain)
    if tracker is None:
        return _pending(ctx, f"MLflow at {resolve_uri(tcfg.uri)} unreachable", plain)
    if not usable(tracker.uri):
        return _pending(ctx, f"MLflow at {tracker.uri} unreachable", plain)
    try:
        if parent not in result.mlflow_run_ids or not result.cached:
            run_id = tracker.log_trial(parent, result, spec, plain, varying=ctx.varying)
            result.mlflow_run_ids[parent] = run_id
            if result.status != TrialStatus.SKIPPED:
                runner.save_result(result, spec.cache_dir)
    except Exception as e:  # the record is kept; `trtsweep sync` logs it later
        log.error("MLflow logging failed for %s: %s", spec.label(), one_line(e))
        log.debug("MLflow error", exc_info=True)
        _mark_down(tracker.uri)
        return _pending(ctx, one_line(e, 300), plain)
    if str(ctx.sweep_dir) in _missed:  # the server is back: catch up on what it missed
        try:
            log_pending(ctx.sweep_dir, tracker, parent, ctx.varying)
            _missed.discard(str(ctx.sweep_dir))
        except Exception as e:  # noqa: BLE001 - still pending; the end of the sweep tries again
            _mark_down(tracker.uri)
            log.error("MLflow: could not log the trials it missed: %s", one_line(e))
    return {}


def _pending(ctx: Any, reason: str, plain: dict) -> dict:
    _missed.add(str(ctx.sweep_dir))
    return {PENDING: reason, CONFIG: plain}


def catch_up(ctx: Any) -> int:
    """At the end of a sweep (before its results and parent run are written): log the trials MLflow missed
    if it answers now, creating the parent run if the server was down when the sweep started; when it still
    does not answer, ``ctx.tracker`` is dropped (closing the parent would only wait for MLflow's retries).
    Returns the number of trials still pending.  Never raises."""
    from trtsweep.config import tracking_config
    from trtsweep.tracking import resolve_uri

    try:
        tcfg = tracking_config(ctx.cfg)
        uri = ctx.tracker.uri if ctx.tracker is not None else resolve_uri(tcfg.uri)
        pending = pending_records(ctx.sweep_dir)
        if not tcfg.enabled or (not pending and uri not in _down):
            return len(pending)
        if not usable(uri) or not answering(uri):
            ctx.tracker = None
            return len(pending)
        if ctx.tracker is None or not ctx.parent_run_id:
            from trtsweep.tracking import Tracker

            info = sweep_info(ctx.sweep_dir)
            tracker = Tracker(tracking_cfg(info["tracking"]))
            ctx.parent_run_id = tracker.parent_run(info["sweep_key"], info["run_name"], info["tags"])
            ctx.tracker = tracker
            log.info("MLflow at %s answers now: parent run %s", uri, ctx.parent_run_id)
        log_pending(ctx.sweep_dir, ctx.tracker, ctx.parent_run_id, ctx.varying)
        return len(pending_records(ctx.sweep_dir))
    except Exception as e:  # the records are kept; `trtsweep sync` logs them later
        log.error("MLflow still unavailable: %s", one_line(e))
        log.debug("MLflow error", exc_info=True)
        ctx.tracker = None
        return len(pending_records(ctx.sweep_dir))


def after_sweep(sweep_dir: Path, status: str) -> int:
    """The sweep's end: its status kept for `trtsweep sync` (which closes the parent run with it), and the
    one line that says how many trials MLflow missed.  Returns that number."""
    path = Path(sweep_dir) / SWEEP_FILE
    try:
        if path.exists():
            atomic_write_json(path, {**json.loads(path.read_text()), "status": status})
    except Exception as e:  # noqa: BLE001
        log.warning("could not update %s: %s", path, one_line(e))
    n = len(pending_records(sweep_dir))
    if n:
        print(f"MLflow unreachable for {n} trial(s); run `trtsweep sync {sweep_dir}` once it is back", flush=True)
    return n


# ---- the records ----
def trial_files(sweep_dir: Path) -> list[Path]:
    return sorted((Path(sweep_dir) / "trials").glob("*.json"))


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pending_records(sweep_dir: Path) -> list[Path]:
    """The trial records MLflow missed (``mlflow_pending``)."""
    return [p for p in trial_files(sweep_dir) if PENDING in (_read(p) or {})]


def log_pending(sweep_dir: Path, tracker: Any, parent: str, varying: list[str] | None,
                files: list[Path] | None = None) -> list[tuple[Path, str]]:
    """Log the records ``files`` (default: the pending ones) as children of ``parent`` (a child that exists
    is updated, not duplicated: :meth:`trtsweep.tracking.Tracker.log_trial`); mark each record logged, and
    its cached result linked to the run.  Returns (record, run id) per trial logged; stops at the first
    failure (raised)."""
    done = []
    for path in pending_records(sweep_dir) if files is None else files:
        rec = _read(path)
        if rec is None:
            continue
        run_id = _log_record(tracker, parent, rec, varying)
        rec.setdefault("mlflow_run_ids", {})[parent] = run_id
        rec.pop(PENDING, None)
        atomic_write_json(path, rec)
        done.append((path, run_id))
    if done:
        log.info("MLflow: logged %d trial(s) it had missed", len(done))
    return done


def _log_record(tracker: Any, parent: str, rec: dict, varying: list[str] | None) -> str:
    from trtsweep import runner
    from trtsweep.config import TrialSpec
    from trtsweep.results import TrialResult, TrialStatus

    result = TrialResult.from_dict(rec)
    spec = TrialSpec.from_dict(rec["spec"])
    run_id = tracker.log_trial(parent, result, spec, rec.get(CONFIG), varying=varying)
    if result.status != TrialStatus.SKIPPED:  # the cached result knows its run (a re-run does not log it again)
        try:
            cached = runner.load_cached(spec)
            if cached is not None and cached.trial_key == result.trial_key and cached.started_at == result.started_at:
                cached.mlflow_run_ids[parent] = run_id
                runner.save_result(cached, spec.cache_dir)
        except Exception as e:  # noqa: BLE001 - the run is logged; only a shortcut for the next run is lost
            log.debug("cache link not saved: %s", one_line(e))
    return run_id


# ---- trtsweep sync ----
class Unreachable(Exception):
    """MLflow does not answer (``trtsweep sync`` exits 1)."""


def latest_sweep(roots: tuple[str, ...] = ("outputs", "multirun")) -> Path:
    """The most recently started sweep directory (one with ``mlflow_sweep.json``) under ``roots``."""
    found = [p for r in roots if Path(r).is_dir() for p in Path(r).rglob(SWEEP_FILE)]
    if not found:
        raise ValueError(f"no sweep directory under {' or '.join(roots)}/ (none has {SWEEP_FILE}); fix: trtsweep "
                         f"sync <sweep dir>, run from the directory the sweep ran in")
    return max(found, key=lambda p: p.stat().st_mtime).parent


def sync_sweep(sweep_dir: Path, tracking_uri: str | None = None) -> list[str]:
    """Log the sweep's trials that have no finished child run under its parent run (found or created by the
    sweep key), then close the parent as the sweep would have.  Idempotent.  Returns what it did, in lines;
    raises :class:`Unreachable` when MLflow does not answer, ValueError for a bad sweep directory."""
    from trtsweep.tracking import Tracker, resolve_uri

    sweep_dir = Path(sweep_dir)
    info = sweep_info(sweep_dir)
    tcfg = tracking_cfg(info["tracking"], tracking_uri)
    if not tcfg.enabled:
        raise ValueError(f"{sweep_dir} ran with tracking=none; fix: trtsweep sync {sweep_dir} --tracking-uri <uri>")
    uri = resolve_uri(tcfg.uri)
    if not answering(uri):
        raise Unreachable(f"MLflow at {uri} does not answer")
    try:
        tracker = Tracker(tcfg)
        found = tracker.find_parent(info["sweep_key"])
        children = tracker.child_runs(found[0]) if found else {}
        todo = []
        for path in trial_files(sweep_dir):
            rec = _read(path)
            if rec is None:
                continue
            child = children.get(rec.get("trial_key", ""))
            if PENDING in rec or child is None or child[1] == "RUNNING":  # never logged, or logging was cut off
                todo.append(path)
        status = info.get("status")
        if not todo and found and (found[1] != "RUNNING" or not status):
            return [f"{sweep_dir}: nothing to sync ({len(children)} trial run(s) under parent {found[0]} at {uri})"]
        parent = tracker.parent_run(info["sweep_key"], info["run_name"], info["tags"]) if (todo or not found) \
            else found[0]
        done = log_pending(sweep_dir, tracker, parent, info.get("varying"), files=todo)
        lines = [f"{sweep_dir}: logged {len(done)} trial(s) under parent {parent} at {uri}"]
        lines += [f"  {p.name} -> run {run_id}" for p, run_id in done]
        if status:  # the sweep has ended: close its parent as the sweep would have
            close_parent(tracker, parent, sweep_dir, info.get("varying"), status)
            from trtsweep.mlflow_view import ui_link

            lines.append(ui_link(tracker.uri, tracker.experiment_id, parent))
        return lines
    except Exception as e:
        if not answering(uri):
            raise Unreachable(f"MLflow at {uri} stopped answering ({one_line(e, 200)})") from e
        raise


def close_parent(tracker: Any, parent: str, sweep_dir: Path, varying: list[str] | None, status: str) -> None:
    """What :func:`trtsweep.session.finish_sweep` logs on the parent once the sweep's table is final: the
    confirmation's tags, the description and best run (:func:`trtsweep.mlflow_view.publish_sweep`), the
    counts and the results, and the parent's final status."""
    from trtsweep import report
    from trtsweep.confirm import Verdict
    from trtsweep.mlflow_view import publish_sweep

    records = report.load_trial_records(sweep_dir)
    conf = sweep_dir / "confirmation.json"
    verdicts = [Verdict(**v) for v in json.loads(conf.read_text())] if conf.exists() else []
    df = report.apply_confirmation(report.table(records), verdicts)
    if verdicts:
        runs = {r["trial_key"]: (r.get("mlflow_run_ids") or {}).get(parent) for r in records}
        tracker.log_confirmation(parent, verdicts, {k: v for k, v in runs.items() if v}, sweep_dir / "best.yaml")
    summary: dict[str, Any] = {}
    if not df.empty:
        summary = {f"trials_{k}": v for k, v in df.status.value_counts().to_dict().items()}
        best = report.best_per_model(df)
        if not best.empty:
            b = best.sort_values("throughput_ips").iloc[-1]
            summary.update({"best_throughput_ips": float(b.throughput_ips), "best_trial_key": b.trial_key})
        publish_sweep(tracker, parent, df, records, sweep_dir, varying)
    files = [sweep_dir / n for n in ("results.csv", "report.html", "report.md")]
    tracker.finish_parent(parent, summary, [f for f in files if f.exists()], status=status)
