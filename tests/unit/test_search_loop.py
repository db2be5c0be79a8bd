"""The search loop (``_search.Search``), its pruner and warm start, driven in-process with an evaluate
function that plays recorded figures (the live sweeper runs each trial as a Hydra job instead; see
tests/integration/test_optuna_sweeper.py and test_search_waste.py)."""

from __future__ import annotations

import math

import pytest

optuna = pytest.importorskip("optuna")

from hydra_plugins.trtsweep_sweepers import _outcome, _prune, _space, _study, _warm  # noqa: E402
from hydra_plugins.trtsweep_sweepers._search import Search, SearchSettings  # noqa: E402
from trtsweep.measure import measure  # noqa: E402
from trtsweep.results import JobResult, TrialStatus  # noqa: E402

ENGINE_KEYS = {"tflite": {"num_threads", "use_xnnpack"}, "onnx": {"intra_op_num_threads"}, "tf": {"intra_op_threads"}}


def make_space(*lines: str):
    space, _fixed = _space.split_space(_space.parse_overrides(list(lines)))
    engines = {e: ENGINE_KEYS[e] for e in ("tflite", "onnx", "tf")}
    _space.attach_engine_conditions(space, engines, None if any(p.name == "engine" for p in space) else "tflite")
    return space


SIX = ("engine=tflite", "precision=choice(fp32,fp16,int8)", "batch_size=choice(1,8)")


def throughput(values: dict) -> float:
    """A made-up but fixed landscape: int8 and bigger batches are faster."""
    base = {"fp32": 1000.0, "fp16": 1100.0, "int8": 2000.0}[values.get("precision", "fp32")]
    return base * (1 + 0.5 * (values.get("batch_size", 1) > 1)) * (1.2 if values.get("engine") == "onnx" else 1)


class Player:
    """Plays each configuration's figures: 3 steps around its throughput (±2%), CI from them."""

    def __init__(self, landscape=throughput, slow=None, drop=None):
        self.landscape, self.slow, self.drop = landscape, slow or (lambda v: False), drop or (lambda v: 0.0)
        self.measured: list[dict] = []
        self.steps_run = 0

    def __call__(self, trial, values, steps) -> _outcome.Outcome:
        self.measured.append(dict(values))
        mean = self.landscape(values) / (20 if self.slow(values) else 1)
        reps = [mean * f for f in (0.98, 1.0, 1.02)]
        for i, r in enumerate(reps, 1):
            self.steps_run += 1
            reason = steps.report(i, r)
            if reason:
                res = JobResult(TrialStatus.PRUNED, f"k{len(self.measured)}", reason,
                                {"throughput_ips": sum(reps[:i]) / i})
                return _outcome.trial_outcome(res, None, "throughput_ips", False, 0.01)
        half = 4.303 * (0.02 * mean) / math.sqrt(3)
        metrics = {"throughput_ips": mean, "throughput_ci_low": mean - half, "throughput_ci_high": mean + half,
                   "accuracy_drop": self.drop(values)}
        res = JobResult(TrialStatus.OK, _space.config_key(values), None, metrics)
        return _outcome.trial_outcome(res, None, "throughput_ips", False, 0.01)


def study(seed: int = 0, sampler: str = "tpe", space=()):
    s = _study.make_sampler(sampler, seed=seed, n_startup_trials=2, n_objectives=1, space=list(space))
    return optuna.create_study(direction="maximize", sampler=s)


def test_a_six_point_space_with_ten_trials_measures_six_configurations_and_ends_exhausted():
    space = make_space(*SIX)
    player = Player()
    search = Search(study(space=space), space, SearchSettings(n_trials=10, seed=0), player)
    reason = search.run()
    assert reason == "space exhausted: all 6 configuration(s) measured"
    keys = [_space.config_key(v) for v in player.measured]
    assert len(keys) == 6 and len(set(keys)) == 6  # nothing measured twice
    assert search.fresh == 6
    told = search.study.get_trials()
    repeats = [t for t in told if "known_from" in t.user_attrs]  # told the earlier result, not measured
    assert len(told) == 6 + len(repeats) == 6 + search.free
    assert search.study.best_trial.params == {"precision": "int8", "batch_size": 8}  # engine=tflite is fixed


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_n_trials_counts_measurements_and_a_repeat_is_told_the_earlier_result(sampler):
    space = make_space(*SIX)
    player = Player()
    search = Search(study(seed=3, sampler=sampler, space=space), space, SearchSettings(n_trials=4, seed=1), player)
    assert search.run() == "n_trials=4 measured"
    assert len(player.measured) == 4
    by_key = {}
    for t in search.study.get_trials():
        by_key.setdefault(_space.config_key(t.params), []).append(t)
    for trials in by_key.values():  # a repeated configuration: the same value, one measurement
        assert len({t.values[0] for t in trials}) == 1
        assert sum("known_from" not in t.user_attrs for t in trials) == 1


