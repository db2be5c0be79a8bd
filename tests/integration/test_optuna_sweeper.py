"""The Optuna sweeper (``hydra/sweeper=optuna``).

Fast tests check the pieces in-process (grammar → distributions, conditional engine parameters,
trial outcome → Optuna state, the feasible best).  The slow ones run real sweeps of digits_cnn in a
subprocess: a small search with its MLflow parent/children, an invalid space stopped before the
first trial, a study killed mid-trial and resumed, and (``postgres``) four concurrent workers on one
PostgreSQL study (``TRTSWEEP_TEST_PG_URL=postgresql://user:pw@host:port/db``, with the right to create
databases; without it, a server of the test's own) and a study whose PostgreSQL server restarts mid-trial
(always a server of the test's own: it is stopped and started).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from hydra_plugins.trtsweep_sweepers import _outcome, _report, _space, _study  # noqa: E402 - after importorskip
from hydra_plugins.trtsweep_sweepers._space import config_key  # noqa: E402 - after importorskip
from trtsweep.results import JobResult, TrialStatus  # noqa: E402 - after importorskip

ROOT = Path(__file__).resolve().parents[2]
PYTHONPATH = os.pathsep.join([str(ROOT / "src"), str(ROOT)])  # this checkout's trtsweep, not an installed one
FAST = ["model=digits_cnn", "measure.min_time_s=0.05", "measure.min_iters=10", "measure.repeats=2",
        "measure.warmup_iters=2", "data.eval_samples=64", "data.calibration_samples=16"]


# ---------------------------------------------------------------------------
# helpers
def sweep_cmd(tmp: Path, *overrides: str, study: str = "t", storage: str | None = None,
              mlflow: str | None = None, cache: Path | None = None) -> list[str]:
    return [sys.executable, str(ROOT / "sweep.py"), "-m", "hydra/sweeper=optuna", *FAST,
            f"tracking.uri={mlflow or f'sqlite:///{tmp}/mlflow.db'}", f"cache_dir={cache or tmp / 'cache'}",
            f"hydra.sweeper.storage={storage or f'sqlite:///{tmp}/optuna.db'}",
            f"hydra.sweeper.study_name={study}", f"name={study}", *overrides]


def run(cmd: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def load(storage: str, study: str):
    return optuna.load_study(study_name=study, storage=storage)


def mlflow_runs(uri: str, study: str) -> tuple[list, list]:
    """(parent runs, child runs) of the study's MLflow experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(f"trtsweep/{study}")
    assert exp is not None, f"no MLflow experiment trtsweep/{study}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("trtsweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("trtsweep.role") == "trial"]
    return parents, children


def check_mlflow_children(study_obj, uri: str, study: str) -> None:
    """One parent for the study; every trial's child run under it, tagged with its trial number."""
    parents, children = mlflow_runs(uri, study)
    assert len(parents) == 1, [p.info.run_name for p in parents]
    parent = parents[0]
    assert parent.data.tags["optuna.study"] == study
    by_id = {c.info.run_id: c for c in children}
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    ran = [t for t in study_obj.trials if t.user_attrs.get("status")]
    assert ran, "no trial reached a result"
    for t in ran:
        if t.user_attrs.get("known_from") and not t.user_attrs.get("mlflow_run_id"):
            continue  # told a result measured elsewhere (the warm start's cached one): its child is the measurer's
        run_id = t.user_attrs.get("mlflow_run_id")
        assert run_id in by_id, f"trial #{t.number} ({t.user_attrs.get('status')}) has no child run"
        numbers = by_id[run_id].data.tags["optuna.trial_numbers"].split(",")
        assert str(t.number) in numbers
        assert by_id[run_id].data.tags["optuna.study"] == study
    # one child per measured configuration: a repeated configuration reuses its run (result cache)
    assert len(children) == len({t.user_attrs["trial_key"] for t in ran})


def numbers_unique(study_obj) -> list[int]:
    numbers = [t.number for t in study_obj.trials]
    assert len(numbers) == len(set(numbers)), numbers
    return numbers


# ---------------------------------------------------------------------------
# fast: the pieces
def space(*lines: str):
    return _space.split_space(_space.parse_overrides(list(lines)))


