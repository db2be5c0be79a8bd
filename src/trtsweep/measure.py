"""Latency measurement: warm-up, then repeats of at least N iterations and T seconds each.

Only ``run(prepared)`` is inside the timed loop: inputs are prepared before, the engine is fully
built before (``Engine.load``).  Per-iteration latencies of all repeats are pooled for the
percentiles; the spread *between* repeats (coefficient of variation of the repeat means) says
whether the result is stable.  Throughput is batch ÷ trimmed mean latency.
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

    def metrics(self) -> dict[str, float]:
        lat = self.latencies_ms
        trimmed = _trimmed_mean(lat, self.trim)
        means = np.asarray(self.repeat_means_ms)
        cv = float(means.std() / means.mean()) if len(means) > 1 and means.mean() > 0 else 0.0
        return {
            "latency_mean_ms": float(lat.mean()),
            "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p90_ms": float(np.percentile(lat, 90)),
            "latency_p99_ms": float(np.percentile(lat, 99)),
            "latency_std_ms": float(lat.std()),
            "latency_min_ms": float(lat.min()),
            "latency_cv": cv,
            "throughput_ips": float(self.batch_size / (trimmed / 1000.0)) if trimmed > 0 else float("inf"),
            "timed_iterations": float(len(lat)),
        }


def _trimmed_mean(x: np.ndarray, trim: float) -> float:
    if trim <= 0 or len(x) < 3:
        return float(x.mean())
    s = np.sort(x)
    k = int(len(s) * trim)
    return float(s[k: len(s) - k].mean()) if len(s) - 2 * k > 0 else float(s.mean())


def measure(run: Callable[[Any], Any], prepared: Any, batch_size: int, cfg: MeasureConfig,
            on_repeat: Callable[[int, float], None] | None = None) -> Measurement:
    for _ in range(cfg.warmup_iters):
        run(prepared)
    clock = time.perf_counter_ns
    all_lat: list[np.ndarray] = []
    means: list[float] = []
    min_ns = int(cfg.min_time_s * 1e9)
    for r in range(cfg.repeats):
        lat = []
        append = lat.append
        start = clock()
        while True:
            t0 = clock()
            run(prepared)
            t1 = clock()
            append(t1 - t0)
            if len(lat) >= cfg.min_iters and t1 - start >= min_ns:
                break
        arr = np.asarray(lat, dtype=np.float64) / 1e6
        all_lat.append(arr)
        means.append(float(arr.mean()))
        if on_repeat:
            on_repeat(r, means[-1])
    return Measurement(np.concatenate(all_lat), means, batch_size, cfg.trim)
