"""Stopping hopeless trials early: a pruner on the measurement steps (the timed repeats).

After each repeat a trial reports that repeat's throughput (``trial.report(value, step)``, through
``trtsweep.steps``).  :class:`ConfidenceBoundPruner` stops the trial when even its *optimistic* bound
is below the *pessimistic* bound of the best feasible trial so far:

- optimistic bound of the running trial: the upper end of the 95% Student-t interval of its repeats
  (from 2 repeats on), and never less than its mean × (1 + ``margin``) — one repeat has no spread of
  its own, and throughput drifts between trials on a shared machine, so a trial is pruned only when it
  is clearly slower, not when it is merely a little slower;
- pessimistic bound of the best: the lower end of its throughput CI (``throughput_ci_low``).

None of Optuna's pruners compares confidence bounds (``ThresholdPruner`` takes a fixed number,
``MedianPruner`` and friends compare trials step by step, which suits learning curves, not repeats of
one steady measurement), hence this class.  Conversion and calibration come before the first step, so
they are never pruned.  Optuna's best trial is constraint-aware, so the bar is always a feasible trial.
"""

import math
from typing import List, Optional

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial

from trtsweep.measure import mean_ci

CI_LOW_ATTR = "throughput_ci_low"


class ConfidenceBoundPruner(BasePruner):
    def __init__(self, margin: float = 0.2, min_steps: int = 1):
        if margin < 0 or min_steps < 1:
            raise ValueError(f"margin={margin} must be ≥ 0 and min_steps={min_steps} ≥ 1")
        self.margin, self.min_steps = margin, min_steps

    def prune(self, study: "optuna.study.Study", trial: FrozenTrial) -> bool:
        return self.explain(study, trial) is not None

    def explain(self, study: "optuna.study.Study", trial: FrozenTrial) -> Optional[str]:
        """The one-line reason to prune ``trial`` now, or None to go on measuring."""
        steps = [trial.intermediate_values[k] for k in sorted(trial.intermediate_values)]
        if len(steps) < self.min_steps or not all(math.isfinite(v) for v in steps):
            return None
        best = incumbent(study)
        if best is None or best.number == trial.number:
            return None
        bar = float(best.user_attrs.get(CI_LOW_ATTR, best.values[0]))
        high = optimistic_bound(steps, self.margin)
        if high >= bar:
            return None
        return (f"pruned after {len(steps)} measurement step(s): {sum(steps) / len(steps):.1f} items/s so far, "
                f"at best {high:.1f} < {bar:.1f} items/s, the 95% CI low of the best feasible trial #{best.number}")


def optimistic_bound(steps: List[float], margin: float) -> float:
    """The highest throughput the running trial plausibly has, given its repeats so far."""
    mean = sum(steps) / len(steps)
    high = mean * (1.0 + margin)
    if len(steps) >= 2:
        high = max(high, mean_ci(steps)[1])
    return high


def incumbent(study: "optuna.study.Study") -> Optional[FrozenTrial]:
    """The best feasible completed trial (Optuna's own, constraint-aware ``best_trial``), or None."""
    if len(study.directions) != 1 or study.direction != optuna.study.StudyDirection.MAXIMIZE:
        return None
    try:
        return study.best_trial
    except ValueError:  # no completed feasible trial yet
        return None
