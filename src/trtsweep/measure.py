"""Latency measurement: warm-up, then repeats of at least N iterations and T seconds each.

Only ``run(prepared)`` is inside the timed loop: inputs are prepared before, the engine is fully
built before (``Engine.load``).  Per-iteration latencies of all repeats are pooled for the
percentiles; the spread *between* repeats (coefficient of variation of the repeat means) says
whether the result is stable.  After ``measure.repeats`` repeats, more are run (up to
``measure.max_repeats``) while that spread is above ``measure.max_cv``; a result still above it is
kept but marked ``unstable``.  Throughput is batch ÷ trimmed mean latency, with a 95% confidence
interval from the repeats' own throughputs (Student's t over the repeats).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from trtsweep.config import MeasureConfig


@dataclass
class Measurement:
    latencies_ms: np.ndarray  # every timed iteration, all repeats
    repeat_means_ms: list[float]
    batch_size: int
    trim: float
    max_cv: float = float("inf")
    repeat_trimmed_ms: list[float] | None = None  # trimmed mean of each repeat (for the CI)
    stopped: str | None = None  # the reason the measurement was stopped early (a search pruned it)
    step_end_s: list[float] | None = None  # seconds from the start of the warm-up to the end of each repeat

    @property
    def cv(self) -> float:
        return repeat_cv(self.repeat_means_ms)

    @property
    def unstable(self) -> bool:
        return self.cv > self.max_cv

    def metrics(self) -> dict[str, float]:
        lat = self.latencies_ms
        trimmed = trimmed_mean(lat, self.trim)
        throughput = float(self.batch_size / (trimmed / 1000.0)) if trimmed > 0 else float("inf")
        per_repeat = [self.batch_size / (m / 1000.0) for m in (self.repeat_trimmed_ms or self.repeat_means_ms) if m > 0]
        low, high = mean_ci(per_repeat)
        # the CI is centred on the repeats' mean; keep the point estimate inside it
        low, high = min(low, throughput), max(high, throughput)
        return {
            "latency_mean_ms": float(lat.mean()),
            "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p90_ms": float(np.percentile(lat, 90)),
            "latency_p99_ms": float(np.percentile(lat, 99)),
            "latency_std_ms": float(lat.std()),
            "latency_min_ms": float(lat.min()),
            "latency_cv": self.cv,
            "throughput_ips": throughput,
            "throughput_ci_low": low,
            "throughput_ci_high": high,
            "timed_iterations": float(len(lat)),
            "timed_repeats": float(len(self.repeat_means_ms)),
        }


def repeat_cv(means: list[float]) -> float:
    """Coefficient of variation of the repeat means (sample std, ddof=1); 0 for a single repeat."""
    m = np.asarray(means, dtype=np.float64)
    if len(m) < 2 or m.mean() <= 0:
        return 0.0
    return float(m.std(ddof=1) / m.mean())


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Two-sided Student-t confidence interval of the mean of ``values``."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float(v[0])
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return float(v.mean() - half), float(v.mean() + half)


def trimmed_mean(x: np.ndarray, trim: float) -> float:
    if trim <= 0 or len(x) < 3:
        return float(x.mean())
    s = np.sort(x)
    k = int(len(s) * trim)
    return float(s[k: len(s) - k].mean()) if len(s) - 2 * k > 0 else float(s.mean())


def timed_repeat(run: Callable[[Any], Any], prepared: Any, min_iters: int, min_time_s: float) -> np.ndarray:
    """One repeat: at least ``min_iters`` iterations and ``min_time_s`` seconds; latencies in ms."""
    clock = time.perf_counter_ns
    lat: list[int] = []
    append = lat.append
    min_ns = int(min_time_s * 1e9)
    start = clock()
    while True:
        t0 = clock()
        run(prepared)
        t1 = clock()
        append(t1 - t0)
        if len(lat) >= min_iters and t1 - start >= min_ns:
            break
    return np.asarray(lat, dtype=np.float64) / 1e6


def measure(run: Callable[[Any], Any], prepared: Any, batch_size: int, cfg: MeasureConfig,
            on_step: Callable[[int, float], str | None] | None = None) -> Measurement:
    """Warm-up, then repeats; after each repeat ``on_step(repeat number, its throughput)`` may return a
    reason to stop (a search pruning a hopeless trial): the measurement so far is returned, ``stopped`` set."""
    start = time.perf_counter()
    for _ in range(cfg.warmup_iters):
        run(prepared)
    all_lat: list[np.ndarray] = []
    means: list[float] = []
    trimmed: list[float] = []
    ends: list[float] = []
    stopped = None
    max_repeats = max(cfg.repeats, cfg.max_repeats)
    while len(means) < cfg.repeats or (repeat_cv(means) > cfg.max_cv and len(means) < max_repeats):
        arr = timed_repeat(run, prepared, cfg.min_iters, cfg.min_time_s)
        all_lat.append(arr)
        means.append(float(arr.mean()))
        trimmed.append(trimmed_mean(arr, cfg.trim))
        ends.append(time.perf_counter() - start)
        if on_step is not None:
            stopped = on_step(len(means), batch_size / (trimmed[-1] / 1000.0) if trimmed[-1] > 0 else float("inf"))
            if stopped:
                break
    return Measurement(np.concatenate(all_lat), means, batch_size, cfg.trim, cfg.max_cv, trimmed, stopped, ends)