def test_grammar_maps_to_optuna_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    params, fixed = space("engine=tf,tflite", "precision=choice(fp32,int8)", "batch_size=range(1,9,3)",
                          "measure.trim=interval(0.01,0.1)", "x=tag(log,interval(0.001,1))",
                          "y=int(interval(1,64))", "model=digits_cnn", "+extra=choice(1,2)")
    d = {p.name: p.distribution for p in params}
    assert d["engine"] == CategoricalDistribution(["tf", "tflite"])
    assert d["precision"] == CategoricalDistribution(["fp32", "int8"])
    assert d["batch_size"] == IntDistribution(1, 7, step=3)  # range() excludes its stop, like Hydra's grid
    assert d["measure.trim"] == FloatDistribution(0.01, 0.1)
    assert d["x"] == FloatDistribution(0.001, 1.0, log=True)
    assert d["y"] == IntDistribution(1, 64)
    assert fixed == ["model=digits_cnn"]
    extra = next(p for p in params if p.name == "extra")
    assert extra.key == "+extra"
    assert _space.overrides_for(params, {"extra": 2, "engine": "tf"}, fixed) == ["model=digits_cnn", "+extra=2",
                                                                                "engine=tf"]


def test_later_override_of_a_key_wins():
    params, fixed = space("precision=choice(fp32,int8)", "precision=fp16")
    assert params == [] and fixed == ["precision=fp16"]


@pytest.mark.parametrize("line, expected", [
    ("precision=choice()", "empty choice is not legal; fix: list at least one value"),
    ("measure.trim=interval(5,1)", "interval(5.0, 1.0) is reversed"),
    ("batch_size=range(5,1)", "the range is empty"),
    ("x=tag(log,interval(0,1))", "a log interval needs a start > 0"),
    ("x=choice([1,2],[3])", "is not a scalar"),
    ("x=choice(a,a)", "a value appears twice"),
])
def test_invalid_space_names_the_value_and_the_fix(line, expected):
    with pytest.raises(_space.SearchSpaceError) as e:
        space(line)
    assert expected in str(e.value) and "fix:" in str(e.value) and "\n" not in str(e.value)


def test_engine_parameters_are_conditional_on_the_sampled_engine():
    keys = {"tf": {"intra_op_threads"}, "tflite": {"num_threads", "use_xnnpack"}, "onnx": {"intra_op_num_threads"}}
    params, _ = space("engine=choice(tf,tflite,onnx)", "engine.num_threads=choice(1,2)", "precision=fp32,int8")
    _space.attach_engine_conditions(params, keys, fixed_engine=None)
    assert next(p for p in params if p.name == "engine.num_threads").engines == ("tflite",)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        values = _space.suggest(trial, params)
        assert ("engine.num_threads" in values) == (values["engine"] == "tflite")
        seen.add(values["engine"])
        study.tell(trial, 1.0)
    assert seen == {"tf", "tflite", "onnx"}
    # every value of every parameter appears in the validation set, each with an engine that has it
    reps = _space.representative_assignments(params)
    assert {r["engine"] for r in reps} == {"tf", "tflite", "onnx"}
    assert {r.get("engine.num_threads") for r in reps if r["engine"] == "tflite"} == {1, 2}
    assert all("engine.num_threads" not in r for r in reps if r["engine"] != "tflite")


def test_unknown_engine_parameter_is_rejected():
    with pytest.raises(_space.SearchSpaceError,
                       match="nonexistent is not a parameter of engine=tflite; fix: use one of"):
        _space.attach_engine_conditions(space("engine.nonexistent=choice(1,2)")[0], {"tflite": {"num_threads"}},
                                        "tflite")
    with pytest.raises(_space.SearchSpaceError, match="not a parameter of any engine in the search"):
        _space.attach_engine_conditions(space("engine=tf,tflite", "engine.nonexistent=choice(1,2)")[0],
                                    {"tf": {"intra_op_threads"}, "tflite": {"num_threads"}}, None)


def _result(status: str, **metrics) -> JobResult:
    return JobResult(TrialStatus(status), "k", "why" if status != "ok" else None, metrics, mlflow_run_id="r1",
                     cached=True)


