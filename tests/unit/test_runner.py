"""Trial isolation in the real worker process: failures become results, the pool recovers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from trtsweep import faults, runner
from trtsweep.config import DataConfig, FidelityConfig, MeasureConfig, ModelConfig, TrialConfig, TrialSpec
from trtsweep.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


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


def test_a_model_the_caches_hold_is_resolved_without_a_worker(cache_dir, digits_model):
    runner.stop_pool()
    info = runner.resolve_model(spec(cache_dir))  # digits_model resolved it once: signature cached
    assert info == digits_model.to_dict() and runner.pool().proc is None


class _FakeProcess:
    def is_alive(self) -> bool:
        return True


def test_prewarm_leaves_a_live_worker_alone():
    sent = []
    pool = runner.WorkerPool()
    pool.proc, pool.conn, pool.env = _FakeProcess(), SimpleNamespace(send=sent.append), {}
    pool.prewarm()  # e.g. the entry point warmed it, then the sweeper asks again
    assert sent == [] and pool._pending == 0  # one warm-up answer pending at most, never two


def test_the_worker_does_not_run_the_parents_main_script(tmp_path):
    """A spawned child runs the parent's main script to find what is defined there; ``sweep.py`` would
    import Hydra in the worker for nothing, so the script is hidden from it."""
    marker = tmp_path / "imported"
    script = tmp_path / "main_script.py"
    script.write_text(
        "import os, sys\n"
        "if __name__ != '__main__':\n"
        f"    open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
        "else:\n"
        "    from trtsweep import runner\n"
        "    pool = runner.WorkerPool()\n"
        "    assert pool.call('confirm_close', None, None, 120, 0) is True\n"
        "    pool.stop()\n"
        "    assert sys.modules['__main__'].__file__ == __file__\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not marker.exists()


def test_requests_sent_ahead_are_answered_first_and_their_answers_dropped(cache_dir, digits_model):
    """The sweep has the worker load the first trial's data while it opens MLflow; a request sent ahead
    that fails is dropped too (the trial it prepares meets the same error and reports it)."""
    from trtsweep.config import DataConfig

    runner.stop_pool()
    pool = runner.pool()
    pool.ensure({})
    skipped, bad = spec(cache_dir), spec(cache_dir)
    skipped.skip_reason = "not here"
    bad.data = DataConfig(name="file", path="/no/such/data.npz")
    runner.prepare([skipped])
    assert pool._pending == 0  # nothing will run: nothing to prepare
    runner.prepare([skipped, bad])
    runner.prepare([spec(cache_dir)])
    assert pool._pending == 2
    assert pool.call("confirm_close", None, None, 120, 0) is True  # the two earlier answers were dropped
    assert pool._pending == 0
    runner.stop_pool()
