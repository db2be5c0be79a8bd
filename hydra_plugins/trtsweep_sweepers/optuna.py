"""The Optuna sweeper (``hydra/sweeper=optuna``): search for the fastest configuration that passes
the accuracy check, instead of measuring the whole grid.

* The search space is written in Hydra's sweep grammar (command line or ``hydra.sweeper.params``):
  ``a,b`` / ``choice(a,b)`` → categorical, ``range(1,5)`` → integers 1..4, ``interval(0.1,1)`` →
  float, ``tag(log, interval(...))`` → log scale, ``int(interval(1,64))`` → integers.  Other
  overrides are fixed.  ``engine.<param>`` is suggested only for the sampled engines that have
  that parameter (``conf/engine/<engine>.yaml``), so one search can span engines.
* The space is validated before the first trial (every categorical value and both ends of every
  range are composed and planned); an invalid space stops with one line and exit code 2.
* Each asked trial is launched as a Hydra job through the same task function as the grid
  (plan → runner → record): ``ok`` → the objective; ``accuracy_violation`` → infeasible (a
  constraint > 0, never best); ``skipped`` → pruned; ``failed`` → failed.  A configuration
  already measured comes from the result cache instantly and counts like any other trial.
* The study lives in an RDB storage (SQLite by default, PostgreSQL for many workers): workers
  with the same storage and study name share it; heartbeats let a restarted study fail and retry a
  trial whose process died.  The study is one MLflow parent run; every trial its child run.

Kept light: Optuna, pandas and matplotlib are imported only when a sweep runs (Hydra scans this
module at every start).  No ``from __future__ import annotations`` (Hydra's dataclass scan).
"""

import json
import logging
import math
import os
import re
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper

log = logging.getLogger(__name__)

# objective metric -> direction (multi_objective adds accuracy_drop, minimised)
OBJECTIVES: Dict[str, str] = {
    "throughput_ips": "maximize",
    "latency_p50_ms": "minimize",
    "latency_p90_ms": "minimize",
    "latency_p99_ms": "minimize",
    "latency_mean_ms": "minimize",
}
ACCURACY_OBJECTIVE = "accuracy_drop"
SAMPLERS = ("tpe", "random", "grid", "cmaes", "nsgaii")
CONSTRAINT_ATTR = "constraint"  # [accuracy_drop - fidelity.max_accuracy_drop]; > 0 is infeasible
METRIC_ATTRS = ("throughput_ips", "latency_p50_ms", "latency_p99_ms", "accuracy", "accuracy_drop", "top1_agreement")
ENGINE_PREFIX = "engine."


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.trtsweep_sweepers.optuna.OptunaSweeper"
    n_trials: int = 20  # trials this worker runs (several workers: the study gets the sum)
    timeout: Optional[float] = None  # seconds; no new trial is asked after it
    study_name: str = "trtsweep-${name}"
    storage: str = "sqlite:///outputs/optuna.db"  # any SQLAlchemy URL, e.g. postgresql://user:pw@host/db
    sampler: str = "tpe"  # tpe | random | grid | cmaes | nsgaii
    seed: Optional[int] = None  # several workers: give each its own seed (or none)
    n_startup_trials: Optional[int] = 5  # tpe/cmaes: random trials before modelling (null: Optuna's 10)
    objective: str = "throughput_ips"  # or latency_p50_ms, latency_p90_ms, latency_p99_ms, latency_mean_ms
    multi_objective: bool = False  # true: (objective, accuracy_drop ↓), a Pareto front
    heartbeat_interval: int = 10  # s between heartbeats of a running trial
    grace_period: int = 30  # s without heartbeat after which a RUNNING trial is failed (and retried)
    max_retry: int = 1  # retries of a trial whose process died
    # the search space, like the basic sweeper's; from the command line: +hydra.sweeper.params.batch_size='choice(1,8)'
    params: Dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="trtsweep")


class SearchSpaceError(ValueError):
    """An invalid search space or sweeper setting; ``str()`` is the one line shown to the user."""


# ---------------------------------------------------------------------------
# search space: Hydra sweep grammar -> Optuna distributions
@dataclass
class SearchParam:
    name: str  # Optuna parameter name: the config key (``engine.num_threads``)
    key: str  # the override key as written (may carry ``+``/``++``)
    expr: str  # the override as written, for messages
    distribution: Any  # optuna.distributions.BaseDistribution
    engines: Optional[Tuple[str, ...]] = None  # engine.<p> in a search over engines: only for these


