"""Trial isolation in the real worker process: failures become results, the pool recovers."""

from __future__ import annotations

import pytest

from trtsweep import faults, runner
from trtsweep.config import DataConfig, FidelityConfig, MeasureConfig, ModelConfig, TrialConfig, TrialSpec
from trtsweep.errors import ConfigError


def spec(cache_dir, **trial) -> TrialSpec:
    return TrialSpec(
        model=ModelConfig(name="digits_cnn", source="digits_cnn"), engine="tflite",
        engine_params={"num_threads": 1, "use_xnnpack": True, "allow_tf_ops": True, "int8_io": False},
        precision="fp32", batch_size=1, data=DataConfig(name="digits", calibration_samples=8, eval_samples=32),
        measure=MeasureConfig(warmup_iters=1, min_iters=5, min_time_s=0.0, repeats=1), fidelity=FidelityConfig(),
        trial=TrialConfig(**trial), cache_dir=str(cache_dir),
    )


@pytest.mark.slow
def test_oom_is_caught_by_the_memory_cap_and_pool_recovers(cache_dir, monkeypatch):
    monkeypatch.setenv(faults.ENV, "oom")
    bad = runner.execute(spec(cache_dir, max_memory_mb=1500, timeout_s=120))
    assert bad.status == "failed" and "out of memory" in bad.reason and "trial.max_memory_mb=1500" in bad.reason
    monkeypatch.delenv(faults.ENV)
    good = runner.execute(spec(cache_dir, timeout_s=300))
    assert good.status == "ok" and good.metrics["throughput_ips"] > 0
    runner.pool().stop()


@pytest.mark.slow
def test_exception_in_trial_keeps_its_traceback(cache_dir, monkeypatch):
    monkeypatch.setenv(faults.ENV, "raise")
    res = runner.execute(spec(cache_dir, timeout_s=120))  # measured before (the test above): a fault runs anyway
    assert res.status == "failed" and res.reason == "RuntimeError: injected failure (TRTSWEEP_TEST_FAULT=raise)"
    assert "Traceback" in res.traceback and "inject" in res.traceback
    # failures are kept (for the record) but are not "done": a re-run without the fault measures again
    assert runner.load_cached(spec(cache_dir)).status == "failed"
    monkeypatch.delenv(faults.ENV)
    assert runner.execute(spec(cache_dir, timeout_s=300)).status == "ok"
    runner.pool().stop()


def test_a_test_fault_selects_trials_by_their_settings(monkeypatch):
    s = spec("/tmp/unused").to_dict()
    assert faults.fault_for(s) is None  # not set: no fault (what every user run sees)
    for value, expected in [("crash", "crash"), ("hang@batch_size=1", "hang"), ("hang@batch_size=2", None),
                            ("raise@engine_params.use_xnnpack=true", "raise"), ("oom@data.seed=0", "oom")]:
        monkeypatch.setenv(faults.ENV, value)
        assert faults.fault_for(s) == expected, value
    for value, needle in [("explode", "unknown fault 'explode'"), ("crash@no.such=1", "names no setting")]:
        monkeypatch.setenv(faults.ENV, value)
        with pytest.raises(ConfigError, match=needle):
            faults.fault_for(s)


def test_skipped_spec_never_starts_a_worker(cache_dir):
    s = spec(cache_dir)
    s.skip_reason = "not here"
    before = runner.pool().proc
    res = runner.execute(s)
    assert res.status == "skipped" and res.reason == "not here" and runner.pool().proc is before