def test_trial_outcomes_map_to_optuna_states():
    ok = _outcome.trial_outcome(_result("ok", throughput_ips=100.0, accuracy_drop=0.002), None, "throughput_ips",
                                False, 0.01)
    assert (ok.state, ok.values, ok.feasible) == ("COMPLETE", [100.0], True)
    assert ok.attrs["constraint"] == [pytest.approx(-0.008)] and ok.attrs["cached"] is True
    bad = _outcome.trial_outcome(_result("accuracy_violation", throughput_ips=200.0, accuracy_drop=0.05), None,
                           "throughput_ips", False, 0.01)
    assert (bad.state, bad.feasible, bad.label) == ("COMPLETE", False, "INFEASIBLE")
    assert bad.attrs["constraint"][0] == pytest.approx(0.04)
    assert _outcome.trial_outcome(_result("skipped"), None, "throughput_ips", False, 0.01).state == "PRUNED"
    failed = _outcome.trial_outcome(_result("failed"), None, "throughput_ips", False, 0.01)
    assert failed.state == "FAIL" and failed.attrs["reason"] == "why"
    crashed = _outcome.trial_outcome(None, "RuntimeError: boom", "throughput_ips", False, 0.01)
    assert crashed.state == "FAIL" and crashed.attrs["reason"] == "RuntimeError: boom"
    multi = _outcome.trial_outcome(_result("ok", latency_p99_ms=2.0, accuracy_drop=0.0), None, "latency_p99_ms",
                                   True, 0.01)
    assert multi.values == [2.0, 0.0]
    no_metric = _outcome.trial_outcome(_result("ok", accuracy_drop=0.0), None, "throughput_ips", False, 0.01)
    assert no_metric.state == "FAIL" and "throughput_ips" in no_metric.attrs["reason"]


def test_best_is_the_best_feasible_trial_and_pareto_excludes_infeasible():
    sampler = _study.make_sampler("tpe", seed=0, n_startup_trials=None, n_objectives=1, space=[])
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for value, status, drop in [(100.0, "ok", 0.0), (300.0, "accuracy_violation", 0.2), (150.0, "ok", 0.005)]:
        trial = study.ask()
        outcome = _outcome.trial_outcome(_result(status, throughput_ips=value, accuracy_drop=drop), None,
                                         "throughput_ips", False, 0.01)
        _outcome.tell(study, trial, outcome)
    trial = study.ask()
    _outcome.tell(study, trial, _outcome.trial_outcome(_result("skipped"), None, "throughput_ips", False, 0.01))
    best = study.best_trial  # Optuna's own: the infeasible 300.0 is never the best
    assert best is not None and best.values == [150.0]
    if _outcome.native_constraints():  # Optuna ≥ 5: the sampler and Optuna's own best_trial see the constraint too
        assert study.trials[1].constraints == {"accuracy_drop": pytest.approx(0.19)}
    assert _report.best_and_front(study) == (best, [])
    front = study.best_trials
    assert [t.values[0] for t in front] == [150.0]
    lines = _report.summary_lines(study.trials, best, [], "s", "throughput_ips", 4)
    assert "complete=2, infeasible=1, failed=0, skipped(pruned)=1" in lines[0] and "trial #2" in lines[1]


def test_multi_objective_front_is_optunas_and_excludes_infeasible():
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for value, status, drop in [(100.0, "ok", 0.0), (300.0, "accuracy_violation", 0.2), (150.0, "ok", 0.005),
                                (120.0, "ok", 0.008)]:
        trial = study.ask()
        _outcome.tell(study, trial, _outcome.trial_outcome(_result(status, throughput_ips=value, accuracy_drop=drop),
                                                           None, "throughput_ips", True, 0.01))
    best, front = _report.best_and_front(study)
    assert [t.values for t in front] == [[100.0, 0.0], [150.0, 0.005]]  # 300 is infeasible, 120 dominated
    assert best.values == [150.0, 0.005]
    assert _report.study_table(study)["feasible"].tolist() == [True, False, True, True]