def parse_overrides(lines: Sequence[str], config_loader: Any = None) -> List[Any]:
    """Parse override strings with Hydra's grammar; a syntax error becomes one line with a fix."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create(config_loader=config_loader)
    out = []
    for line in lines:
        try:
            out.extend(parser.parse_overrides([line]))
        except Exception as e:  # noqa: BLE001 - OverrideParseException and friends
            detail = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip() and not ln.startswith("See ")]
            why = re.sub(r"^\w+ while evaluating '[^']*': ", "", detail[0]) if detail else "syntax error"
            fix = ("list at least one value, e.g. precision=choice(fp32,int8)" if "empty choice" in why
                   else "see the sweep grammar in docs/optuna.md (choice(a,b), range(1,5), interval(0.1,1))")
            raise SearchSpaceError(f"cannot parse '{line}': {why}; fix: {fix}") from None
    return out


def split_space(overrides: Sequence[Any]) -> Tuple[List[SearchParam], List[str]]:
    """(search parameters, fixed override strings); a later override of the same key wins."""
    by_key: Dict[str, Any] = {}
    for ov in overrides:
        name = _plain_key(ov.get_key_element())
        by_key.pop(name, None)
        by_key[name] = ov
    space, fixed = [], []
    for name, ov in by_key.items():
        if ov.is_sweep_override():
            space.append(SearchParam(name, ov.get_key_element(), ov.input_line or name, to_distribution(ov)))
        else:
            fixed.append(ov.input_line or f"{ov.get_key_element()}={ov.get_value_element_as_str()}")
    return space, fixed


def _plain_key(key: str) -> str:
    return key.lstrip("+~")


def to_distribution(ov: Any) -> Any:
    """The Optuna distribution for one sweep override (raises SearchSpaceError naming the fix)."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key, value, expr = ov.get_key_element(), ov.value(), ov.input_line or ov.get_key_element()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        choices = list(ov.sweep_iterator())
        if not choices:
            raise SearchSpaceError(f"{expr}: empty choice; fix: list at least one value, e.g. {key}=choice(a,b)")
        bad = [c for c in choices if not isinstance(c, (str, int, float, bool))]
        if bad:
            raise SearchSpaceError(f"{expr}: choice value {bad[0]!r} is not a scalar; fix: choose among strings, "
                                   "numbers or booleans (a list or dict cannot be an Optuna choice)")
        if len(set(map(repr, choices))) != len(choices):
            raise SearchSpaceError(f"{expr}: a value appears twice; fix: list each value once")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        values = list(ov.sweep_iterator())
        if not values:
            raise SearchSpaceError(f"{expr}: the range is empty (start={value.start}, stop={value.stop}, "
                                   f"step={value.step}; the stop is excluded); fix: e.g. {key}=range(1,5) for 1..4")
        low, high, step = min(values), max(values), abs(value.step)
        if all(isinstance(v, int) for v in values):
            return IntDistribution(int(low), int(high), step=int(step))
        return FloatDistribution(float(low), float(high), step=float(step))
    if isinstance(value, IntervalSweep):
        start, end, log_scale = value.start, value.end, "log" in value.tags
        if start > end:
            raise SearchSpaceError(f"{expr}: interval({start}, {end}) is reversed: the start must be ≤ the end; "
                                   f"fix: {key}=interval({end}, {start})")
        if log_scale and start <= 0:
            raise SearchSpaceError(f"{expr}: a log interval needs a start > 0 (got {start}); "
                                   f"fix: e.g. {key}=tag(log, interval({end / 1000:g}, {end}))")
        if isinstance(start, int) and isinstance(end, int):
            return IntDistribution(start, end, log=log_scale)
        return FloatDistribution(float(start), float(end), log=log_scale)
    raise SearchSpaceError(f"{expr}: {type(value).__name__} sweeps are not supported by the Optuna sweeper; "
                           "fix: use choice(...), range(...) or interval(...)")


def encode_value(value: Any) -> str:
    """A sampled value as Hydra override text (strings quoted when the grammar needs it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9_./:@-]+", text) and text.lower() not in ("true", "false", "null"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def representative_values(distribution: Any) -> List[Any]:
    """Values that exercise a distribution for validation: every choice, or both ends."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    return [distribution.low] if distribution.low == distribution.high else [distribution.low, distribution.high]


def grid_values(param: SearchParam) -> List[Any]:
    """Every value of a finite distribution (sampler=grid); a continuous one is an error."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    d = param.distribution
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    if isinstance(d, IntDistribution) and not d.log:
        return list(range(d.low, d.high + 1, d.step))
    if getattr(d, "step", None) and not d.log:
        n = int(round((d.high - d.low) / d.step))
        return [round(d.low + i * d.step, 12) for i in range(n + 1)]
    raise SearchSpaceError(f"{param.expr}: sampler=grid needs a finite set of values; "
                           f"fix: use choice(...) or range(...) for {param.name}, or another sampler (tpe, random)")


def attach_engine_conditions(space: List[SearchParam], engine_keys: Dict[str, set],
                             fixed_engine: Optional[str]) -> None:
    """Make ``engine.<p>`` conditional on the sampled engine; reject a parameter no engine has.

    ``engine_keys``: engine -> its parameter names (from ``conf/engine/<engine>.yaml``), for every
    engine of the search (or the fixed one).
    """
    for p in space:
        if not p.name.startswith(ENGINE_PREFIX) or p.key.startswith("+"):
            continue
        param = p.name[len(ENGINE_PREFIX):]
        having = tuple(e for e in engine_keys if param in engine_keys[e])
        if fixed_engine is not None:
            if not having:
                known = ", ".join(sorted(engine_keys.get(fixed_engine, ())))
                raise SearchSpaceError(f"{p.expr}: {param} is not a parameter of engine={fixed_engine}; "
                                       f"fix: use one of {known} (conf/engine/{fixed_engine}.yaml)")
            continue
        if not having:
            per_engine = "; ".join(f"{e}: {', '.join(sorted(keys))}" for e, keys in engine_keys.items())
            raise SearchSpaceError(f"{p.expr}: {param} is not a parameter of any engine in the search "
                                   f"({', '.join(engine_keys)}); fix: use a parameter one of them has ({per_engine})")
        p.engines = None if len(having) == len(engine_keys) else having


def _ordered(space: Sequence[SearchParam]) -> List[SearchParam]:
    """Unconditional parameters first (the engine is sampled before its parameters)."""
    return sorted(space, key=lambda p: p.engines is not None)


def _active(space: Sequence[SearchParam], values: Dict[str, Any]) -> Dict[str, Any]:
    engine = values.get("engine")
    return {p.name: values[p.name] for p in _ordered(space)
            if p.name in values and (p.engines is None or engine in p.engines)}


def suggest(trial: Any, space: Sequence[SearchParam]) -> Dict[str, Any]:
    """Ask the trial for every active parameter (define-by-run: engine first, then its parameters)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    values: Dict[str, Any] = {}
    for p in _ordered(space):
        if p.engines is not None and values.get("engine") not in p.engines:
            continue
        d = p.distribution
        if isinstance(d, CategoricalDistribution):
            values[p.name] = trial.suggest_categorical(p.name, d.choices)
        elif isinstance(d, IntDistribution):
            values[p.name] = trial.suggest_int(p.name, d.low, d.high, step=d.step, log=d.log)
        else:
            values[p.name] = trial.suggest_float(p.name, d.low, d.high, step=d.step, log=d.log)
    return values


