"""The regression rule, shared by ``trtsweep nightly`` and ``trtsweep compare``.

A configuration regressed against its reference — the median of its recent nightly runs, or a single
run (a pinned baseline, the baseline file of ``compare``) — when

* its throughput fell, or its p99 latency rose, by more than **both** the floor (default 5%) and the
  noise.  The noise is ``sigmas`` (default 3) × √(s_ref² + cv_ref² + cv_now²): s_ref the spread of the
  reference runs' own values (1.4826 × MAD / median, a robust standard deviation; none below 2 runs),
  cv the trials' repeat spread (``latency_cv``: tonight's, and the median of the reference runs').
  p99 is a tail that one trial's repeat spread says little about, so it is judged only against at least
  ``min_tail_runs`` (3) reference runs, whose spread shows how much it moves from run to run;
* or its accuracy dropped past the constraint: ``accuracy_drop`` is above ``fidelity.max_accuracy_drop``
  now, and the reference's median was within it.

With a quiet machine the spread is small and the floor decides (a 30% slowdown is far past 5%); on a
noisy one the noise widens the allowance instead of raising false alarms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any

THROUGHPUT, P99, ACCURACY = "throughput_ips", "latency_p99_ms", "accuracy_drop"
#: metric → True when a higher value is better
DIRECTION = {THROUGHPUT: True, P99: False}
_LABEL = {THROUGHPUT: ("throughput", "items/s", ".1f"), P99: ("p99 latency", "ms", ".3f")}


@dataclass(frozen=True)
class Rule:
    floor: float = 0.05  # a change smaller than this never counts (fraction)
    sigmas: float = 3.0  # how many combined standard deviations of noise a change must exceed
    min_tail_runs: int = 3  # p99 latency is judged only against at least this many reference runs

    def validate(self) -> Rule:
        if not 0 <= self.floor < 1:
            raise ValueError(f"floor={self.floor:g} must be in [0, 1); fix: --floor 0.05 (5%)")
        if self.sigmas < 0:
            raise ValueError(f"sigmas={self.sigmas:g} must be ≥ 0; fix: --sigmas 3 (0: the floor alone decides)")
        if self.min_tail_runs < 1:
            raise ValueError(f"min_tail_runs={self.min_tail_runs} must be ≥ 1; fix: 3")
        return self


@dataclass(frozen=True)
class Measurement:
    """One run of a configuration: what the rule looks at."""

    status: str = "ok"
    throughput_ips: float | None = None
    latency_p99_ms: float | None = None
    latency_cv: float | None = None
    accuracy_drop: float | None = None

    @staticmethod
    def of(metrics: Mapping[str, Any], status: str = "ok") -> Measurement:
        """From a run's metrics (missing, NaN or infinite values are left out)."""
        def num(k: str) -> float | None:
            v = metrics.get(k)
            try:
                v = float(v)
            except (TypeError, ValueError):
                return None
            return v if math.isfinite(v) else None

        return Measurement(str(status), num(THROUGHPUT), num(P99), num("latency_cv"), num(ACCURACY))


@dataclass(frozen=True)
class Change:
    """A metric now against its reference."""

    metric: str
    reference: float  # the reference runs' median
    value: float  # now
    change: float  # how much worse: a fraction for speed (+0.30 = 30% slower), absolute for accuracy_drop
    limit: float  # how much worse it may get: max(floor, noise) for speed, the bound for accuracy_drop
    noise: float  # sigmas × the combined relative spread (speed only)
    floor: float  # the rule's floor (speed only)
    runs: int  # reference runs
    regressed: bool

    def text(self) -> str:
        if self.metric == ACCURACY:
            return (f"accuracy_drop {self.reference:.4f} → {self.value:.4f}"
                    + (f", past fidelity.max_accuracy_drop={self.limit:g}" if self.regressed else ""))
        name, unit, fmt = _LABEL[self.metric]
        sign = -1 if DIRECTION[self.metric] else 1
        return (f"{name} {self.reference:{fmt}} → {self.value:{fmt}} {unit} ({sign * self.change:+.1%}; allowed "
                f"{sign * self.limit:+.1%}: noise {self.noise:.1%}, floor {self.floor:.0%})")


def spread(values: Sequence[float]) -> float:
    """Robust relative spread of ``values``: 1.4826 × median absolute deviation / median (0 below 2)."""
    if len(values) < 2:
        return 0.0
    mid = median(values)
    if mid <= 0:
        return 0.0
    return 1.4826 * median(abs(v - mid) for v in values) / mid


def speed_change(metric: str, now: Measurement, reference: Sequence[Measurement], rule: Rule) -> Change | None:
    """``throughput_ips`` or ``latency_p99_ms`` now against the reference's median (None: nothing to compare)."""
    value = getattr(now, metric)
    values = [v for v in (getattr(r, metric) for r in reference) if v is not None and v > 0]
    if value is None or not values:
        return None
    ref = median(values)
    worse = 1 - value / ref if DIRECTION[metric] else value / ref - 1
    cvs = [r.latency_cv for r in reference if r.latency_cv is not None]
    noise = rule.sigmas * math.sqrt(spread(values) ** 2 + (median(cvs) if cvs else 0.0) ** 2
                                    + (now.latency_cv or 0.0) ** 2)
    limit = max(rule.floor, noise)
    return Change(metric, ref, value, worse, limit, noise, rule.floor, len(values), worse > limit)


def accuracy_change(now: Measurement, reference: Sequence[Measurement], bound: float | None) -> Change | None:
    """``accuracy_drop`` now against the reference's median: regressed when it is past ``bound`` now and
    the median was within it (a configuration that always violated it has not regressed)."""
    drops = [r.accuracy_drop for r in reference if r.accuracy_drop is not None]
    if bound is None or now.accuracy_drop is None or not drops:
        return None
    ref = median(drops)
    return Change(ACCURACY, ref, now.accuracy_drop, now.accuracy_drop - ref, bound, 0.0, 0.0, len(drops),
                  now.accuracy_drop > bound >= ref)


def changes(now: Measurement, reference: Sequence[Measurement], rule: Rule,
            max_accuracy_drop: float | None = None) -> list[Change]:
    """Throughput, p99 latency (with ≥ ``rule.min_tail_runs`` reference runs) and accuracy, each that can
    be compared."""
    out = [speed_change(THROUGHPUT, now, reference, rule)]
    if len(reference) >= rule.min_tail_runs:
        out.append(speed_change(P99, now, reference, rule))
    out.append(accuracy_change(now, reference, max_accuracy_drop))
    return [c for c in out if c is not None]


__all__ = ["ACCURACY", "P99", "THROUGHPUT", "Change", "Measurement", "Rule", "accuracy_change", "changes",
           "speed_change", "spread"]