def test_sampler_is_a_target_node_built_by_instantiate():
    from omegaconf import OmegaConf

    for name, cls in [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
                      ("cmaes", optuna.samplers.CmaEsSampler), ("nsgaii", optuna.samplers.NSGAIISampler)]:
        assert _study.SAMPLERS[name]["_target_"] == f"optuna.samplers.{cls.__name__}"
        assert type(_study.make_sampler(name, 1, 5, 1, [])) is cls
    assert _study.make_sampler("tpe", 1, 7, 1, [])._n_startup_trials == 7  # the sweeper's setting is filled in
    node = OmegaConf.create({"_target_": "optuna.samplers.QMCSampler", "scramble": True})  # the user's own node
    qmc = _study.make_sampler(node, 3, 5, 1, [])
    assert isinstance(qmc, optuna.samplers.QMCSampler) and qmc._seed == 3  # seed filled; QMC takes no n_startup
    tpe = _study.make_sampler({"_target_": "optuna.samplers.TPESampler", "n_startup_trials": 2}, None, 5, 1, [])
    assert tpe._n_startup_trials == 2  # the node's own value wins
    for sampler, expected in [("bogus", "hydra.sweeper.sampler=bogus is unknown; fix: use one of tpe, random"),
                              ({"seed": 1}, "neither a name nor a node with _target_"),
                              ({"_target_": "optuna.samplers.Nope"}, "cannot be loaded"),
                              ({"_target_": "optuna.samplers.RandomSampler", "bogus": 1}, "cannot be built")]:
        with pytest.raises(_space.SearchSpaceError, match="fix:") as e:
            _study.make_sampler(sampler, None, None, 1, [])
        assert expected in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(_space.SearchSpaceError, match="sampler=cmaes is single-objective"):
        _study.make_sampler("cmaes", None, None, 2, [])


def test_the_sweeper_is_built_from_its_config_node_with_the_dataclass_defaults():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from hydra_plugins.trtsweep_sweepers.optuna import OptunaSweeper, OptunaSweeperConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True, overrides=[
            "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3",
            "hydra.sweeper.sampler={_target_:optuna.samplers.QMCSampler,scramble:true}"])
    sweeper = instantiate(cfg.hydra.sweeper)
    assert type(sweeper).__name__ == "OptunaSweeper"  # (Hydra's plugin scan loads its own copy of the module)
    conf = sweeper.sweeper.conf
    assert conf.n_trials == 3 and conf.study_name == f"trtsweep-{cfg.name}"  # the dataclass's default, resolved
    assert conf.max_retry == OptunaSweeperConf.max_retry and conf.params == {}
    assert OmegaConf.to_container(conf.sampler) == {"_target_": "optuna.samplers.QMCSampler", "scramble": True}
    # no default repeated outside the dataclass (compared by value: Hydra's scan re-executed the module)
    assert vars(OptunaSweeper().sweeper.conf) == vars(OptunaSweeperConf())


def test_grid_sampler_needs_finite_values():
    params, _ = space("measure.trim=interval(0.01,0.1)")
    with pytest.raises(_space.SearchSpaceError, match="sampler=grid needs a finite set of values"):
        _study.make_sampler("grid", None, None, 1, params)
    params = space("a=range(1,4)", "b=choice(x,y)")[0]
    study = optuna.create_study(sampler=_study.make_sampler("grid", 0, None, 1, params))
    seen = set()
    while not study.sampler.is_exhausted(study):  # told outside optimize(): the last point must not raise
        trial = study.ask()
        values = _space.suggest(trial, params)
        seen.add((values["a"], values["b"]))
        _outcome.tell(study, trial, _outcome.trial_outcome(_result("ok", throughput_ips=1.0), None, "throughput_ips",
                                                           False, 0.01))
    assert seen == {(a, b) for a in (1, 2, 3) for b in ("x", "y")}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_a_trial_orphaned_before_its_first_heartbeat_is_failed_and_requeued(tmp_path):
    """Killed between ask() and the first heartbeat: Optuna's stale check never sees it; ours does."""
    import datetime

    storage = _study.open_storage(f"sqlite:///{tmp_path}/o.db", heartbeat_interval=1, grace_period=2, max_retry=1)
    study = optuna.create_study(storage=storage, study_name="orphan")
    orphan = study.ask({"x": optuna.distributions.IntDistribution(1, 3)})  # no heartbeat, no worker attribute
    alive = study.ask()
    alive.set_user_attr("worker", "host:1")  # a live worker marks its trial at once
    assert _study.fail_orphaned_trials(study, storage, 2) == []  # too young to be called orphaned
    later = datetime.datetime.now() + datetime.timedelta(seconds=5)
    assert _study.fail_orphaned_trials(study, storage, 2, now=later) == [orphan.number]
    trials = study.get_trials()
    assert trials[orphan.number].state.name == "FAIL" and trials[alive.number].state.name == "RUNNING"
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retry) == 1 and retry[0].state.name == "WAITING" and retry[0].params == orphan.params
    assert _study.fail_orphaned_trials(study, storage, 2, now=later) == []  # once only


