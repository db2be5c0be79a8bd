"""The search's trial loop, independent of Hydra (a benchmark replays recorded grids through it).

ask → already known? → evaluate (with measurement steps a pruner may stop) → tell, until a stop rule:

- **No wasted trials.**  A configuration this study already finished (any worker) is told its earlier
  outcome again without running anything; one ``known`` elsewhere (another study on the storage, the
  result cache) likewise.  Neither counts against ``n_trials``, which counts fresh measurements.  On a
  finite space a repeated proposal is replaced by the unmeasured configuration nearest to it, and the
  search ends when every configuration was measured ("space exhausted").
- **Cheap first.**  When a trial becomes the best, its unmeasured neighbours that reuse its conversion
  (a runtime-only change: threads, batch size, ...) are enqueued, so they come before new conversions.
- **Stagnation.**  Optionally stop when the best feasible value has not improved beyond its own
  confidence interval for K fresh trials or T seconds.
"""

import logging
import random
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from ._outcome import Outcome, tell
from ._prune import ConfidenceBoundPruner
from ._space import SearchParam, config_key, distance, enumerate_space, suggest

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
KNOWN = (TrialState.COMPLETE, TrialState.PRUNED)  # outcomes a repeat is told instead of measuring again


@dataclass
class SearchSettings:
    n_trials: int  # fresh measurements this worker makes (known results are free)
    timeout: Optional[float] = None  # seconds; no new trial is asked after it
    stagnation_trials: Optional[int] = None  # stop after this many fresh trials without a real improvement
    stagnation_s: Optional[float] = None  # ... or this many seconds
    max_neighbours: int = 4  # cheap neighbours of a new best enqueued
    max_free_asks: int = 200  # consecutive known proposals on an infinite space before giving up on the sampler
    seed: Optional[int] = None


