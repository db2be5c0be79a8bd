"""Issue 7: engines at one core budget, measurements that extend until stable, a confirmed winner,
and cache keys that change whenever the model content, a library version or the host does."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from trtsweep import confirm, cores
from trtsweep import measure as measure_mod
from trtsweep.app import job_config
from trtsweep.config import MeasureConfig, mlflow_params, plan_trial
from trtsweep.errors import ConfigError
from trtsweep.results import TrialResult

CONF = str(Path(__file__).resolve().parents[2] / "conf")
THREAD_PARAMS = {"tf": ("intra_op_threads", "inter_op_threads"), "tflite": ("num_threads",),
                 "onnx": ("intra_op_num_threads", "inter_op_num_threads")}


def cfg(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return job_config(compose("config", overrides=list(overrides)))


# ---- one core budget ---------------------------------------------------------------------------
@pytest.mark.parametrize("engine", sorted(THREAD_PARAMS))
def test_default_threads_is_the_core_budget_resolved_for_every_cpu_engine(engine):
    spec = plan_trial(cfg(f"engine={engine}"))
    budget = cores.core_budget()
    assert spec.threads == budget
    for p in THREAD_PARAMS[engine]:
        assert spec.engine_params[p] == budget, (p, spec.engine_params)
    params = mlflow_params(spec)
    assert params["threads"] == str(budget)
    assert all(params[f"engine.{p}"] not in ("0", "-1") for p in THREAD_PARAMS[engine])
    assert spec.core_set == cores.allowed_cores()[:budget]


@pytest.mark.parametrize("engine", sorted(THREAD_PARAMS))
def test_threads_maps_to_each_engines_own_parameter(engine):
    spec = plan_trial(cfg(f"engine={engine}", "threads=1"))
    assert spec.threads == 1 and len(spec.core_set) == 1
    assert all(spec.engine_params[p] == 1 for p in THREAD_PARAMS[engine])


def test_engine_thread_parameter_wins_and_a_contradiction_is_an_error():
    spec = plan_trial(cfg("engine=tflite", "engine.num_threads=1"))
    assert spec.threads == 1 and spec.engine_params["num_threads"] == 1
    with pytest.raises(ConfigError, match=r"engine.num_threads=1 contradicts threads=2"):
        plan_trial(cfg("engine=tflite", "engine.num_threads=1", "threads=2"))


def test_core_budget_respects_affinity_and_cgroup_quota(monkeypatch):
    assert cores.parse_cpu_max("200000 100000") == 2.0
    assert cores.parse_cpu_max("150000 100000") == 1.5
    assert cores.parse_cpu_max("max 100000") is None
    monkeypatch.setattr(cores, "allowed_cores", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(cores, "cgroup_cpu_limit", lambda: 1.5)
    cores.core_budget.cache_clear()
    try:
        assert cores.core_budget() == 2  # 1.5 CPUs of quota: 2 threads, not 4
        assert cores.core_set(8) == [0, 1]
        monkeypatch.setattr(cores, "cgroup_cpu_limit", lambda: None)
        monkeypatch.setattr(cores, "allowed_cores", lambda: [2])  # taskset -c 2
        cores.core_budget.cache_clear()
        assert cores.core_budget() == 1 and cores.core_set(2) == [2]
    finally:
        cores.core_budget.cache_clear()


def test_pin_sets_every_thread_of_the_process():
    import threading

    before = cores.allowed_cores()
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert cores.pin(before[:1]) == before[:1]
        import os

        for tid in os.listdir("/proc/self/task"):
            assert sorted(os.sched_getaffinity(int(tid))) == before[:1]
    finally:
        cores.pin(before)
        stop.set()
        t.join()


# ---- engine.<param> in the grid ------------------------------------------------------------------
def test_grid_sets_an_engine_parameter_only_for_the_engines_that_have_it():
    from hydra_plugins.trtsweep_sweepers.grid import engine_param_jobs

    jobs = [list(j) for j in itertools.product(["engine=tf", "engine=tflite"],
                                               ["engine.num_threads=1", "engine.num_threads=2"])]
    out, notes = engine_param_jobs(jobs, "tflite")
    assert out == [["engine=tf"], ["engine=tflite", "engine.num_threads=1"], ["engine=tflite", "engine.num_threads=2"]]
    assert notes == ["engine.num_threads applies to tflite only (not tf)"]
    out, _ = engine_param_jobs([["threads=1"], ["threads=2"]], "tflite")  # no engine override: the default
    assert out == [["threads=1"], ["threads=2"]]


def test_grid_parameter_no_swept_engine_has_names_the_engines_that_do():
    from hydra_plugins.trtsweep_sweepers.grid import engine_param_jobs

    with pytest.raises(ConfigError) as e:
        engine_param_jobs([["engine=tf", "engine.intra_op_num_threads=1"],
                           ["engine=tflite", "engine.intra_op_num_threads=1"]], "tflite")
    msg = str(e.value)
    assert "engine.intra_op_num_threads" in msg and "engines that have it: onnx" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="no engine has it"):
        engine_param_jobs([["engine=tf", "engine.nonexistent=1"]], "tflite")


# ---- cache identity ------------------------------------------------------------------------------
def test_library_version_change_invalidates_conversion_and_result(monkeypatch, tmp_path):
    from trtsweep import config, runner

    c = cfg("engine=onnx", f"cache_dir={tmp_path}")
    spec = plan_trial(c)
    result = TrialResult(spec.trial_key(), "ok", spec.to_dict(), metrics={"throughput_ips": 1.0})
    runner.save_result(result, spec.cache_dir)
    assert runner.load_cached(plan_trial(c)) is not None  # nothing changed: served
    real = config.library_versions
    monkeypatch.setattr(config, "library_versions",
                        lambda pkgs: {**real(pkgs), "onnxruntime": "0.0.1-simulated"})
    newer = plan_trial(c)
    assert newer.versions["onnxruntime"] == "0.0.1-simulated"
    assert newer.conversion_key() != spec.conversion_key() and newer.trial_key() != spec.trial_key()
    assert runner.load_cached(newer) is None


def test_host_change_invalidates_the_result_but_not_the_conversion(monkeypatch):
    from trtsweep import config

    spec = plan_trial(cfg("engine=tflite"))
    monkeypatch.setattr(config, "host_identity", lambda core_set: {"cpu_model": "another CPU", "core_set": "0"})
    other = plan_trial(cfg("engine=tflite"))
    assert other.conversion_key() == spec.conversion_key()
    assert other.trial_key() != spec.trial_key()


def test_saved_model_identity_follows_its_content(tmp_path):
    import tensorflow as tf

    from trtsweep.identity import model_fingerprint

    def export(scale: float) -> None:
        m = tf.Module()
        m.w = tf.Variable(np.full((4, 2), scale, np.float32))
        m.f = tf.function(lambda x: {"y": tf.matmul(x, m.w)}, input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        tf.saved_model.save(m, str(tmp_path / "m"), signatures={"serving_default": m.f})

    export(1.0)
    spec_a = plan_trial(cfg("model=saved_model", f"model.path={tmp_path / 'm'}", "engine=tflite"))
    fp_a = model_fingerprint(tmp_path / "m")
    export(1.0)  # same content again: same identity
    assert model_fingerprint(tmp_path / "m") == fp_a
    export(2.0)  # new weights at the same path
    spec_b = plan_trial(cfg("model=saved_model", f"model.path={tmp_path / 'm'}", "engine=tflite"))
    assert model_fingerprint(tmp_path / "m") != fp_a
    assert spec_b.conversion_key() != spec_a.conversion_key() and spec_b.trial_key() != spec_a.trial_key()


# ---- stable measurements -------------------------------------------------------------------------
class FakeClock:
    """perf_counter_ns driven by the run function: each call advances it by the next scheduled latency."""

    def __init__(self, schedule):
        self.t = 0
        self.schedule = schedule

    def now(self) -> int:
        return self.t

    def run(self, _prepared) -> None:
        self.t += int(next(self.schedule) * 1e6)


def _measure(monkeypatch, latencies_per_repeat, **kw):
    cfg_ = MeasureConfig(warmup_iters=0, min_iters=5, min_time_s=0.0, repeats=2, trim=0.0, **kw)
    sched = itertools.chain.from_iterable([ms] * cfg_.min_iters for ms in latencies_per_repeat)
    clock = FakeClock(sched)
    monkeypatch.setattr(measure_mod.time, "perf_counter_ns", clock.now)
    return measure_mod.measure(clock.run, None, 1, cfg_)


def test_noisy_measurement_extends_repeats_until_the_cv_bound(monkeypatch):
    m = _measure(monkeypatch, [2.0, 2.4, 2.2, 2.2, 2.2], max_cv=0.10, max_repeats=10)
    assert len(m.repeat_means_ms) == 3 and m.cv <= 0.10 and not m.unstable
    metrics = m.metrics()
    assert metrics["timed_repeats"] == 3
    assert metrics["throughput_ci_low"] < metrics["throughput_ips"] < metrics["throughput_ci_high"]


def test_measurement_that_stays_noisy_is_tagged_unstable(monkeypatch):
    m = _measure(monkeypatch, [1.0, 3.0] * 10, max_cv=0.10, max_repeats=6)
    assert len(m.repeat_means_ms) == 6 and m.unstable and m.metrics()["latency_cv"] > 0.10


def test_stable_measurement_runs_only_the_configured_repeats(monkeypatch):
    m = _measure(monkeypatch, [2.0] * 10, max_cv=0.10, max_repeats=10)
    assert len(m.repeat_means_ms) == 2 and not m.unstable


# ---- confirmation --------------------------------------------------------------------------------
def _cand(key, threads=2, size=1.0, precision="fp32", ips=100.0):
    return confirm.Candidate(key, key, {}, ips, ips * 0.9, ips * 1.1, threads, size, precision)


def test_confirmation_picks_the_truly_faster_of_a_misordered_pair():
    # the sweep measured A faster (a lucky moment); in truth B is 20% faster
    a, b = _cand("A", ips=130.0), _cand("B", ips=110.0)
    rng = np.random.default_rng(0)
    truth = {"A": 100.0, "B": 120.0}

    def run_round(c):  # real noise: 3% per measurement, and drift that hits a whole round
        return truth[c.key] * (1 + 0.03 * rng.standard_normal())

    samples = confirm.interleave([a, b], run_round, rounds=6)
    v = confirm.decide([a, b], samples, "g")
    assert v.winner == "B" and not v.is_tie and "B" in v.text


def test_confirmation_calls_identical_candidates_a_tie_and_recommends_the_cheaper():
    two, one = _cand("two-threads", threads=2), _cand("one-thread", threads=1)
    drift = itertools.cycle([1.0, 0.97, 1.02, 0.99, 1.03])
    state = {}

    def run_round(c):  # identical configurations: within a round, the same speed
        if c.key == "two-threads":
            state["round"] = next(drift)
        return 100.0 * state["round"]

    samples = confirm.interleave([two, one], run_round, rounds=5)
    v = confirm.decide([two, one], samples, "g")
    assert v.is_tie and set(v.tied) == {"two-threads", "one-thread"}
    assert v.winner == "one-thread" and "tied" in v.text


def test_candidates_are_the_best_stable_row_and_those_that_reach_it():
    rows = [
        {"trial_key": "a", "status": "ok", "throughput_ips": 100, "throughput_ci_low": 95, "throughput_ci_high": 105},
        {"trial_key": "b", "status": "ok", "throughput_ips": 97, "throughput_ci_low": 90, "throughput_ci_high": 99},
        {"trial_key": "c", "status": "ok", "throughput_ips": 50, "throughput_ci_low": 49, "throughput_ci_high": 51},
        {"trial_key": "u", "status": "ok", "throughput_ips": 300, "throughput_ci_low": 100, "throughput_ci_high": 500,
         "unstable": True},
        {"trial_key": "v", "status": "accuracy_violation", "throughput_ips": 400},
    ]
    # the anchor is the best *stable* row; the unstable one that may be faster is re-measured, not trusted
    assert [r["trial_key"] for r in confirm.select(rows, top_k=3)] == ["a", "u", "b"]
    assert [r["trial_key"] for r in confirm.select(rows, top_k=1)] == ["a"]
    assert [r["trial_key"] for r in confirm.select(rows[:1] + rows[2:3], top_k=3)] == ["a", "c"]  # runner-up always
    assert confirm.select(rows[:1], top_k=3) == []  # a lone configuration: nothing to rank


def test_a_candidate_unstable_in_the_sweep_and_its_confirmation_never_wins_over_a_stable_one():
    steady, shaky = _cand("steady"), _cand("shaky", threads=1)
    shaky.unstable = True  # its sweep measurement stayed above max_cv
    samples = {"steady": [100.0, 101.0, 99.0, 100.0, 100.5], "shaky": [60.0, 200.0, 90.0, 250.0, 70.0]}
    v = confirm.decide([steady, shaky], samples, "g", max_cv=0.10)
    assert v.winner == "steady" and v.tied == ["steady"] and v.stats["shaky"]["confirm_cv"] > 0.10
    assert confirm.decide([steady, shaky], samples, "g").winner == "shaky"  # without the bound: the higher mean
    shaky.unstable = False  # stable in the sweep: the paired comparison alone decides (here: a tie, it's cheaper)
    assert confirm.decide([steady, shaky], samples, "g", max_cv=0.10).winner == "shaky"


def test_the_tf_fp32_reference_is_timed_alongside_but_never_wins():
    fast = _cand("tflite", threads=2)
    base = confirm.Candidate("tf", "tf", {"engine": "tf"}, 50.0, 45.0, 55.0, 2, 10.0, "fp32", reference=True)
    drift = itertools.cycle([1.0, 0.8, 1.1, 0.9, 1.05])
    state = {}

    def run_round(c):  # a machine whose speed drifts from round to round, the same for both
        if c.key == "tflite":
            state["d"] = next(drift)
        return (300.0 if c.key == "tflite" else 100.0) * state["d"]

    samples = confirm.interleave([fast, base], run_round, rounds=5)
    v = confirm.decide([fast, base], samples, "g")
    assert v.winner == "tflite" and v.tied == ["tflite"]
    assert v.stats["tflite"]["confirm_speedup_vs_tf_fp32"] == pytest.approx(3.0)  # drift cancels per round
    assert "3.00× TF FP32" in v.text


def test_tf_needs_a_fresh_worker_only_for_a_budget_other_than_its_default():
    from trtsweep.runner import worker_env

    all_cores = len(cores.allowed_cores())
    assert worker_env(plan_trial(cfg("engine=tf", f"threads={all_cores}"))) is None  # the warm worker will do
    if all_cores > 1:
        assert worker_env(plan_trial(cfg("engine=tf", "threads=1"))) == {
            "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    assert worker_env(plan_trial(cfg("engine=tflite", "threads=1"))) is None  # set per interpreter


def test_data_file_content_is_part_of_calibration_and_result_identity(tmp_path):
    path = tmp_path / "inputs.npy"
    np.save(path, np.zeros((8, 8, 8, 1), np.float32))
    overrides = ("engine=tflite", "precision=int8", "data=file", f"data.path={path}")
    before = plan_trial(cfg(*overrides))
    np.save(path, np.ones((8, 8, 8, 1), np.float32))  # other calibration data at the same path
    after = plan_trial(cfg(*overrides))
    assert after.data_fingerprint != before.data_fingerprint
    assert after.conversion_key() != before.conversion_key() and after.trial_key() != before.trial_key()
