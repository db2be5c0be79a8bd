"""A trial's outcome: what a job's result (``trtsweep.results.JobResult``) tells Optuna.

``ok`` → COMPLETE with the objective; ``accuracy_violation`` and ``infeasible`` → COMPLETE but
infeasible (a constraint > 0, so Optuna's ``study.best_trial`` / ``best_trials`` never pick it and
TPE / NSGA-II steer away); ``skipped`` (unsupported here) and ``pruned`` (stopped after a
measurement step, with its partial figures) → PRUNED; ``failed`` → FAIL.

The constraints are those of ``trtsweep.constraints``: ``accuracy_drop`` (against
``fidelity.max_accuracy_drop``) and one per bound set in ``constraints.*``, by name, each value − bound.
A bound whose metric the trial did not report (``gpu_memory_mb`` on a CPU engine) is recorded as 0
(met): every trial of a study records the same names, as Optuna 4's tuples need.
"""

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from optuna.study import Study
from optuna.trial import FrozenTrial, Trial, TrialState

from trtsweep.constraints import ACCURACY, NAMES, ConstraintsConfig, violations
from trtsweep.results import MEASURED, JobResult, TrialStatus

# objective metric -> direction (multi_objective adds accuracy_drop, minimised)
OBJECTIVES: Dict[str, str] = {
    "throughput_ips": "maximize",
    "latency_p50_ms": "minimize",
    "latency_p90_ms": "minimize",
    "latency_p99_ms": "minimize",
    "latency_mean_ms": "minimize",
}
ACCURACY_OBJECTIVE = ACCURACY
# user attributes: the constraint values (value - bound; > 0 is infeasible), in the order of their names
CONSTRAINT_ATTR = "constraint"
CONSTRAINT_NAMES_ATTR = "constraint_names"
METRIC_ATTRS = ("throughput_ips", "throughput_ci_low", "throughput_ci_high", "latency_p50_ms", "latency_p99_ms",
                "accuracy", "accuracy_drop", "top1_agreement", "timed_repeats")
# where Optuna 4 keeps a trial's constraints (what its samplers' ``constraints_func`` writes, and what its
# ``best_trial`` / ``best_trials`` and plots read); Optuna ≥ 5 has ``Trial.set_constraint`` for it
_OPTUNA4_CONSTRAINTS_KEY = "constraints"


@dataclass
class Outcome:
    state: str  # COMPLETE | PRUNED | FAIL (Optuna TrialState names)
    values: Optional[List[float]]
    feasible: bool
    attrs: Dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "INFEASIBLE" if self.state == "COMPLETE" and not self.feasible else self.state


def trial_outcome(result: Optional[JobResult], error: Optional[str], objective: str, multi_objective: bool,
                  max_accuracy_drop: float, constraints: Union[Mapping[str, Any], ConstraintsConfig, None] = None
                  ) -> Outcome:
    """Map a job's result (``trtsweep.app.run_job``) to what Optuna is told.  ``constraints``: the job's
    ``constraints`` config node (the bounds its runner judged it with); None: accuracy only."""
    if result is None:
        return Outcome("FAIL", None, False, {"status": str(TrialStatus.FAILED), "reason": error or "the job failed"})
    status, metrics = result.status, result.metrics
    attrs: Dict[str, Any] = {"status": str(status), "trial_key": result.trial_key or "",
                             "mlflow_run_id": result.mlflow_run_id or "", "cached": bool(result.cached)}
    attrs.update({k: float(metrics[k]) for k in METRIC_ATTRS if _finite(metrics.get(k))})
    if result.reason:
        attrs["reason"] = str(result.reason)
    if status in (TrialStatus.SKIPPED, TrialStatus.PRUNED):  # unsupported here, or stopped after a step
        return Outcome("PRUNED", None, False, attrs)
    if status not in MEASURED:
        attrs.setdefault("reason", f"status {status}")
        return Outcome("FAIL", None, False, attrs)
    wanted = objective_names(objective, multi_objective)
    missing = [m for m in wanted if not _finite(metrics.get(m))]
    if missing:
        attrs["reason"] = f"the trial reported no finite {missing[0]}"
        return Outcome("FAIL", None, False, attrs)
    values = constraint_record(metrics, status, constraints, max_accuracy_drop)
    attrs[CONSTRAINT_NAMES_ATTR], attrs[CONSTRAINT_ATTR] = list(values), list(values.values())
    return Outcome("COMPLETE", [float(metrics[m]) for m in wanted], all(v <= 0 for v in values.values()), attrs)