# ---------------------------------------------------------------------------
# slow: real sweeps
@pytest.mark.slow
@pytest.mark.usefixtures("seeded_cache")
def test_search_ends_with_a_feasible_best_and_one_mlflow_child_per_trial(tmp_path):
    t0 = time.time()
    cmd = sweep_cmd(tmp_path, "engine=choice(tf,tflite)", "precision=choice(fp32,int8)", "batch_size=choice(1,8)",
                    "hydra.sweeper.n_trials=8", "hydra.sweeper.seed=0", study="search")
    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(f"sqlite:///{tmp_path}/optuna.db", "search")
    numbers_unique(study)
    configs = {_space.config_key(t.params) for t in study.trials}
    assert len(configs) == 8  # the whole space: 6 measured + 2 skipped (engine=tf int8) are free
    run_here = [t for t in study.trials if "known_from" not in t.user_attrs]  # the rest: repeats, told
    assert len(run_here) == 8 and len({_space.config_key(t.params) for t in run_here}) == 8
    assert "space exhausted: all 8 configuration(s) measured" in proc.stdout
    states = {t.state.name for t in study.trials}
    assert states <= {"COMPLETE", "PRUNED"}, [(t.number, t.state.name, t.user_attrs.get("reason"))
                                              for t in study.trials]
    for t in study.trials:  # PRUNED: skipped (engine=tf precision=int8), or stopped after a step; with the reason
        status = t.user_attrs["status"]
        assert (t.state.name == "PRUNED") == (status in ("skipped", "pruned"))
        if status == "skipped":
            assert "precision=int8" in t.user_attrs["reason"]
        if status == "pruned":
            assert "pruned after" in t.user_attrs["reason"] and t.user_attrs["throughput_ips"] > 0
    best = study.best_trial  # Optuna's own choice, constraint-aware
    assert best is not None and best.user_attrs["status"] == "ok" and best.user_attrs["constraint"][0] <= 0
    feasible = [t.values[0] for t in study.trials if t.state.name == "COMPLETE" and t.user_attrs["constraint"][0] <= 0]
    assert best.values[0] == max(feasible)
    assert f"optuna best: trial #{best.number} throughput_ips=" in proc.stdout
    check_mlflow_children(study, f"sqlite:///{tmp_path}/mlflow.db", "search")
    parents, children = mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db", "search")
    best_runs = [c for c in children if c.data.tags.get("optuna.best") == "true"]
    assert [r.info.run_id for r in best_runs] == [best.user_attrs["mlflow_run_id"]]
    from mlflow.tracking import MlflowClient

    artifacts = {a.path for a in MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").list_artifacts(parents[0].info.run_id)}
    assert {"optuna_trials.csv", "optuna_history.png", "results.csv"} <= artifacts
    assert parents[0].data.metrics["optuna.best_value"] == best.values[0]
    assert list((tmp_path / "outputs" / "multirun").rglob("results.csv")), "finish_sweep wrote no results.csv"
    print(f"search: {time.time() - t0:.0f} s")


@pytest.mark.slow
@pytest.mark.usefixtures("seeded_cache")
@pytest.mark.parametrize("override, expected", [
    # on the command line Hydra itself rejects `precision=choice()` before any sweeper runs; from a preset's
    # hydra.sweeper.params (here: the same, added on the command line) the sweeper reports it
    ("+hydra.sweeper.params.precision='choice()'", "empty choice is not legal"),
    ("measure.trim=interval(5,1)", "interval(5.0, 1.0) is reversed"),
    ("engine.nonexistent=choice(1,2)", "nonexistent is not a parameter of engine=tflite"),
    ("batch_size=range(0,3)", "batch_size=0 is invalid"),
    ("hydra.sweeper.objective=speed", "hydra.sweeper.objective=speed is unknown"),
    ("hydra.sweeper.sampler=cmaes", "sampler=cmaes cannot model categorical parameters (precision)"),
])
def test_invalid_space_fails_before_the_first_trial(tmp_path, override, expected):
    cmd = sweep_cmd(tmp_path, "engine=tflite", "precision=choice(fp32,int8)", override, study="bad")
    proc = run(cmd, tmp_path, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("trtsweep: error: ") and expected in lines[0], proc.stderr
    assert "fix:" in lines[0]
    db = tmp_path / "optuna.db"
    assert not db.exists() or optuna.study.get_all_study_names(f"sqlite:///{db}") == []
    assert not (tmp_path / "cache" / "results").exists() or not any((tmp_path / "cache" / "results").iterdir())


@pytest.mark.slow
@pytest.mark.usefixtures("seeded_cache")
def test_killed_study_resumes_and_the_interrupted_trial_is_not_lost(tmp_path):
    """SIGKILL of the whole sweep while its second trial is measured, then the same command: the finished trial
    is not measured again, the interrupted one is retried once, the MLflow parent is reused, no result twice."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    cmd = sweep_cmd(tmp_path, "engine=tflite", "precision=choice(fp32,fp16)", "batch_size=choice(1,8)",
                    "hydra.sweeper.n_trials=2", "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2",
                    "hydra.sweeper.seed=3", study="resume")
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "TF_CPP_MIN_LOG_LEVEL": "3"}
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    killed = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:
            try:  # a trial that is being measured (launched: it has its overrides) after one that finished
                trials = load(storage, "resume").trials
            except Exception:  # noqa: BLE001 - the study does not exist yet
                trials = []
            complete = [t for t in trials if t.state.name == "COMPLETE" and "worker" in t.user_attrs]
            running = [t for t in trials if t.state.name == "RUNNING" and "overrides" in t.user_attrs]
            if complete and running:
                killed = running[0]
                os.killpg(first.pid, signal.SIGKILL)  # the whole process group: sweeper and its trial worker
                break
            time.sleep(0.1)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
    assert killed is not None, "the first run never had a RUNNING trial after a COMPLETE one"
    assert load(storage, "resume").trials[killed.number].state.name == "RUNNING"  # left behind by the kill
    finished = {t.user_attrs["trial_key"] for t in complete}
    parent_id = mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db", "resume")[0][0].info.run_id

    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(storage, "resume")
    numbers_unique(study)
    assert not [t for t in study.trials if t.state.name == "RUNNING"]  # (WAITING: neighbours queued, not run)
    assert study.trials[killed.number].state.name == "FAIL"
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1, "the interrupted trial was not retried"
    assert retries[0].state.name == "COMPLETE" and retries[0].params == killed.params
    later = [t for t in study.trials[killed.number + 1:] if "worker" in t.user_attrs]  # run by the second run
    # measured = neither told an earlier trial's outcome nor served from the result cache
    measured = [t for t in later if "known_from" not in t.user_attrs and not t.user_attrs.get("cached")]
    assert len(measured) == 2, [(t.number, t.state.name, t.user_attrs) for t in study.trials]  # n_trials=2
    assert not [t.number for t in measured if t.user_attrs.get("trial_key") in finished]
    assert sum(t.params == killed.params for t in measured) == 1  # the interrupted one: once
    parents, _ = mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db", "resume")
    assert len(parents) == 1, "the resumed study did not find its MLflow parent run"
    assert parents[0].info.run_id == parent_id
    check_mlflow_children(study, f"sqlite:///{tmp_path}/mlflow.db", "resume")  # one child per trial key


# ---------------------------------------------------------------------------
# postgres: two workers, one study
@pytest.fixture
def pg_urls(request):
    """Two fresh databases on the server of TRTSWEEP_TEST_PG_URL (else on a server of this test's own, see
    :func:`own_postgres`): (optuna storage URL, MLflow URL)."""
    url = os.environ.get("TRTSWEEP_TEST_PG_URL") or request.getfixturevalue("own_postgres").url
    psycopg2 = pytest.importorskip("psycopg2")
    from sqlalchemy.engine import make_url

    base = make_url(url)
    try:
        conn = psycopg2.connect(base.set(drivername="postgresql").render_as_string(hide_password=False),
                                connect_timeout=5)
    except psycopg2.Error as e:
        pytest.skip(f"PostgreSQL at {base.render_as_string(hide_password=True)} is unreachable: "
                    f"{str(e).strip().splitlines()[0]}")
    conn.autocommit = True
    names = [f"trtsweep_test_{uuid.uuid4().hex[:10]}_{kind}" for kind in ("optuna", "mlflow")]
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute(f'CREATE DATABASE "{name}"')
    except psycopg2.Error as e:
        conn.close()
        pytest.skip(f"cannot create a test database on {base.render_as_string(hide_password=True)}: {e}")
    # psycopg2 explicitly: SQLAlchemy ≥ 2.1 maps a bare postgresql:// to psycopg 3
    yield tuple(base.set(drivername="postgresql+psycopg2", database=n).render_as_string(hide_password=False)
                for n in names)
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


@pytest.mark.slow
@pytest.mark.postgres
def test_four_workers_share_one_postgres_study_and_one_mlflow_store(tmp_path, pg_urls, seeded_cache):
    """Four sweeps started together on one PostgreSQL study, one MLflow store and one cache: together they
    measure exactly 4 × n_trials configurations, none twice, each logged once under one parent run."""
    storage, mlflow_uri = pg_urls
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=mlflow_uri).search_experiments()  # create MLflow's schema once, before the workers
    workers, per_worker = 4, 1  # 4 sweeps of TF start-up on 2 cores: one measurement each proves the sharing
    procs = []
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MLFLOW_TRACKING_URI", None)
    for i in range(workers):  # own working directory each; one study, one MLflow store, one cache
        wd = tmp_path / f"worker{i}"
        wd.mkdir()
        cmd = sweep_cmd(wd, "engine=tflite", "precision=choice(fp32,fp16,int8_dynamic)",
                        "batch_size=choice(1,2,4,8)", f"hydra.sweeper.n_trials={per_worker}",
                        f"hydra.sweeper.seed={i}", study="shared", storage=storage, mlflow=mlflow_uri,
                        cache=seeded_cache)
        procs.append(subprocess.Popen(cmd, cwd=wd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    study = load(storage, "shared")
    numbers_unique(study)
    # n_trials counts measurements: repeats are told the earlier figures, results another worker cached are
    # free, and a configuration another worker is measuring right now is failed at once (none of these count)
    ran = [t for t in study.trials if "worker" in t.user_attrs]
    measured = [t for t in ran if t.user_attrs.get("status") in ("ok", "accuracy_violation", "pruned")
                and "known_from" not in t.user_attrs and not t.user_attrs.get("cached")]
    assert len(measured) == workers * per_worker, [(t.number, t.state.name, t.user_attrs) for t in study.trials]
    assert len({t.user_attrs["worker"] for t in ran}) == workers
    assert len({config_key(t.params) for t in measured}) == len(measured)  # none measured twice
    for t in study.trials:  # WAITING: a warm-start or neighbour enqueued for a trial no worker had left
        assert t.state.name in ("COMPLETE", "PRUNED", "WAITING") or \
            "another worker is measuring" in t.user_attrs.get("reason", ""), (t.number, t.state.name, t.user_attrs)
    check_mlflow_children(study, mlflow_uri, "shared")  # one parent; one child per measured configuration
    converted = sum(err.count("[worker] converting ") for _, err in outs)
    artifacts = list((seeded_cache / "artifacts" / "tflite").glob("*/conversion.json"))
    assert converted == len(artifacts) <= 3  # one conversion per precision, shared through the cache lock


# ---------------------------------------------------------------------------
# postgres: the study's database restarts mid-study
class OwnPostgres:
    """A throwaway PostgreSQL cluster of this test (run as user ``postgres``), which the test stops and starts."""

    def __init__(self, bindir: Path, data: Path, port: int):
        self.bindir, self.data, self.port = bindir, data, port
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"

    def pg(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["su", "postgres", "-c", shlex.join(args)], capture_output=True, text=True,
                              timeout=timeout)

    def start(self) -> None:
        r = self.pg(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.data / "log"), "-w",
                    "-o", f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1", "start")
        assert r.returncode == 0, r.stdout + r.stderr

    def stop(self) -> None:
        r = self.pg(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def own_postgres():
    """A fresh PostgreSQL server on a free port (needs root, a ``postgres`` user, the server binaries and
    psycopg2; skipped with the reason otherwise)."""
    import pwd
    import shutil
    import socket
    import tempfile

    ctls = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if not ctls:
        pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin); apt-get install postgresql")
    if os.geteuid() != 0:
        pytest.skip("starting a PostgreSQL server of its own needs root (to run it as user postgres)")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no user postgres to run the server as")
    pytest.importorskip("psycopg2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = Path(tempfile.mkdtemp(prefix="trtsweep-pg-"))  # not under tmp_path: user postgres cannot enter that
    os.chown(data, user.pw_uid, user.pw_gid)
    server = OwnPostgres(ctls[-1].parent, data, port)
    r = server.pg(str(server.bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    if r.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(f"initdb failed: {(r.stderr or r.stdout).strip()[-300:]}")
    server.start()
    yield server
    server.pg(str(server.bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
    shutil.rmtree(data, ignore_errors=True)


def running_trials(proc: subprocess.Popen, storage: str, study: str, timeout: float = 400) -> list:
    """The study's trials being measured, once there is one (empty if the sweep ended or ``timeout`` passed)."""
    deadline = time.time() + timeout
    running: list = []
    while time.time() < deadline and proc.poll() is None and not running:
        time.sleep(0.5)
        try:
            running = [t for t in load(storage, study).trials
                       if t.state.name == "RUNNING" and "overrides" in t.user_attrs]
        except Exception:  # noqa: BLE001 - the study does not exist yet
            running = []
    return running


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.usefixtures("seeded_cache")
def test_study_survives_a_restart_of_its_postgres_database(tmp_path, own_postgres):
    """The PostgreSQL server is stopped while a trial is measured and started again 8 s later: the worker's
    storage calls wait for it (heartbeats included) and the study ends with every trial, none lost or doubled."""
    n = 3
    cmd = sweep_cmd(tmp_path, "engine=tflite", "precision=choice(fp32,fp16,int8_dynamic)", "batch_size=choice(1,8)",
                    f"hydra.sweeper.n_trials={n}", "hydra.sweeper.heartbeat_interval=1",
                    "hydra.sweeper.grace_period=60", "hydra.sweeper.seed=5", study="restart", storage=own_postgres.url)
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = tmp_path / "sweep.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            running = running_trials(proc, own_postgres.url, "restart")
            assert running, "no trial was measured:\n" + log_path.read_text()[-3000:]
            own_postgres.stop()  # mid-trial: its heartbeats, then its tell, meet a dead server
            time.sleep(8)
            own_postgres.start()
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
    out = log_path.read_text()
    assert proc.returncode == 0, out[-3000:]
    assert "is unreachable" in out and "is reachable again" in out, out[-3000:]  # it did meet the outage
    study = load(own_postgres.url, "restart")
    numbers_unique(study)
    assert [t.state.name for t in study.trials if t.state.name not in ("COMPLETE", "PRUNED")] == []
    measured = [t for t in study.trials if "known_from" not in t.user_attrs and not t.user_attrs.get("cached")]
    assert len(measured) == n, [(t.number, t.state.name, t.user_attrs) for t in study.trials]
    assert running[0].number in [t.number for t in measured]  # the trial measured during the outage was told
    check_mlflow_children(study, f"sqlite:///{tmp_path}/mlflow.db", "restart")


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.usefixtures("seeded_cache")
def test_a_long_database_outage_stops_the_worker_with_one_line_and_the_same_command_resumes(tmp_path, own_postgres):
    """The server stays down longer than the worker waits (5 s here, TRTSWEEP_TEST_STORAGE_RETRY_S): one error
    line, exit 2; with the server back, the same command resumes and the trial of the outage is not lost."""
    cmd = sweep_cmd(tmp_path, "engine=tflite", "precision=choice(fp32,fp16,int8_dynamic)", "batch_size=choice(1,8)",
                    "hydra.sweeper.n_trials=2", "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2",
                    "hydra.sweeper.seed=7", study="outage", storage=own_postgres.url)
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "TF_CPP_MIN_LOG_LEVEL": "3", "TRTSWEEP_TEST_STORAGE_RETRY_S": "5"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        running = running_trials(proc, own_postgres.url, "outage")
        assert running, "no trial was measured"
        own_postgres.stop()
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        own_postgres.start()
    assert proc.returncode == 2, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("trtsweep: error:")]
    assert len(errors) == 1, out[-3000:]
    assert "was unreachable for 5 s" in errors[0] and "run the same command again" in errors[0], errors
    assert "Traceback" not in out, out[-3000:]
    lost = running[0]
    assert load(own_postgres.url, "outage").trials[lost.number].state.name == "RUNNING"  # left by the outage

    again = run(cmd, tmp_path, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    study = load(own_postgres.url, "outage")
    numbers_unique(study)
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    assert study.trials[lost.number].state.name == "FAIL"
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == lost.number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE" and retries[0].params == lost.params
    parents, _ = mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db", "outage")
    assert len(parents) == 1
    check_mlflow_children(study, f"sqlite:///{tmp_path}/mlflow.db", "outage")