def overrides_for(space: Sequence[SearchParam], values: Dict[str, Any], fixed: Sequence[str]) -> List[str]:
    keys = {p.name: p.key for p in space}
    return list(fixed) + [f"{keys[name]}={encode_value(v)}" for name, v in values.items()]


def representative_assignments(space: Sequence[SearchParam]) -> List[Dict[str, Any]]:
    """Every categorical value and both ends of every range at least once, the rest at their first value."""
    firsts = {p.name: representative_values(p.distribution)[0] for p in space}
    engine_choices = next((list(p.distribution.choices) for p in space if p.name == "engine"
                           and hasattr(p.distribution, "choices")), [])
    out: List[Dict[str, Any]] = []
    seen = set()
    for p in [None, *space]:
        for v in representative_values(p.distribution) if p is not None else [None]:
            values = dict(firsts)
            if p is not None:
                values[p.name] = v
                if p.engines is not None and values.get("engine") not in p.engines:
                    values["engine"] = next(e for e in engine_choices if e in p.engines)
            active = _active(space, values)
            ident = json.dumps(active, sort_keys=True, default=str)
            if ident not in seen:
                seen.add(ident)
                out.append(active)
    return out


# ---------------------------------------------------------------------------
# trial outcome
@dataclass
class Outcome:
    state: str  # COMPLETE | PRUNED | FAIL (Optuna TrialState names)
    values: Optional[List[float]]
    feasible: bool
    attrs: Dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "INFEASIBLE" if self.state == "COMPLETE" and not self.feasible else self.state


def trial_outcome(result: Optional[Dict[str, Any]], error: Optional[str], objective: str, multi_objective: bool,
                  max_accuracy_drop: float) -> Outcome:
    """Map a job's return value (``trtsweep.app.run_job``) to what Optuna is told."""
    if result is None:
        return Outcome("FAIL", None, False, {"status": "failed", "reason": error or "the job failed"})
    status = str(result.get("status"))
    metrics = result.get("metrics") or {}
    attrs: Dict[str, Any] = {"status": status, "trial_key": result.get("trial_key") or "",
                             "mlflow_run_id": result.get("mlflow_run_id") or "",
                             "cached": bool((result.get("row") or {}).get("cached", False))}
    attrs.update({k: float(metrics[k]) for k in METRIC_ATTRS if _finite(metrics.get(k))})
    if result.get("reason"):
        attrs["reason"] = str(result["reason"])
    if status == "skipped":
        return Outcome("PRUNED", None, False, attrs)
    if status not in ("ok", "accuracy_violation"):
        attrs.setdefault("reason", f"status {status}")
        return Outcome("FAIL", None, False, attrs)
    wanted = [objective] + ([ACCURACY_OBJECTIVE] if multi_objective else [])
    missing = [m for m in wanted if not _finite(metrics.get(m))]
    if missing:
        attrs["reason"] = f"the trial reported no finite {missing[0]}"
        return Outcome("FAIL", None, False, attrs)
    drop = metrics.get(ACCURACY_OBJECTIVE)
    constraint = float(drop) - max_accuracy_drop if _finite(drop) else 0.0
    if status == "accuracy_violation":
        constraint = max(constraint, 1e-12)  # the runner's verdict wins over float rounding
    attrs[CONSTRAINT_ATTR] = [constraint]
    return Outcome("COMPLETE", [float(metrics[m]) for m in wanted], constraint <= 0, attrs)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def trial_constraints(trial: Any) -> Sequence[float]:
    """Optuna 4's ``constraints_func``: ≤ 0 is feasible."""
    return trial.user_attrs.get(CONSTRAINT_ATTR, [0.0])


def native_constraints() -> bool:
    """Optuna ≥ 5 takes constraints from ``Trial.set_constraint`` (``constraints_func`` is deprecated)."""
    from optuna.trial import Trial

    return hasattr(Trial, "set_constraint")


