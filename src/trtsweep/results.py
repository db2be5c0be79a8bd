"""What a trial yields: its :class:`TrialStatus`, the :class:`TrialResult` record (cached, logged to
MLflow, one row of results.csv) and the :class:`JobResult` a sweep job hands its sweeper.

The statuses are strings on the way out (JSON, CSV, MLflow tags): ``TrialStatus`` is a ``str`` enum, so
``TrialStatus.OK == "ok"`` and a record read back from disk compares equal to the enum.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class TrialStatus(str, Enum):
    OK = "ok"
    SKIPPED = "skipped"  # unsupported here (planned, never run), with the reason
    FAILED = "failed"  # crashed, hung, ran out of memory or raised, with the reason
    ACCURACY_VIOLATION = "accuracy_violation"  # measured, but accuracy_drop > fidelity.max_accuracy_drop
    INFEASIBLE = "infeasible"  # measured, but another constraint is violated
    PRUNED = "pruned"  # stopped by the search (Optuna) before it was measured

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


#: statuses of a complete measurement: served from the result cache (and judged again under the current
#: bounds, trtsweep.constraints), with metrics to rank and plot; only ``ok`` ones are ever "best"
MEASURED = (TrialStatus.OK, TrialStatus.ACCURACY_VIOLATION, TrialStatus.INFEASIBLE)


@dataclass
class TrialResult:
    trial_key: str
    status: TrialStatus
    spec: dict
    metrics: dict = field(default_factory=dict)
    reason: str | None = None
    report: dict = field(default_factory=dict)
    host: dict = field(default_factory=dict)
    artifact: str | None = None
    traceback: str | None = None
    started_at: float = 0.0
    ended_at: float = 0.0
    mlflow_run_ids: dict = field(default_factory=dict)  # parent run id -> child run id
    cached: bool = False  # served from the result cache (then ``started_at`` is when it was measured)
    unstable: bool = False  # repeat spread stayed above measure.max_cv after measure.max_repeats

    def __post_init__(self) -> None:
        self.status = TrialStatus(self.status)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> TrialResult:
        known = set(TrialResult.__dataclass_fields__)
        return TrialResult(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class JobResult:
    """What one job of a sweep (``trtsweep.app.run_job``) returns to its sweeper."""

    status: TrialStatus
    trial_key: str
    reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str = ""  # the trial's child run under this sweep's parent run ("" without MLflow)
    cached: bool = False  # served from the result cache, not measured by this job

    @staticmethod
    def of(result: TrialResult, parent_run_id: str | None) -> JobResult:
        return JobResult(result.status, result.trial_key, result.reason, dict(result.metrics),
                         result.mlflow_run_ids.get(parent_run_id or "", ""), result.cached)