def test_a_second_search_measures_nothing_already_measured_elsewhere(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db")
    space = make_space(*SIX)
    first = optuna.create_study(storage=storage, study_name="first", direction="maximize")
    p1 = Player()
    Search(first, space, SearchSettings(n_trials=6, seed=0), p1).run()
    assert len(p1.measured) == 6
    assert all(t.user_attrs["trial_key"] for t in first.get_trials())  # the result identity (Player: the values)
    second = optuna.create_study(storage=storage, study_name="second", direction="maximize")
    index = _warm.OtherStudies(storage, "second")
    p2 = Player()
    search = Search(second, space, SearchSettings(n_trials=6, seed=5), p2,
                    known=lambda values: index.lookup(_space.config_key(values)))
    assert search.run().startswith("space exhausted")
    assert p2.measured == [] and search.fresh == 0
    assert all(t.user_attrs["known_from"].startswith("study first trial #") for t in second.get_trials())
    assert second.best_trial.params == first.best_trial.params


def test_pruner_stops_a_hopeless_trial_after_its_first_step_and_the_best_is_unchanged():
    space = make_space(*SIX)
    close = {"fp32": 1000.0, "fp16": 1010.0, "int8": 1050.0}  # all within the margin of the best ...
    player = Player(landscape=lambda v: close[v["precision"]] + v["batch_size"],
                    slow=lambda v: v["precision"] == "fp16")  # ... but fp16, 20× slower here
    s = study(space=space)
    s.enqueue_trial({"precision": "int8", "batch_size": 8})  # the best first
    search = Search(s, space, SearchSettings(n_trials=6, seed=0), player, pruner=_prune.ConfidenceBoundPruner(0.2))
    search.run()
    pruned = [t for t in s.get_trials() if t.state.name == "PRUNED"]
    assert pruned and all(t.params["precision"] == "fp16" for t in pruned)
    for t in pruned:
        assert sorted(t.intermediate_values) == [1]  # stopped after the first step
        assert "pruned after 1 measurement step(s)" in t.user_attrs["reason"] and "#0" in t.user_attrs["reason"]
        assert t.user_attrs["status"] == "pruned" and t.user_attrs["throughput_ips"] > 0  # partial figures kept
    assert s.best_trial.number == 0 and search.pruned == len(pruned)
    assert player.steps_run == 3 * (len(player.measured) - len(pruned)) + len(pruned)


def test_pruner_needs_a_feasible_best_and_a_clear_gap():
    s = optuna.create_study(direction="maximize")
    pruner = _prune.ConfidenceBoundPruner(margin=0.2)
    t = s.ask()
    t.report(10.0, 1)
    frozen = s._storage.get_trial(t._trial_id)
    assert pruner.explain(s, frozen) is None  # no best yet
    infeasible = _outcome.trial_outcome(JobResult(TrialStatus.ACCURACY_VIOLATION, "a", "x",
                                                  {"throughput_ips": 1000.0, "throughput_ci_low": 900.0,
                                                   "accuracy_drop": 0.5}), None, "throughput_ips", False, 0.01)
    _outcome.tell(s, s.ask(), infeasible)
    assert pruner.explain(s, frozen) is None  # an infeasible trial is no bar
    ok = _outcome.trial_outcome(JobResult(TrialStatus.OK, "b", None, {"throughput_ips": 100.0,
                                                                      "throughput_ci_low": 90.0,
                                                                      "accuracy_drop": 0.0}),
                                None, "throughput_ips", False, 0.01)
    _outcome.tell(s, s.ask(), ok)
    assert "< 90.0 items/s" in pruner.explain(s, frozen)  # 10 × 1.2 = 12 < 90
    assert _prune.optimistic_bound([80.0], 0.2) == pytest.approx(96.0)  # 96 ≥ 90: not pruned
    assert _prune.optimistic_bound([80.0, 40.0], 0.2) > 200  # two noisy steps: a wide interval


def test_stagnation_stops_the_search_after_k_measured_trials_without_a_real_gain():
    space = make_space("engine=tflite", "precision=choice(fp32,fp16,int8)", "batch_size=choice(1,2,4,8,16,32)")
    s = study(space=space)
    s.enqueue_trial({"precision": "int8", "batch_size": 32})  # the best comes first
    flat = Player(landscape=lambda v: 5000.0 if v == {"precision": "int8", "batch_size": 32} else 100.0)
    search = Search(s, space, SearchSettings(n_trials=18, stagnation_trials=3, seed=0), flat)
    assert search.run() == "stagnation: no improvement beyond noise in the last 3 measured trial(s)"
    assert len(flat.measured) == 4


def test_a_new_best_queues_its_cheap_neighbours_first():
    space = make_space("engine=tflite", "precision=choice(fp32,int8)", "batch_size=choice(1,8)",
                       "engine.num_threads=choice(1,2)")
    s = study(space=space)
    s.enqueue_trial({"precision": "int8", "batch_size": 1, "engine.num_threads": 1})
    player = Player()

    def cheap(a: dict, b: dict) -> bool:  # engine=tflite is fixed: the sweeper adds it the same way
        return _warm.same_conversion({"engine": "tflite", **a}, {"engine": "tflite", **b})

    Search(s, space, SearchSettings(n_trials=3, seed=0), player, cheap=cheap).run()
    first, *after = player.measured
    assert first["precision"] == "int8"
    assert all(v["precision"] == "int8" and _space.distance(v, first) == 1 for v in after)  # same conversion


def test_same_conversion_is_a_runtime_only_difference():
    a = {"engine": "tflite", "precision": "int8", "batch_size": 1, "engine.num_threads": 1}
    assert _warm.same_conversion(a, {**a, "batch_size": 8, "engine.num_threads": 2, "engine.use_xnnpack": False})
    assert not _warm.same_conversion(a, {**a, "precision": "fp32"})
    assert not _warm.same_conversion(a, {**a, "engine": "onnx"})
    t = {"engine": "tftrt", "precision": "fp16", "batch_size": 1}
    assert not _warm.same_conversion(t, {**t, "batch_size": 8})  # TF-TRT builds engines per batch size


def test_warm_start_queues_the_tf_fp32_baseline_per_batch_size_and_each_engines_defaults():
    space = make_space("engine=choice(tf,tflite,onnx)", "precision=choice(fp32,int8)", "batch_size=choice(1,8)",
                       "engine.num_threads=choice(1,2)")
    defaults = {"tf": {"engine": "tf", "precision": "fp32", "batch_size": 1},
                "tflite": {"engine": "tflite", "precision": "fp32", "batch_size": 1, "engine.num_threads": 0},
                "onnx": {"engine": "onnx", "precision": "fp32", "batch_size": 1}}
    first = _warm.first_configs(space, defaults, None)
    assert first == [{"engine": "tf", "precision": "fp32", "batch_size": 1},
                     {"engine": "tf", "precision": "fp32", "batch_size": 8},
                     {"engine": "tflite", "precision": "fp32", "batch_size": 1},  # num_threads=0 is not a choice
                     {"engine": "onnx", "precision": "fp32", "batch_size": 1}]
    no_tf = make_space("engine=choice(tflite,onnx)", "precision=choice(fp16,int8)")
    assert _warm.first_configs(no_tf, {"tflite": {"precision": "fp32"}, "onnx": {}}, None) == [
        {"engine": "tflite"}, {"engine": "onnx"}]


def test_cached_results_become_completed_trials_only_when_their_identity_matches():
    from trtsweep.results import TrialResult

    space = make_space(*SIX)

    def result(key: str, precision: str, status: str = "ok") -> TrialResult:
        spec = {"engine": "tflite", "precision": precision, "batch_size": 8, "engine_params": {"num_threads": 2}}
        return TrialResult(key, TrialStatus(status), spec, metrics={"throughput_ips": 10.0, "accuracy_drop": 0.0})

    results = [result("same", "int8"), result("other-host", "fp16"), result("x", "bf16")]
    trials = _warm.cached_trials(space, results, lambda v: "same" if v["precision"] == "int8" else "new",
                                 lambda r: _outcome.trial_outcome(JobResult.of(r, None), None, "throughput_ips",
                                                                  False, 0.01))
    assert [t.params for t in trials] == [{"precision": "int8", "batch_size": 8}]
    s = study(space=space)
    search = Search(s, space, SearchSettings(n_trials=1), Player())
    assert search.warm_start([], trials) == 1 and search.warm_start([], trials) == 0  # not twice
    assert s.best_trial.user_attrs["known_from"] == "the result cache"


def test_cmaes_on_a_categorical_space_is_an_error_naming_the_samplers_that_can():
    space = make_space(*SIX)
    with pytest.raises(_space.SearchSpaceError) as e:
        _study.make_sampler("cmaes", seed=0, n_startup_trials=None, n_objectives=1, space=space)
    text = str(e.value)
    assert "cannot model categorical parameters" in text and "fix:" in text and "tpe" in text and "\n" not in text
    numeric = make_space("engine=tflite", "measure.trim=interval(0.0,0.2)")
    assert _study.make_sampler("cmaes", seed=0, n_startup_trials=None, n_objectives=1, space=numeric)


def test_measurement_steps_can_stop_a_measurement():
    from trtsweep.config import MeasureConfig

    calls = []

    def on_step(step: int, tput: float):
        calls.append((step, tput))
        return "enough" if step == 2 else None

    cfg = MeasureConfig(warmup_iters=1, min_iters=5, min_time_s=0.0, repeats=5, max_repeats=5, max_cv=1.0)
    m = measure(lambda x: sum(range(100)), None, 4, cfg, on_step=on_step)
    assert m.stopped == "enough" and len(m.repeat_means_ms) == 2 and [c[0] for c in calls] == [1, 2]
    assert all(t > 0 for _, t in calls) and len(m.step_end_s) == 2 and m.step_end_s[1] > m.step_end_s[0]
    full = measure(lambda x: None, None, 1, cfg)
    assert full.stopped is None and len(full.repeat_means_ms) == 5


def test_a_journal_file_is_a_storage_several_processes_can_share(tmp_path):
    storage = _study.open_storage(f"journal:{tmp_path}/j/optuna.journal", 10, 30, 1)
    assert isinstance(storage, optuna.storages.JournalStorage) and (tmp_path / "j").is_dir()
    space = make_space(*SIX)
    s = _study.open_study(storage, "j", optuna.samplers.RandomSampler(seed=0), ["maximize"], ["throughput_ips"])
    Search(s, space, SearchSettings(n_trials=2, seed=0), Player(),
           before_ask=lambda: _study.fail_stale_trials(s, storage, 30)).run()
    with _study.heartbeat(storage, 0, 10):  # no heartbeats on a journal: a do-nothing context
        pass
    again = optuna.load_study(study_name="j", storage=_study.open_storage(f"journal:{tmp_path}/j/optuna.journal",
                                                                          10, 30, 1))
    assert len([t for t in again.trials if t.state.name == "COMPLETE"]) >= 2


def test_a_failed_configuration_is_not_told_as_known_but_counts_for_exhaustion():
    space = make_space(*SIX)
    player = Player()

    def flaky(trial, values, steps):
        if values["precision"] == "fp16" and values["batch_size"] == 1:
            player.measured.append(dict(values))
            return _outcome.trial_outcome(None, "RuntimeError: worker crashed", "throughput_ips", False, 0.01)
        return player(trial, values, steps)

    search = Search(study(space=space), space, SearchSettings(n_trials=10, seed=0), flaky)
    assert search.run() == "space exhausted: all 6 configuration(s) measured"
    fails = [t for t in search.study.get_trials() if t.state.name == "FAIL"]
    assert fails and all("known_from" not in t.user_attrs for t in fails)  # each failure was a real run
    assert len(player.measured) == 6  # the space was tried once each


def test_the_grid_sampler_enumerates_itself_and_takes_no_queued_trials():
    space = make_space(*SIX)
    s = study(sampler="grid", space=space)
    player = Player()
    search = Search(s, space, SearchSettings(n_trials=10, seed=0), player, cheap=lambda a, b: True)
    assert search.warm_start([{"precision": "fp32"}], []) == 0 and not s.get_trials()
    assert search.run() == "space exhausted: all 6 configuration(s) measured"
    assert len(player.measured) == 6 and all("grid_id" in t.system_attrs for t in s.get_trials())


def test_each_engines_best_has_its_cheap_neighbours_queued_not_only_the_overall_best():
    space = make_space("engine=choice(tflite,onnx)", "precision=choice(fp32,int8)", "engine.num_threads=choice(1,2)")
    s = study(space=space)
    s.enqueue_trial({"engine": "onnx", "precision": "fp32"})  # the overall best (onnx × 1.2) ...
    s.enqueue_trial({"engine": "tflite", "precision": "fp32", "engine.num_threads": 2})  # ... and tflite's default

    def landscape(v: dict) -> float:  # tflite at 1 thread is the real best, one runtime step from its default
        return 5000.0 if v.get("engine.num_threads") == 1 else throughput(v)

    player = Player(landscape=landscape)
    Search(s, space, SearchSettings(n_trials=3, seed=0), player, cheap=_warm.same_conversion).run()
    assert player.measured[2] == {"engine": "tflite", "precision": "fp32", "engine.num_threads": 1}