class Steps:
    """A trial's measurement steps (``trtsweep.steps`` observer): report each, return a reason to stop."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, pruner: Optional[ConfidenceBoundPruner]):
        self.study, self.trial, self.pruner = study, trial, pruner
        self.reported = 0

    def report(self, step: int, value: float) -> Optional[str]:
        if self.pruner is None:  # no pruning (e.g. a latency objective, several objectives): nothing to report
            return None
        self.trial.report(value, step)
        self.reported = step
        if not self.trial.should_prune():
            return None
        frozen = self.study._storage.get_trial(self.trial._trial_id)
        return self.pruner.explain(self.study, frozen) or "pruned by the search"

    __call__ = report


Evaluate = Callable[[optuna.Trial, Dict[str, Any], Steps], Outcome]
Known = Callable[[Dict[str, Any]], Optional[Outcome]]


def outcome_of(frozen: FrozenTrial, note: str) -> Outcome:
    """The outcome an earlier trial was told, to tell a repeat of it (with ``note`` saying so)."""
    attrs = {k: v for k, v in frozen.user_attrs.items() if k not in ("worker", "overrides")}
    attrs["known_from"] = note
    state = frozen.state.name
    if state == "COMPLETE":
        feasible = all(c <= 0 for c in _constraints(frozen))
        return Outcome("COMPLETE", list(frozen.values), feasible, attrs)
    return Outcome(state if state in ("PRUNED", "FAIL") else "FAIL", None, False, attrs)


def _constraints(frozen: FrozenTrial) -> List[float]:
    from ._outcome import constraint_values

    return constraint_values(frozen)


class Search:
    def __init__(self, study: optuna.Study, space: Sequence[SearchParam], settings: SearchSettings,
                 evaluate: Evaluate, *, known: Optional[Known] = None, pruner: Optional[ConfidenceBoundPruner] = None,
                 cheap: Optional[Callable[[Dict[str, Any], Dict[str, Any]], bool]] = None,
                 before_ask: Optional[Callable[[], None]] = None, clock: Callable[[], float] = time.monotonic,
                 on_told: Optional[Callable[[optuna.Trial, Dict[str, Any], Outcome, bool], None]] = None):
        self.study, self.space, self.settings = study, list(space), settings
        self.evaluate, self.known, self.pruner, self.cheap = evaluate, known, pruner, cheap
        self.before_ask, self.clock, self.on_told = before_ask, clock, on_told
        # GridSampler enumerates the space itself and cannot take enqueued or added trials (no grid_id)
        self.queueing = not isinstance(study.sampler, optuna.samplers.GridSampler)
        if pruner is not None:  # Trial.should_prune() asks the study's pruner
            study.pruner = pruner
        self.configs = enumerate_space(self.space)  # None: an infinite (or huge) space
        self.rng = random.Random(settings.seed)
        self.fresh = 0  # trials measured here
        self.free = 0  # proposals answered from what was known
        self.pruned = 0
        self.stop_reason = ""
        self._expanded: set = set()  # configurations whose cheap neighbours were queued

    # ---- warm start ----
    def warm_start(self, enqueue: Sequence[Dict[str, Any]], completed: Sequence[FrozenTrial]) -> int:
        """Enqueue ``enqueue`` (configurations to measure first) and add ``completed`` (measured earlier)
        unless the study has them already; returns the number of trials added."""
        if not self.queueing:
            return 0
        have = self._finished()
        added = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            for t in completed:
                if config_key(t.params) not in have:
                    self.study.add_trial(t)
                    have[config_key(t.params)] = t
                    added += 1
            for params in enqueue:
                if config_key(params) not in have:
                    self.study.enqueue_trial(params, skip_if_exists=True)
        return added

    # ---- the loop ----
    def run(self) -> str:
        s = self.settings
        started = last_gain = self.clock()
        fresh_at_gain = 0
        free_streak = 0
        best_bar = self._bar()
        while True:
            if self.fresh >= s.n_trials:
                return self._stop(f"n_trials={s.n_trials} measured")
            now = self.clock()
            if s.timeout is not None and now - started > s.timeout:
                return self._stop(f"timeout of {s.timeout:g} s reached")
            if s.stagnation_trials is not None and self.fresh - fresh_at_gain >= s.stagnation_trials:
                return self._stop(f"stagnation: no improvement beyond noise in the last {s.stagnation_trials} "
                                  "measured trial(s)")
            if s.stagnation_s is not None and now - last_gain > s.stagnation_s:
                return self._stop(f"stagnation: no improvement beyond noise for {s.stagnation_s:g} s")
            finished = self._finished()
            tried = set(finished) | self._failed()
            if self.configs is not None and all(config_key(c) in tried for c in self.configs):
                return self._stop(f"space exhausted: all {len(self.configs)} configuration(s) measured")
            if self.before_ask is not None:
                self.before_ask()
            with warnings.catch_warnings():  # "Heartbeat ... supposed to be used with Study.optimize"
                warnings.simplefilter("ignore", UserWarning)
                trial = self.study.ask()
            try:
                values = suggest(trial, self.space)
            except ValueError as e:  # e.g. a retried trial from an older, different space
                self._tell(trial, {}, Outcome("FAIL", None, False, {"reason": f"cannot reuse this trial's "
                                                                    f"parameters: {e}"}), free=True)
                continue
            key = config_key(values)
            prior = finished.get(key) or self._running_elsewhere(key, trial.number)
            outcome = None
            if prior is not None:
                outcome = (outcome_of(prior, f"trial #{prior.number}") if prior.state in FINISHED else
                           Outcome("FAIL", None, False, {"reason": f"trial #{prior.number} of another worker is "
                                                         "measuring this configuration"}))
            elif self.known is not None:
                outcome = self.known(values)
            if outcome is not None:  # nothing to measure: tell what is known, free of charge
                self._tell(trial, values, outcome, free=True)
                free_streak += 1
                if self.configs is not None and self.queueing:
                    self._enqueue_nearest(values)
                elif free_streak >= s.max_free_asks:
                    return self._stop(f"the sampler proposed only measured configurations {free_streak} times "
                                      "in a row")
                continue
            free_streak = 0
            outcome = self.evaluate(trial, values, Steps(self.study, trial, self.pruner))
            # served from the result cache, or skipped (unsupported here): nothing was measured
            free = bool(outcome.attrs.get("cached")) or outcome.attrs.get("status") == "skipped"
            self._tell(trial, values, outcome, free=free)
            if outcome.state == "PRUNED" and outcome.attrs.get("status") == "pruned":
                self.pruned += 1
            bar = self._bar()
            if bar is not None and (best_bar is None or self._beats(bar, best_bar)):
                best_bar, last_gain, fresh_at_gain = bar, self.clock(), self.fresh
            self._enqueue_neighbours()

    # ---- helpers ----
    def _tell(self, trial: optuna.Trial, values: Dict[str, Any], outcome: Outcome, free: bool) -> None:
        tell(self.study, trial, outcome)
        if free:
            self.free += 1
        else:
            self.fresh += 1
        if self.on_told is not None:
            self.on_told(trial, values, outcome, free)

    def _stop(self, reason: str) -> str:
        self.stop_reason = reason
        return reason

    def _finished(self) -> Dict[str, FrozenTrial]:
        """Trials of the study (every worker's) with a known outcome, by configuration: complete, or pruned
        (skipped here, or stopped after a step); a complete one wins.  A failed configuration is not known:
        proposed again (or re-queued by the storage's retry of a dead trial), it runs again."""
        out: Dict[str, FrozenTrial] = {}
        for t in self.study.get_trials(deepcopy=False, states=KNOWN):
            if not t.params and t.state != TrialState.COMPLETE:
                continue
            k = config_key(t.params)
            if k not in out or (t.state == TrialState.COMPLETE and out[k].state != TrialState.COMPLETE):
                out[k] = t
        return out

    def _failed(self) -> set:
        return {config_key(t.params) for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                if t.params}

    def _running_elsewhere(self, key: str, number: int) -> Optional[FrozenTrial]:
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number != number and t.params and config_key(t.params) == key:
                return t
        return None

    def _queued(self) -> set:
        return {config_key(t.params) for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}

    def _enqueue_nearest(self, values: Dict[str, Any]) -> None:
        """The sampler proposed a measured configuration: queue the unmeasured one nearest to its proposal
        (reusing a conversion where possible), so a finite search always makes progress."""
        tried, queued = set(self._finished()) | self._failed(), self._queued()
        todo = [c for c in self.configs or () if config_key(c) not in tried]
        if not todo or any(config_key(c) in queued for c in todo):
            return
        self.rng.shuffle(todo)
        pick = min(todo, key=lambda c: (distance(c, values), not (self.cheap and self.cheap(values, c))))
        self.study.enqueue_trial(pick, skip_if_exists=True)

    def _enqueue_neighbours(self) -> None:
        """A new best of an engine: queue its unmeasured neighbours that reuse its conversion (at most
        ``max_neighbours`` each).  Per engine, not only the overall best: an engine whose default ran at a
        poor thread count or batch size is one cheap step from its real figure."""
        if self.cheap is None or not self.queueing or self.configs is None:
            return
        finished, queued = self._finished(), self._queued()
        for best in self._engine_bests(finished.values()):
            key = config_key(best.params)
            if key in self._expanded:
                continue
            self._expanded.add(key)
            candidates = [c for c in self.configs if distance(c, best.params) == 1 and config_key(c) not in finished
                          and config_key(c) not in queued and self.cheap(best.params, c)]
            self.rng.shuffle(candidates)
            for c in candidates[: self.settings.max_neighbours]:
                self.study.enqueue_trial(c, skip_if_exists=True)
                queued.add(config_key(c))

    def _engine_bests(self, trials: Any) -> List[FrozenTrial]:
        """The best feasible complete trial of each engine (single objective)."""
        if len(self.study.directions) != 1:
            return []
        sign = 1 if self.study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
        best: Dict[Any, FrozenTrial] = {}
        for t in trials:
            if t.state != TrialState.COMPLETE or not t.values or any(c > 0 for c in _constraints(t)):
                continue
            engine = t.params.get("engine")
            if engine not in best or sign * t.values[0] > sign * best[engine].values[0]:
                best[engine] = t
        return list(best.values())

    def _bar(self) -> Optional[tuple]:
        """(best value, the bound a newcomer must pass to count as an improvement beyond noise)."""
        try:
            best = self.study.best_trial if len(self.study.directions) == 1 else None
        except ValueError:
            return None
        if best is None:
            return None
        value = float(best.values[0])
        maximize = self.study.direction == optuna.study.StudyDirection.MAXIMIZE
        bound = float(best.user_attrs.get("throughput_ci_high", value)) if maximize else value
        return (value, bound, maximize)

    @staticmethod
    def _beats(new: tuple, old: tuple) -> bool:
        value, _, maximize = new
        _, old_bound, _ = old
        return value > old_bound if maximize else value < old_bound