def tell(study: Any, trial: Any, outcome: Outcome) -> None:
    from optuna.trial import TrialState

    for k, v in outcome.attrs.items():
        trial.set_user_attr(k, v)
    if CONSTRAINT_ATTR in outcome.attrs and native_constraints():
        trial.set_constraint(ACCURACY_OBJECTIVE, outcome.attrs[CONSTRAINT_ATTR][0])
    with warnings.catch_warnings():  # the heartbeat warning again (tell); our Heartbeat records them
        warnings.simplefilter("ignore", UserWarning)
        try:
            if outcome.state == "COMPLETE":
                assert outcome.values is not None
                study.tell(trial, outcome.values if len(outcome.values) > 1 else outcome.values[0])
            else:
                study.tell(trial, state=TrialState[outcome.state])
        except RuntimeError as e:  # GridSampler calls study.stop() on its last grid point (allowed in optimize()
            if "Study.stop" not in str(e):  # only); the trial is stored, the sweep loop checks is_exhausted()
                raise


def is_feasible(trial: Any) -> bool:
    from optuna.trial import TrialState

    return trial.state == TrialState.COMPLETE and all(c <= 0 for c in trial_constraints(trial))


def best_trial(trials: Sequence[Any], direction: str) -> Optional[Any]:
    """The best feasible completed trial on the first objective (never an accuracy violation)."""
    feasible = [t for t in trials if is_feasible(t) and t.values]
    if not feasible:
        return None
    sign = 1 if direction == "maximize" else -1
    return max(feasible, key=lambda t: (sign * t.values[0], -t.number))


def pareto_front(trials: Sequence[Any], directions: Sequence[str]) -> List[Any]:
    """Feasible completed trials no other feasible trial dominates."""
    signs = [1 if d == "maximize" else -1 for d in directions]
    pts = [(t, [s * v for s, v in zip(signs, t.values)]) for t in trials if is_feasible(t) and t.values]
    front = []
    for t, a in pts:
        dominated = any(all(x >= y for x, y in zip(b, a)) and any(x > y for x, y in zip(b, a)) for _, b in pts)
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: t.number)


# ---------------------------------------------------------------------------
# sampler and storage
def make_sampler(name: str, seed: Optional[int], n_startup_trials: Optional[int], n_objectives: int,
                 space: Sequence[SearchParam]) -> Any:
    """The sweeper's sampler; constraint-aware where Optuna supports it (tpe, nsgaii).

    Constraints: ``Trial.set_constraint`` (Optuna ≥ 5, see :func:`tell`), else ``constraints_func``.
    """
    import optuna

    startup = {} if n_startup_trials is None else {"n_startup_trials": n_startup_trials}
    constraints = {} if native_constraints() else {"constraints_func": trial_constraints}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, **constraints, **startup)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "grid":
            return optuna.samplers.GridSampler({p.name: grid_values(p) for p in space}, seed=seed)
        if name == "cmaes":
            if n_objectives > 1:
                raise SearchSpaceError("sampler=cmaes is single-objective; fix: hydra.sweeper.sampler=tpe or nsgaii "
                                       "with multi_objective=true")
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, **startup)
        if name == "nsgaii":
            return optuna.samplers.NSGAIISampler(seed=seed, **constraints)
    raise SearchSpaceError(f"hydra.sweeper.sampler={name} is unknown; fix: use one of {', '.join(SAMPLERS)}")


