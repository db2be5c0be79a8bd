"""Trial isolation in the real worker process: failures become results, the pool recovers."""

from __future__ import annotations

import pytest

from trtsweep import runner
from trtsweep.config import DataConfig, FidelityConfig, MeasureConfig, ModelConfig, TrialConfig, TrialSpec


def spec(cache_dir, **trial) -> TrialSpec:
    return TrialSpec(
        model=ModelConfig(name="digits_cnn", source="digits_cnn"), engine="tflite",
        engine_params={"num_threads": 1, "use_xnnpack": True, "allow_tf_ops": True, "int8_io": False},
        precision="fp32", batch_size=1, data=DataConfig(name="digits", calibration_samples=8, eval_samples=32),
        measure=MeasureConfig(warmup_iters=1, min_iters=5, min_time_s=0.0, repeats=1), fidelity=FidelityConfig(),
        trial=TrialConfig(**trial), cache_dir=str(cache_dir),
    )


@pytest.mark.slow
def test_oom_is_caught_by_the_memory_cap_and_pool_recovers(cache_dir):
    bad = runner.execute(spec(cache_dir, fault="oom", max_memory_mb=1500, timeout_s=120))
    assert bad.status == "failed" and "out of memory" in bad.reason and "trial.max_memory_mb=1500" in bad.reason
    good = runner.execute(spec(cache_dir, timeout_s=300))
    assert good.status == "ok" and good.metrics["throughput_ips"] > 0
    runner.pool().stop()


@pytest.mark.slow
def test_exception_in_trial_keeps_its_traceback(cache_dir):
    res = runner.execute(spec(cache_dir, fault="raise", timeout_s=120))
    assert res.status == "failed" and res.reason == "RuntimeError: injected failure (trial.fault=raise)"
    assert "Traceback" in res.traceback and "_inject" in res.traceback
    # failures are kept (for the record) but are not "done": a re-run tries again
    assert runner.load_cached(spec(cache_dir, fault="raise")).status == "failed"
    runner.pool().stop()


def test_skipped_spec_never_starts_a_worker(cache_dir):
    s = spec(cache_dir)
    s.skip_reason = "not here"
    before = runner.pool().proc
    res = runner.execute(s)
    assert res.status == "skipped" and res.reason == "not here" and runner.pool().proc is before
