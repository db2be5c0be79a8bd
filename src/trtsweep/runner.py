"""Runs one trial, isolated: result cache first, then a worker process with a timeout and memory cap.

A crash, hang or OOM of the worker becomes a ``failed`` result and a fresh worker serves the next
trial.  Results are written atomically to ``<cache_dir>/results/<trial_key>.json`` before anything
else (MLflow, tables), so a measured result is never lost; re-running skips what is done.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from trtsweep import steps
from trtsweep.atomic import atomic_write_json
from trtsweep.config import TrialSpec
from trtsweep.constraints import verdict
from trtsweep.engines.base import get_engine, make_params
from trtsweep.faults import fault_for
from trtsweep.results import MEASURED, TrialResult, TrialStatus

log = logging.getLogger(__name__)


class TrialFailure(Exception):
    def __init__(self, reason: str, tb: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.traceback = tb


# ---------------------------------------------------------------------------
class WorkerPool:
    """One worker process at a time, restarted when it dies or needs another environment."""

    def __init__(self) -> None:
        self.proc: Any = None
        self.conn: Any = None
        self.env: dict[str, str] | None = None
        self._pending = 0  # answers to requests sent ahead (warm, prepare), dropped by the next call

    def _start(self, env: dict[str, str]) -> None:
        from trtsweep import worker

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker.serve, args=(child, env), daemon=True, name="trtsweep-worker")
        with _main_script_hidden():
            self.proc.start()
        child.close()
        self.conn, self.env = parent, dict(env)
        self._pending = 0

    def stop(self) -> None:
        """End the worker: it holds no unsent result, so it is killed after a moment's grace (exiting
        with TensorFlow loaded takes seconds, and nothing it would do then is worth the wait)."""
        if self.proc is not None:
            try:
                if self.proc.is_alive():
                    self.conn.send(("stop", None))
                    self.proc.join(0.05)
            except (OSError, BrokenPipeError):
                pass
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
        self.proc = self.conn = self.env = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.proc = self.conn = self.env = None

    def prewarm(self, env: dict[str, str] | None = None) -> None:
        """Start a worker and have it import TensorFlow while the caller does other start-up work.
        Its answer is read (and dropped) by the next ``call``.  A live worker is left as it is: it is
        warm already, or warming."""
        if self.proc is not None and self.proc.is_alive():
            return
        self.ensure(env or {})
        self.send_ahead("warm", None)

    def send_ahead(self, kind: str, payload: Any) -> None:
        """Have the live worker start on ``kind`` now; its answer (an error too: the request it prepares
        meets the same one and reports it) is read and dropped by the next ``call``."""
        if self.proc is None or not self.proc.is_alive():
            return
        try:
            self.conn.send((kind, payload))
            self._pending += 1
        except (OSError, BrokenPipeError):
            self.kill()

    def ensure(self, env: dict[str, str] | None) -> None:
        """A live worker with this environment (started now if needed; its imports run in the background).
        ``None``: any environment will do (engines with no process-level settings), so a live worker is kept."""
        alive = self.proc is not None and self.proc.is_alive()
        if not alive or (env is not None and self.env != env):
            self.stop()
            self._start(env or {})

    def call(self, kind: str, payload: Any, env: dict[str, str] | None, timeout_s: float, max_memory_mb: float) -> Any:
        self.ensure(env)
        try:
            self.conn.send((kind, payload))
        except (OSError, BrokenPipeError) as e:
            self.kill()
            raise TrialFailure(f"worker unreachable: {e}") from None
        deadline = time.monotonic() + timeout_s
        pending, self._pending = self._pending, 0
        import psutil

        ps = psutil.Process(self.proc.pid)
        while True:
            if self.conn.poll(0.2):
                try:
                    msg = self.conn.recv()
                except (EOFError, OSError):
                    msg = None
                if msg is not None and pending:  # the answers to requests sent ahead come first
                    pending -= 1
                    continue
                if msg is not None:
                    if msg[0] == "step":  # a trial's repeat finished: the search's verdict (trtsweep.steps)
                        self._send_verdict(steps.verdict(msg[1]["step"], msg[1]["throughput_ips"]))
                        continue
                    if msg[0] == "ok":
                        return msg[1]
                    raise TrialFailure(msg[1], msg[2])
            if not self.proc.is_alive():
                code = self.proc.exitcode
                self.kill()
                raise TrialFailure(_describe_exit(code))
            try:
                rss_mb = ps.memory_info().rss / 2**20
            except psutil.Error:
                rss_mb = 0.0
            if max_memory_mb and rss_mb > max_memory_mb:
                self.kill()
                raise TrialFailure(f"out of memory: worker used {rss_mb:.0f} MB > trial.max_memory_mb={max_memory_mb}; "
                                   f"fix: a smaller batch_size or a larger trial.max_memory_mb")
            if time.monotonic() > deadline:
                self.kill()
                raise TrialFailure(f"timed out after {timeout_s:.0f} s (trial.timeout_s); the worker was killed")

    def _send_verdict(self, reason: str | None) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):  # the worker died: the poll loop sees it
            self.conn.send(("step_verdict", reason))


@contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Spawn runs the parent's main script (``sweep.py``: Hydra's import, a second of the worker's
    start-up) in the child to find objects defined there; the worker's are all in ``trtsweep.worker``,
    so the script is hidden from it while the child starts."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (killed: probably out of memory)" if name == "SIGKILL" else ""
        return f"worker crashed with {name}{hint}"
    return f"worker exited unexpectedly with code {code}"


_POOL: WorkerPool | None = None


def pool() -> WorkerPool:
    global _POOL
    if _POOL is None:
        _POOL = WorkerPool()
        import atexit

        atexit.register(_POOL.stop)
    return _POOL


def stop_pool() -> None:
    """Stop the trial worker, if one was started."""
    if _POOL is not None:
        _POOL.stop()


# ---------------------------------------------------------------------------
def _results_dir(cache_dir: str) -> Path:
    p = Path(cache_dir) / "results"
    p.mkdir(parents=True, exist_ok=True)
    return p


def load_cached(spec: TrialSpec) -> TrialResult | None:
    path = _results_dir(spec.cache_dir) / f"{spec.trial_key()}.json"
    if not path.exists():
        return None
    try:
        return TrialResult.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None


def save_result(result: TrialResult, cache_dir: str) -> None:
    atomic_write_json(_results_dir(cache_dir) / f"{result.trial_key}.json", result.to_dict())


def worker_env(spec: TrialSpec) -> dict[str, str] | None:
    """The process environment the trial needs (TensorFlow's thread pools are sized at import), or
    None when any worker will do: then the live worker is reused instead of restarted."""
    eng = get_engine(spec.engine)
    return eng.process_env(make_params(eng, spec.engine_params)) or None


def execute(spec: TrialSpec, mlflow_model: bool = False) -> TrialResult:
    """Run one trial (or return its cached result). Never raises for a trial's own failure.

    ``mlflow_model``: also package the measured model as an MLflow model (trtsweep.mlflow_models), for a
    cached result too when it has none; its directory is ``report["mlflow_model"]``."""
    key = spec.trial_key()
    if spec.skip_reason:
        now = time.time()
        return TrialResult(key, TrialStatus.SKIPPED, spec.to_dict(), reason=spec.skip_reason, started_at=now,
                           ended_at=now)
    fault = fault_for(spec.to_dict())  # tests only: never served from the cache
    if not spec.force and fault is None:
        cached = load_cached(spec)
        if cached is not None and cached.status in MEASURED and not cached.report.get("fault"):
            cached.cached = True
            before = (cached.status, cached.reason)
            judge(cached, spec)  # under this run's bounds, which may differ from those it was measured with
            if (cached.status, cached.reason) != before:
                # its MLflow runs show the old verdict: without the links, tracking finds each parent's
                # child run again (by trial key) and updates it
                cached.mlflow_run_ids = {}
            if mlflow_model:
                _package_cached(cached, spec)
            return cached
    started = time.time()
    p = pool()
    try:
        out = p.call("trial", {"spec": spec.to_dict(), "fault": fault, "report_steps": steps.current() is not None,
                               "mlflow_model": mlflow_model},
                     worker_env(spec), spec.trial.timeout_s, spec.trial.max_memory_mb)
    except TrialFailure as f:
        result = TrialResult(key, TrialStatus.FAILED, spec.to_dict(), reason=f.reason, traceback=f.traceback,
                             started_at=started, ended_at=time.time())
    else:
        result = TrialResult(key, TrialStatus.OK, spec.to_dict(), metrics=out["metrics"], report=out["report"],
                             host=out["host"],
                             artifact=out["artifact"], started_at=started, ended_at=time.time(),
                             unstable=bool(out.get("unstable", False)))
        if out.get("pruned"):  # stopped by the search after a step: partial figures, never recommended
            result.status, result.reason = TrialStatus.PRUNED, str(out["pruned"])
        else:
            judge(result, spec)
    finally:
        if not spec.trial.reuse_worker:
            p.stop()
    previous = load_cached(spec)
    if previous is not None:  # keep the MLflow links of an earlier attempt (the child run is reused)
        result.mlflow_run_ids = previous.mlflow_run_ids
    if fault is not None:  # tests only: a distorted measurement, never served (see load_cached)
        result.report["fault"] = fault
    if not (result.status == TrialStatus.PRUNED and previous is not None and previous.status in MEASURED):
        save_result(result, spec.cache_dir)  # a partial (pruned) measurement never replaces a complete one
    return result


def _package_cached(result: TrialResult, spec: TrialSpec) -> None:
    """A cached result's MLflow model: its directory when it exists, else packaged now in the worker (not
    again when packaging failed when it was measured: the same versions would fail the same way)."""
    from trtsweep.mlflow_models import package_dir

    target = package_dir(spec)
    if (target / "MLmodel").exists():
        result.report["mlflow_model"] = str(target)
        return
    if result.report.get("mlflow_model_error"):
        return
    try:
        packaged = pool().call("package_model", {"spec": spec.to_dict()}, worker_env(spec), spec.trial.timeout_s,
                               spec.trial.max_memory_mb)
    except TrialFailure as f:
        packaged = {"mlflow_model_error": f.reason}
    result.report.pop("mlflow_model", None)
    result.report.pop("mlflow_model_error", None)
    result.report.update(packaged)


def judge(result: TrialResult, spec: TrialSpec) -> None:
    """A measured result's status and reason under the spec's bounds: ``fidelity.max_accuracy_drop``
    (``accuracy_violation``) and ``constraints.*`` (``infeasible``), see :mod:`trtsweep.constraints`."""
    if result.status in MEASURED:
        result.status, result.reason = verdict(result.metrics, spec.constraints, spec.fidelity.max_accuracy_drop)
        result.spec["constraints"] = asdict(spec.constraints)  # the bounds it was judged under


def prepare(specs: list[TrialSpec], mlflow_model: bool = False) -> None:
    """Have the warm worker resolve the model and load the data of the first trial that will run, while
    the sweep still opens MLflow (nothing is timed: the trial finds both in memory); with
    ``mlflow_model`` (the trials package MLflow models), import what packaging needs too."""
    spec = next((s for s in specs if not s.skip_reason), None)
    p = _POOL
    if spec is None or p is None or p.proc is None or not p.proc.is_alive():
        return
    env = worker_env(spec)
    if env is None or env == p.env:  # else the trial needs a fresh worker anyway
        p.send_ahead("prepare", {"spec": spec.to_dict(), "mlflow_model": mlflow_model})


def resolve_model(spec: TrialSpec) -> dict:
    """Resolve a model: from the caches in this process when they hold it (the worker may still be
    importing TensorFlow), else in the worker (builds generated models once, reads the signature);
    raises TrialFailure with one line."""
    from trtsweep.models import resolve_cached

    cached = resolve_cached(spec.model, spec.cache_dir)
    if cached is not None:
        return cached.to_dict()
    return pool().call("resolve", {"model": asdict(spec.model), "cache_dir": spec.cache_dir}, worker_env(spec),
                       spec.trial.timeout_s, spec.trial.max_memory_mb)