def constraint_record(metrics: Mapping[str, Any], status: TrialStatus,
                      constraints: Union[Mapping[str, Any], ConstraintsConfig, None], max_accuracy_drop: float
                      ) -> Dict[str, float]:
    """Name → value − bound for ``accuracy_drop`` and every bound that is set (0 where the trial did not
    report the metric), in ``trtsweep.constraints.NAMES`` order.  The runner's verdict wins over float
    rounding: a violation it found is > 0 here."""
    bounds = ConstraintsConfig.of(constraints)
    names = [ACCURACY, *bounds.bounds()]
    found = violations(metrics, bounds, max_accuracy_drop)
    values = {n: found.get(n, 0.0) for n in NAMES if n in names}
    if status == TrialStatus.ACCURACY_VIOLATION:
        values[ACCURACY] = max(values[ACCURACY], 1e-12)
    elif status == TrialStatus.INFEASIBLE and all(v <= 0 for n, v in values.items() if n != ACCURACY):
        other = next((n for n in values if n != ACCURACY), "infeasible")  # "infeasible": no bound was passed
        values[other] = max(values.get(other, 0.0), 1e-12)
    return values


def objective_names(objective: str, multi_objective: bool) -> List[str]:
    """The study's metric names: the objective, and accuracy_drop in a multi-objective study."""
    return [objective] + ([ACCURACY_OBJECTIVE] if multi_objective else [])


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def native_constraints() -> bool:
    """Optuna ≥ 5 takes constraints from ``Trial.set_constraint`` (``constraints_func`` is deprecated)."""
    return hasattr(Trial, "set_constraint")


def trial_constraints(trial: FrozenTrial) -> Sequence[float]:
    """Optuna 4's ``constraints_func`` (TPE, NSGA-II): ≤ 0 is feasible; the values in name order."""
    return trial.user_attrs.get(CONSTRAINT_ATTR, [0.0])


def constraint_values(trial: FrozenTrial) -> List[float]:
    """The constraints Optuna holds for a trial (as its best_trial, best_trials and plots read them)."""
    if hasattr(trial, "constraints"):  # Optuna ≥ 5
        return list(trial.constraints.values())
    return list(trial.system_attrs.get(_OPTUNA4_CONSTRAINTS_KEY) or ())


def is_infeasible(trial: FrozenTrial) -> bool:
    """A completed trial that violates a constraint (for counts and tables; selection is Optuna's)."""
    return trial.state == TrialState.COMPLETE and any(c > 0 for c in constraint_values(trial))


def constraint_kwargs(outcome: Outcome) -> Dict[str, Any]:
    """``optuna.trial.create_trial`` arguments that carry the outcome's constraints (a trial added, not run)."""
    if CONSTRAINT_ATTR not in outcome.attrs:
        return {}
    values = [float(v) for v in outcome.attrs[CONSTRAINT_ATTR]]
    names = outcome.attrs.get(CONSTRAINT_NAMES_ATTR) or [ACCURACY][:len(values)]
    if native_constraints():
        return {"constraints": dict(zip(names, values, strict=True))}
    return {"system_attrs": {_OPTUNA4_CONSTRAINTS_KEY: tuple(values)}}


def tell(study: Study, trial: Trial, outcome: Outcome) -> None:
    """Record the outcome's attributes and constraints on the trial, then finish it with its state."""
    for k, v in outcome.attrs.items():
        trial.set_user_attr(k, v)
    if CONSTRAINT_ATTR in outcome.attrs:
        values = [float(v) for v in outcome.attrs[CONSTRAINT_ATTR]]
        names = outcome.attrs.get(CONSTRAINT_NAMES_ATTR) or [ACCURACY][:len(values)]
        if native_constraints():
            for name, value in zip(names, values, strict=True):
                trial.set_constraint(name, value)
        else:  # Optuna 4: what its constraints_func samplers record, so every sampler's best_trial sees it
            study._storage.set_trial_system_attr(trial._trial_id, _OPTUNA4_CONSTRAINTS_KEY, tuple(values))
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
