"""Feasibility bounds besides accuracy: ``constraints.max_<metric>`` makes a measured trial infeasible.

A bound judges a *measurement*, it never changes one: the bounds are not part of a result's identity
(``TrialSpec.trial_identity``), and a result served from the cache is judged again under the bounds
of the current run.  The same two functions judge everywhere — the runner (fresh and cached results),
the tables (``trtsweep report`` / ``compare``), MLflow (``violation_<name>`` metrics) and the Optuna
sweeper (one ``set_constraint`` per name) — so a configuration that violates a bound is never the best:

* :func:`violations`: name → value − bound (> 0 is violated) for every bound that is set and whose
  metric the trial reported, ``accuracy_drop`` (against ``fidelity.max_accuracy_drop``) first;
* :func:`verdict`: the status and a one-line reason: ``accuracy_violation`` wins, any other violated
  bound → ``infeasible``, every violation listed.

A bound whose metric a trial does not report does not judge it: ``gpu_memory_mb`` comes only from GPU
engines (TF-TRT), so ``constraints.max_gpu_memory_mb`` never fails a CPU trial (the plan says so once,
:func:`plan_notes`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from trtsweep.results import TrialStatus
from trtsweep.validation import positive

if TYPE_CHECKING:
    from trtsweep.config import TrialSpec

ACCURACY = "accuracy_drop"
#: constraint name (= the metric it bounds) → its setting in ``constraints``; the names are stable
#: (Optuna records them with ``Trial.set_constraint``, MLflow as ``violation_<name>``)
BOUNDS: dict[str, str] = {
    "latency_p99_ms": "max_latency_p99_ms",
    "peak_rss_mb": "max_peak_rss_mb",
    "model_size_mb": "max_model_size_mb",
    "gpu_memory_mb": "max_gpu_memory_mb",
}
#: every constraint name, in the order they are recorded and listed
NAMES: tuple[str, ...] = (ACCURACY, *BOUNDS)


@dataclass
class ConstraintsConfig:
    """``constraints.*``: upper bounds on measured metrics; null = no bound."""

    max_latency_p99_ms: float | None = None
    max_peak_rss_mb: float | None = None
    max_model_size_mb: float | None = None
    max_gpu_memory_mb: float | None = None  # GPU engines only (TF-TRT reports gpu_memory_mb)

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                positive(f"constraints.{f.name}", value, f"constraints.{f.name}={_example(f.name)} "
                                                         "(or null for no bound)")

    def bounds(self) -> dict[str, float]:
        """Constraint name → bound, for the bounds that are set."""
        return {name: float(getattr(self, key)) for name, key in BOUNDS.items() if getattr(self, key) is not None}

    @staticmethod
    def of(value: ConstraintsConfig | Mapping[str, Any] | None) -> ConstraintsConfig:
        """The bounds from a config node (a mapping of ``max_*`` settings, already validated), or none."""
        if isinstance(value, ConstraintsConfig):
            return value
        known = {f.name for f in fields(ConstraintsConfig)}
        return ConstraintsConfig(**{k: v for k, v in dict(value or {}).items() if k in known})


def _example(key: str) -> str:
    return {"max_latency_p99_ms": "10", "max_peak_rss_mb": "4000", "max_model_size_mb": "100",
            "max_gpu_memory_mb": "8000"}[key]


def setting(name: str) -> str:
    """The config key that bounds constraint ``name`` (``latency_p99_ms`` → ``constraints.max_latency_p99_ms``)."""
    return "fidelity.max_accuracy_drop" if name == ACCURACY else f"constraints.{BOUNDS[name]}"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def violations(metrics: Mapping[str, Any], constraints: ConstraintsConfig | Mapping[str, Any] | None,
               max_accuracy_drop: float | None) -> dict[str, float]:
    """Name → value − bound (> 0 is violated) for every bound that is set and whose metric is present,
    in :data:`NAMES` order; ``accuracy_drop`` against ``max_accuracy_drop`` (None: not judged here)."""
    bounds = ConstraintsConfig.of(constraints).bounds()
    if max_accuracy_drop is not None:
        bounds = {ACCURACY: float(max_accuracy_drop), **bounds}
    return {name: float(metrics[name]) - bounds[name] for name in NAMES
            if name in bounds and _finite(metrics.get(name))}


def describe(name: str, value: float, bound: float) -> str:
    """``latency_p99_ms=12.3 > constraints.max_latency_p99_ms=10 (+23%)``; accuracy as it always was."""
    if name == ACCURACY:
        return f"accuracy_drop={value:.4f} > fidelity.max_accuracy_drop={bound:g}"
    return f"{name}={value:.4g} > {setting(name)}={bound:g} ({value / bound - 1:+.0%})"


def verdict(metrics: Mapping[str, Any], constraints: ConstraintsConfig | Mapping[str, Any] | None,
            max_accuracy_drop: float | None) -> tuple[TrialStatus, str | None]:
    """Status and one-line reason of a measured result under these bounds: ``accuracy_violation`` when
    ``accuracy_drop`` is over its bound (it wins), else ``infeasible`` when another bound is violated,
    else ``ok``.  The reason lists every violation."""
    over = {k: v for k, v in violations(metrics, constraints, max_accuracy_drop).items() if v > 0}
    if not over:
        return TrialStatus.OK, None
    reason = "; ".join(describe(k, float(metrics[k]), float(metrics[k]) - v) for k, v in over.items())
    return (TrialStatus.ACCURACY_VIOLATION if ACCURACY in over else TrialStatus.INFEASIBLE), reason


def violated(metrics: Mapping[str, Any], constraints: ConstraintsConfig | Mapping[str, Any] | None,
             max_accuracy_drop: float | None) -> list[str]:
    """The names of the violated constraints (for a table column)."""
    return [k for k, v in violations(metrics, constraints, max_accuracy_drop).items() if v > 0]


def plan_notes(specs: Iterable[TrialSpec]) -> list[str]:
    """What the plan says once: ``constraints.max_gpu_memory_mb`` is set for trials of CPU engines (those
    that do not report ``gpu_memory_mb``, see ``Engine.reports_gpu_memory``): it never judges them."""
    from trtsweep.engines.base import get_engine

    cpu: dict[float, set[str]] = {}
    for s in specs:
        bound = s.constraints.max_gpu_memory_mb
        if bound is not None and not get_engine(s.engine).reports_gpu_memory:
            cpu.setdefault(bound, set()).add(s.engine)
    return [f"constraints.max_gpu_memory_mb={bound:g} applies to GPU engines only (tftrt): "
            f"{', '.join(sorted(engines))} trials are never judged by it" for bound, engines in cpu.items()]


__all__ = ["ACCURACY", "BOUNDS", "NAMES", "ConstraintsConfig", "describe", "plan_notes", "setting", "verdict",
           "violated", "violations"]