def storage_identity(url: str) -> str:
    """The storage URL with a relative SQLite path made absolute (workers in one directory agree)."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(url[len("sqlite:///"):]).resolve())
    return url


def masked(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL: show no credentials at all
        return re.sub(r"//[^@/]*@", "//***@", url)


def open_storage(url: str, heartbeat_interval: int, grace_period: int, max_retry: int, attempts: int = 3) -> Any:
    """RDBStorage with heartbeats and retry of dead trials; retried when workers race on creating tables."""
    import optuna

    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        for attempt in range(attempts):
            try:
                return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval,
                                                  grace_period=grace_period, heartbeat_stale_trial_callback=callback)
            except Exception as e:  # noqa: BLE001 - first-use race, or a real connection error
                if attempt == attempts - 1:
                    raise SearchSpaceError(f"hydra.sweeper.storage={masked(url)} cannot be opened: "
                                           f"{_first_line(e)}; fix: check the URL, the server and the driver "
                                           "(postgresql:// needs psycopg 3 with SQLAlchemy ≥ 2.1: pip install "
                                           "'psycopg[binary]', or write postgresql+psycopg2://)") from None
                time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


class Heartbeat:
    """Records a RUNNING trial's heartbeat every ``interval`` s (Optuna does so only inside optimize())."""

    def __init__(self, storage: Any, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # noqa: BLE001 - a missed beat must not kill the trial
                log.warning("optuna heartbeat failed: %s", _first_line(e))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "Heartbeat":
        self.storage.record_heartbeat(self.trial_id)  # stale detection needs a first beat
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def fail_stale_trials(study: Any, storage: Any, grace_period: float) -> None:
    """Fail (and re-queue) RUNNING trials whose process died: Optuna's heartbeat check, plus orphans."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    fail_orphaned_trials(study, storage, grace_period)


def fail_orphaned_trials(study: Any, storage: Any, grace_period: float, now: Optional[Any] = None) -> List[int]:
    """RUNNING trials killed between ``ask()`` and their first heartbeat, older than ``grace_period``.

    Optuna's stale check only sees trials with a heartbeat, so such a trial would stay RUNNING forever.
    A live worker records the heartbeat and then the ``worker`` user attribute within milliseconds of
    ``ask()``; a trial without that attribute after ``grace_period`` seconds is failed and re-queued
    by the storage's stale-trial callback, like a stale one.  Returns the failed trial numbers.
    """
    import datetime

    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    now = now or datetime.datetime.now()
    callback = storage.get_heartbeat_stale_trial_callback()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "worker" in t.user_attrs or t.datetime_start is None:
            continue
        if (now - t.datetime_start).total_seconds() <= grace_period:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "reason", "its worker died before the trial started")
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:  # another worker got there first
            continue
        failed.append(t.number)
        log.warning("optuna: trial #%d was left RUNNING by a worker that died; failed and re-queued", t.number)
        if callback is not None:
            callback(study, storage.get_trial(t._trial_id))
    return failed


# ---------------------------------------------------------------------------
# study report: table, plot, importances, summary
def study_table(trials: Sequence[Any], objectives: Sequence[str]) -> Any:
    import pandas as pd

    rows = []
    for t in trials:
        r: Dict[str, Any] = {"number": t.number, "state": t.state.name,
                             "feasible": is_feasible(t) if t.state.name == "COMPLETE" else None}
        for name, v in zip(objectives, t.values or []):
            r[f"value.{name}"] = v
        r.update({f"params.{k}": v for k, v in t.params.items()})
        for k in ("status", "reason", "cached", "trial_key", "mlflow_run_id", "worker", *METRIC_ATTRS):
            if k in t.user_attrs:
                r[k] = t.user_attrs[k]
        if CONSTRAINT_ATTR in t.user_attrs:
            r["constraint"] = t.user_attrs[CONSTRAINT_ATTR][0]
        if "failed_trial" in t.system_attrs:
            r["retry_of"] = t.system_attrs["failed_trial"]
        r["datetime_start"] = t.datetime_start
        r["datetime_complete"] = t.datetime_complete
        rows.append(r)
    return pd.DataFrame(rows)


def plot_history(trials: Sequence[Any], objective: str, direction: str, path: Path) -> Path:
    """Objective per trial (feasible •, infeasible ×) and the best feasible value so far."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    done = sorted((t for t in trials if t.state.name == "COMPLETE" and t.values), key=lambda t: t.number)
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    feas = [t for t in done if is_feasible(t)]
    infeas = [t for t in done if not is_feasible(t)]
    ax.scatter([t.number for t in feas], [t.values[0] for t in feas], s=18, label="feasible")
    if infeas:
        ax.scatter([t.number for t in infeas], [t.values[0] for t in infeas], s=24, marker="x", color="grey",
                   label="accuracy violation")
    best, xs, ys = None, [], []
    pick = max if direction == "maximize" else min
    for t in done:
        if is_feasible(t):
            best = t.values[0] if best is None else pick(best, t.values[0])
        if best is not None:
            xs.append(t.number)
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:red", label="best feasible")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title("Optuna optimisation history")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def importances(study: Any, min_trials: int = 2) -> Tuple[Dict[str, float], Optional[str]]:
    """Parameter importances of the first objective, or ({}, why not)."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(done) < min_trials:
        return {}, f"needs ≥ {min_trials} completed trials (have {len(done)})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
            return dict(optuna.importance.get_param_importances(study, target=target)), None
    except Exception as e:  # noqa: BLE001 - e.g. every parameter took one value
        return {}, _first_line(e)


def _params_text(params: Dict[str, Any]) -> str:
    return " ".join(f"{k}={encode_value(v)}" for k, v in params.items())


def summary_lines(trials: Sequence[Any], best: Optional[Any], front: Sequence[Any], study_name: str,
                  objective: str, ran_here: int) -> List[str]:
    states: Dict[str, int] = {}
    for t in trials:
        label = "infeasible" if t.state.name == "COMPLETE" and not is_feasible(t) else t.state.name.lower()
        states[label] = states.get(label, 0) + 1
    cached = sum(1 for t in trials if t.user_attrs.get("cached"))
    lines = [f"optuna study {study_name}: {len(trials)} trial(s), {ran_here} run by this worker — "
             f"complete={states.get('complete', 0)}, infeasible={states.get('infeasible', 0)}, "
             f"failed={states.get('fail', 0)}, skipped(pruned)={states.get('pruned', 0)}"
             + (f", running elsewhere={states['running']}" if states.get("running") else "")
             + (f", served from the result cache={cached}" if cached else "")]
    if best is None:
        lines.append("optuna best: no feasible trial yet (every completed trial violated the accuracy constraint)"
                     if states.get("infeasible") else "optuna best: no completed trial")
    else:
        a = best.user_attrs
        metrics = ", ".join(f"{k}={a[k]:.4g}" for k in METRIC_ATTRS if k in a)
        lines.append(f"optuna best: trial #{best.number} {objective}={best.values[0]:.6g} — "
                     f"{_params_text(best.params)} ({metrics})")
    if len(front) > 1 or (front and best is not None and front[0].number != best.number):
        lines.append("optuna Pareto front (objective, accuracy_drop): " + "; ".join(
            f"#{t.number} {t.values[0]:.4g}/{t.values[1]:.4g}" for t in front))
    return lines


# ---------------------------------------------------------------------------
class OptunaSweeper(Sweeper):
    def __init__(self, n_trials: int = 20, timeout: Optional[float] = None, study_name: str = "trtsweep",
                 storage: str = "sqlite:///outputs/optuna.db", sampler: str = "tpe", seed: Optional[int] = None,
                 n_startup_trials: Optional[int] = 5, objective: str = "throughput_ips",
                 multi_objective: bool = False, heartbeat_interval: int = 10, grace_period: int = 30,
                 max_retry: int = 1, params: Optional[Dict[str, Any]] = None):
        self.n_trials, self.timeout, self.study_name = n_trials, timeout, study_name
        self.storage_url, self.sampler_name, self.seed = storage, sampler, seed
        self.n_startup_trials, self.objective, self.multi_objective = n_startup_trials, objective, multi_objective
        self.heartbeat_interval, self.grace_period, self.max_retry = heartbeat_interval, grace_period, max_retry
        self.params = dict(params or {})
        self.config: Any = None
        self.hydra_context: Any = None
        self.launcher: Any = None
        self._summary: List[str] = []

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    # ---- settings and space ----
    def _directions(self) -> List[str]:
        if self.objective not in OBJECTIVES:
            raise SearchSpaceError(f"hydra.sweeper.objective={self.objective} is unknown; "
                                   f"fix: use one of {', '.join(OBJECTIVES)}")
        return [OBJECTIVES[self.objective]] + (["minimize"] if self.multi_objective else [])

    def _check_settings(self) -> None:
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise SearchSpaceError(f"hydra.sweeper.n_trials={self.n_trials} must be an integer ≥ 1; "
                                   "fix: hydra.sweeper.n_trials=20")
        if self.timeout is not None and self.timeout <= 0:
            raise SearchSpaceError(f"hydra.sweeper.timeout={self.timeout} must be > 0 seconds (or null)")
        if self.heartbeat_interval < 1 or self.grace_period <= self.heartbeat_interval:
            raise SearchSpaceError(f"hydra.sweeper.grace_period={self.grace_period} must exceed heartbeat_interval="
                                   f"{self.heartbeat_interval} (≥ 1); fix: e.g. heartbeat_interval=10 grace_period=30")
        if self.sampler_name not in SAMPLERS:
            raise SearchSpaceError(f"hydra.sweeper.sampler={self.sampler_name} is unknown; "
                                   f"fix: use one of {', '.join(SAMPLERS)}")
        if not self.study_name or "${" in str(self.study_name):
            raise SearchSpaceError(f"hydra.sweeper.study_name={self.study_name!r} is invalid; "
                                   "fix: hydra.sweeper.study_name=my-study")

    def _compose(self, overrides: List[str], label: str) -> Any:
        """The job config for ``overrides``; ``label`` names the trial in an error (the search values)."""
        try:
            return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        except Exception as e:  # noqa: BLE001 - unknown key / option: Hydra's message, shortened
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            text = "; ".join(lines[:2]) if lines else type(e).__name__
            raise SearchSpaceError(f"the config does not compose with {label or 'the fixed overrides'}: {text}; "
                                   "fix: check the key or option name (conf/), or add a new key with +key=value"
                                   ) from None

    def _engine_keys(self, space: List[SearchParam], fixed: List[str]) -> Tuple[Dict[str, set], Optional[str]]:
        engine = next((p for p in space if p.name == "engine"), None)
        if engine is None:
            cfg = self._compose(fixed, "")
            return {str(cfg.engine.name): set(cfg.engine.keys()) - {"name"}}, str(cfg.engine.name)
        choices = getattr(engine.distribution, "choices", None)
        if choices is None:
            raise SearchSpaceError(f"{engine.expr}: the engine is a config group; fix: engine=choice(tf,tflite,...)")
        keys = {}
        for e in choices:
            cfg = self._compose(fixed + [f"engine={encode_value(e)}"], f"engine={encode_value(e)}")
            keys[str(e)] = set(cfg.engine.keys()) - {"name"}
        return keys, None

    def _validate(self, space: List[SearchParam], fixed: List[str]) -> Any:
        """Compose and plan a representative set of trials; returns the Plan (raises on an invalid space)."""
        from trtsweep.app import plan_sweep
        from trtsweep.errors import ConfigError

        if not space:
            raise SearchSpaceError("the search space is empty; fix: give parameters as choice(...), range(...) or "
                                   "interval(...) on the command line or in hydra.sweeper.params")
        keys, fixed_engine = self._engine_keys(space, fixed)
        attach_engine_conditions(space, keys, fixed_engine)
        assignments = representative_assignments(space)
        configs = [self._compose(overrides_for(space, a, fixed), _params_text(a)) for a in assignments]
        for values, cfg in zip(assignments, configs):
            try:
                plan_sweep([cfg], resolve_models=False)
            except ConfigError as e:
                raise SearchSpaceError(f"{e} (trial with {_params_text(values)})") from None
        try:
            plan = plan_sweep(configs, resolve_models=True)
        except ConfigError as e:
            raise SearchSpaceError(str(e)) from None
        skipped: Dict[str, List[Dict[str, Any]]] = {}
        for spec, values in zip(plan.specs, assignments):
            if spec.skip_reason:
                skipped.setdefault(spec.skip_reason, []).append(values)
        for reason, examples in skipped.items():
            log.info("plan: %d of %d validation trials would be skipped (pruned, no measurement), e.g. %s — %s",
                     len(examples), len(assignments), _params_text(examples[0]), reason)
        return plan

    # ---- study ----
    def _open_study(self, space: List[SearchParam], directions: List[str]) -> Tuple[Any, Any]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = make_sampler(self.sampler_name, self.seed, self.n_startup_trials, len(directions), space)
        storage = open_storage(self.storage_url, self.heartbeat_interval, self.grace_period, self.max_retry)
        study = optuna.create_study(storage=storage, study_name=self.study_name, sampler=sampler,
                                    directions=directions, load_if_exists=True)
        have = [d.name.lower() for d in study.directions]
        if have != directions:
            raise SearchSpaceError(f"study {self.study_name} in {masked(self.storage_url)} optimises {have}, not "
                                   f"{directions}; fix: a new hydra.sweeper.study_name, or the study's objective")
        return study, storage

    def sweep(self, arguments: List[str]) -> Any:
        from omegaconf import OmegaConf

        from trtsweep import runner
        from trtsweep.app import fail, finish_sweep, start_sweep, sweep_key

        assert self.config is not None and self.hydra_context is not None and self.launcher is not None
        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        try:
            self._check_settings()
            directions = self._directions()
            space, fixed = split_space(parse_overrides(lines, self.hydra_context.config_loader))
            plan = self._validate(space, fixed)
            study, storage = self._open_study(space, directions)
        except SearchSpaceError as e:
            runner.pool().stop()
            fail(str(e))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        identity = storage_identity(self.storage_url)
        tags = {"sweeper": "optuna", "optuna.study": self.study_name, "optuna.storage": masked(identity),
                "optuna.sampler": self.sampler_name, "optuna.objective": self.objective,
                "optuna.space": " ".join(p.expr for p in space)[:4000]}
        ctx = start_sweep(plan.configs[0], sweep_dir, sweep_key(self.study_name, [], identity),
                          f"optuna: {self.study_name}"[:250], self.n_trials, plan.batch_sizes, tags)
        log.info("optuna: study %s in %s, sampler %s, %s %s%s, %d trial(s) here", self.study_name,
                 masked(identity), self.sampler_name, " & ".join(directions), self.objective,
                 " & accuracy_drop" if self.multi_objective else "", self.n_trials)
        ran = 0
        try:
            started = time.monotonic()
            for local in range(self.n_trials):
                if self.timeout is not None and time.monotonic() - started > self.timeout:
                    log.info("optuna: timeout of %s s reached after %d trial(s)", self.timeout, ran)
                    break
                if self.sampler_name == "grid" and study.sampler.is_exhausted(study):
                    log.info("optuna: the grid is exhausted after %d trial(s)", ran)
                    break
                self._run_trial(study, storage, space, fixed, ctx, local, directions)
                ran += 1
        finally:
            try:
                self._finish(study, ctx, directions, ran)
            except Exception as e:  # noqa: BLE001 - the trials are safe in the study; still close the sweep
                log.error("could not report the study: %s", _first_line(e))
                log.debug("study report error", exc_info=True)
            finish_sweep(ctx)
            print("\n".join(self._summary), flush=True)
        return None

    def _run_trial(self, study: Any, storage: Any, space: List[SearchParam], fixed: List[str], ctx: Any,
                   local: int, directions: List[str]) -> None:
        fail_stale_trials(study, storage, self.grace_period)
        with warnings.catch_warnings():  # "Heartbeat ... supposed to be used with Study.optimize": see Heartbeat
            warnings.simplefilter("ignore", UserWarning)
            trial = study.ask()
        with Heartbeat(storage, trial._trial_id, self.heartbeat_interval):
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # alive: fail_orphaned_trials
            outcome = self._launch(study, trial, space, fixed, local)
        tell(study, trial, outcome)
        self._tag_child(ctx, trial.number, outcome)
        value = (" " + ", ".join(f"{n}={v:.6g}" for n, v in zip([self.objective, ACCURACY_OBJECTIVE],
                                                              outcome.values))) if outcome.values else ""
        why = f" — {outcome.attrs['reason']}" if outcome.state != "COMPLETE" and "reason" in outcome.attrs else ""
        log.info("optuna: trial #%d %s%s%s%s", trial.number, outcome.label, value,
                 " (from the result cache)" if outcome.attrs.get("cached") else "", why)

    def _launch(self, study: Any, trial: Any, space: List[SearchParam], fixed: List[str], local: int) -> Outcome:
        """Suggest the trial's values and run it as a Hydra job through the task function."""
        from hydra.core.utils import JobStatus

        from trtsweep.app import ENV_OFFSET

        try:
            values = suggest(trial, space)
        except ValueError as e:  # e.g. a retried trial from an older, different space
            return trial_outcome(None, f"cannot reuse this trial's parameters: {_first_line(e)}", self.objective,
                                 self.multi_objective, 0.0)
        overrides = overrides_for(space, values, fixed)
        trial.set_user_attr("overrides", overrides)
        os.environ[ENV_OFFSET] = str(local - trial.number)  # progress shows [local/n_trials]
        try:
            ret = self.launcher.launch([overrides], initial_job_idx=trial.number)[0]
        except BaseException as e:  # SystemExit (invalid config), KeyboardInterrupt: stop the study
            tell(study, trial, Outcome("FAIL", None, False, {"status": "failed",
                                                              "reason": f"interrupted: {_first_line(e)}"}))
            raise
        max_drop = float(_select(ret.cfg, "fidelity.max_accuracy_drop", 0.01))
        if ret.status == JobStatus.COMPLETED and isinstance(ret._return_value, dict):
            return trial_outcome(ret._return_value, None, self.objective, self.multi_objective, max_drop)
        err = ret._return_value if isinstance(ret._return_value, BaseException) else None
        return trial_outcome(None, _first_line(err) if err else "the job returned no result", self.objective,
                             self.multi_objective, max_drop)

    def _tag_child(self, ctx: Any, number: int, outcome: Outcome) -> None:
        run_id = outcome.attrs.get("mlflow_run_id")
        if ctx.tracker is None or not run_id:
            return
        try:
            earlier = ctx.tracker.run_tags(run_id).get("optuna.trial_numbers", "")
            numbers = sorted({int(n) for n in earlier.split(",") if n.strip().isdigit()} | {number})
            ctx.tracker.tag(run_id, {"optuna.trial_number": number, "optuna.trial_numbers": ",".join(map(str, numbers)),
                                     "optuna.state": outcome.label, "optuna.study": self.study_name})
        except Exception as e:  # noqa: BLE001 - the study is safe in its storage
            log.error("could not tag MLflow run %s: %s", run_id, _first_line(e))

    # ---- end of sweep ----
    def _finish(self, study: Any, ctx: Any, directions: List[str], ran: int) -> None:
        trials = study.get_trials(deepcopy=False)
        objectives = [self.objective] + ([ACCURACY_OBJECTIVE] if self.multi_objective else [])
        best = best_trial(trials, directions[0])
        front = pareto_front(trials, directions) if self.multi_objective else []
        self._summary = summary_lines(trials, best, front, self.study_name, self.objective, ran)
        files = [ctx.sweep_dir / "optuna_trials.csv"]
        study_table(trials, objectives).to_csv(files[0], index=False)
        try:
            files.append(plot_history(trials, self.objective, directions[0], ctx.sweep_dir / "optuna_history.png"))
        except Exception as e:  # noqa: BLE001 - a plot is not worth failing the sweep
            log.error("could not plot the optimisation history: %s", _first_line(e))
        imps, why_not = importances(study)
        if imps:
            (ctx.sweep_dir / "optuna_importance.json").write_text(json.dumps(imps, indent=1))
            files.append(ctx.sweep_dir / "optuna_importance.json")
            self._summary.append("optuna importance: " + ", ".join(f"{k}={v:.2f}" for k, v in imps.items()))
        else:
            log.info("optuna: no parameter importances: %s", why_not)
        self._summary.append(f"optuna trials: {files[0]}; watch the study with: "
                             f"optuna-dashboard {masked(storage_identity(self.storage_url))}")
        if ctx.tracker is None or not ctx.parent_run_id:
            return
        try:
            self._log_parent(ctx, best, front, imps, files, len(trials))
        except Exception as e:  # noqa: BLE001
            log.error("could not log the study to MLflow: %s", _first_line(e))

    def _log_parent(self, ctx: Any, best: Optional[Any], front: Sequence[Any], imps: Dict[str, float],
                    files: List[Path], n_trials: int) -> None:
        tracker, parent = ctx.tracker, ctx.parent_run_id
        metrics = {f"optuna.importance.{k}": v for k, v in imps.items()}
        metrics["optuna.n_trials"] = float(n_trials)
        parent_tags: Dict[str, Any] = {}
        previous = tracker.run_tags(parent).get("optuna.best_run_id")
        best_run = best.user_attrs.get("mlflow_run_id") if best is not None else None
        if previous and previous != best_run:
            tracker.tag(previous, {"optuna.best": "false"})
        if best is not None:
            metrics["optuna.best_value"] = best.values[0]
            parent_tags.update({"optuna.best_trial": best.number, "optuna.best_params": _params_text(best.params)})
            if best_run:
                tracker.tag(best_run, {"optuna.best": "true"})
                parent_tags["optuna.best_run_id"] = best_run
        for t in front:
            if t.user_attrs.get("mlflow_run_id"):
                tracker.tag(t.user_attrs["mlflow_run_id"], {"optuna.pareto_front": "true"})
        if parent_tags:
            tracker.tag(parent, parent_tags)
        tracker.log_extras(parent, metrics=metrics, files=files)


def _select(cfg: Any, key: str, default: Any) -> Any:
    from omegaconf import OmegaConf

    if cfg is None:
        return default
    value = OmegaConf.select(cfg, key, default=default)
    return default if value is None else value
