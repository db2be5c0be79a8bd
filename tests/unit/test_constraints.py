"""Constraints besides accuracy (``constraints.max_*``): config validation, the one judging function, and
every place that must respect it — the runner (fresh and cached results), the tables, ``compare``,
confirmation candidates, MLflow metrics and the Optuna sweeper's constraints."""

from __future__ import annotations

import logging
import time

import optuna
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from hydra_plugins.trtsweep_sweepers import _outcome
from trtsweep import app, confirm, report, runner
from trtsweep.cli import main
from trtsweep.config import (
    DataConfig,
    FidelityConfig,
    MeasureConfig,
    ModelConfig,
    TrialConfig,
    TrialSpec,
    plan_trial,
)
from trtsweep.constraints import ConstraintsConfig, plan_notes, verdict, violations
from trtsweep.entry import CONF_DIR
from trtsweep.errors import ConfigError
from trtsweep.results import JobResult, TrialResult, TrialStatus
from trtsweep.tracking import _violation_metrics

METRICS = {"latency_p99_ms": 12.3, "peak_rss_mb": 900.0, "model_size_mb": 0.5, "accuracy_drop": 0.002}


def cfg(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return app.job_config(compose("config", overrides=list(overrides)))


# ---- the judging functions ----
def test_violations_cover_the_bounds_that_are_set_and_whose_metric_is_present():
    bounds = ConstraintsConfig(max_latency_p99_ms=10, max_model_size_mb=2, max_gpu_memory_mb=100)
    v = violations(METRICS, bounds, 0.01)
    # accuracy first; peak_rss_mb has no bound; gpu_memory_mb has a bound but no metric (a CPU trial)
    assert list(v) == ["accuracy_drop", "latency_p99_ms", "model_size_mb"]
    assert v["accuracy_drop"] == pytest.approx(-0.008)
    assert v["latency_p99_ms"] == pytest.approx(2.3) and v["model_size_mb"] == pytest.approx(-1.5)
    assert violations(METRICS, None, None) == {}  # no bound: nothing to judge
    assert violations({"latency_p99_ms": float("nan")}, {"max_latency_p99_ms": 1}, None) == {}  # a mapping works too


def test_verdict_accuracy_wins_every_violation_is_listed():
    assert verdict(METRICS, ConstraintsConfig(max_latency_p99_ms=20), 0.01) == (TrialStatus.OK, None)
    status, reason = verdict(METRICS, ConstraintsConfig(max_latency_p99_ms=10), 0.01)
    assert status == TrialStatus.INFEASIBLE
    assert reason == "latency_p99_ms=12.3 > constraints.max_latency_p99_ms=10 (+23%)"
    status, reason = verdict(METRICS, ConstraintsConfig(max_latency_p99_ms=10, max_peak_rss_mb=500), 0.01)
    assert status == TrialStatus.INFEASIBLE and "; peak_rss_mb=900 > constraints.max_peak_rss_mb=500 (+80%)" in reason
    status, reason = verdict({**METRICS, "accuracy_drop": 0.05}, ConstraintsConfig(max_latency_p99_ms=10), 0.01)
    assert status == TrialStatus.ACCURACY_VIOLATION
    assert reason == ("accuracy_drop=0.0500 > fidelity.max_accuracy_drop=0.01; "
                      "latency_p99_ms=12.3 > constraints.max_latency_p99_ms=10 (+23%)")


# ---- config ----
@pytest.mark.parametrize("override,message", [
    ("constraints.max_latency_p99_ms=0", "constraints.max_latency_p99_ms=0 is invalid: must be > 0; "
                                         "fix: constraints.max_latency_p99_ms=10 (or null for no bound)"),
    ("constraints.max_peak_rss_mb=-5", "constraints.max_peak_rss_mb=-5 is invalid: must be > 0; "
                                       "fix: constraints.max_peak_rss_mb=4000"),
    ("constraints.max_model_size_mb=big", "constraints.max_model_size_mb='big' must be a number"),
    ("constraints.max_gpu_memory_mb=0", "constraints.max_gpu_memory_mb=0 is invalid"),
    ("+constraints.max_latency_p50_ms=1", "constraints.max_latency_p50_ms is not a known setting; "
                                          "fix: use one of max_gpu_memory_mb, max_latency_p99_ms"),
])
def test_invalid_bounds_fail_at_config_time_in_one_line(override, message):
    with pytest.raises(ConfigError) as e:
        plan_trial(cfg("engine=tflite", override))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_bounds_default_to_none_and_are_not_part_of_the_result_identity():
    plain = plan_trial(cfg("engine=tflite"))
    assert plain.constraints == ConstraintsConfig()
    bound = plan_trial(cfg("engine=tflite", "constraints.max_latency_p99_ms=5", "constraints.max_peak_rss_mb=100"))
    assert bound.constraints.bounds() == {"latency_p99_ms": 5.0, "peak_rss_mb": 100.0}
    assert bound.trial_key() == plain.trial_key()  # the same measurement, served from the cache
    assert TrialSpec.from_dict(bound.to_dict()).constraints == bound.constraints  # what the worker gets


def test_a_gpu_bound_is_a_plan_note_once_for_cpu_engines(caplog):
    specs = [plan_trial(cfg(f"engine={e}", "constraints.max_gpu_memory_mb=4000")) for e in ("tflite", "onnx")]
    notes = plan_notes(specs)
    assert notes == ["constraints.max_gpu_memory_mb=4000 applies to GPU engines only (tftrt): onnx, tflite trials "
                     "are never judged by it"]
    assert plan_notes([plan_trial(cfg("engine=tftrt", "constraints.max_gpu_memory_mb=4000"))]) == []
    assert plan_notes([plan_trial(cfg("engine=tflite"))]) == []
    app._SAID.discard(notes[0])
    with caplog.at_level(logging.INFO, logger="trtsweep"):
        app.say_plan_notes(specs)
        app.say_plan_notes(specs)  # a sweeper plans more than once: said once
    assert [r.getMessage() for r in caplog.records].count(f"plan: {notes[0]}") == 1


def test_tftrt_reports_its_peak_gpu_memory_only_on_gpu():
    from types import SimpleNamespace

    from trtsweep.engines.tftrt import TFTRTEngine, TFTRTModel

    asked = []
    fake_tf = SimpleNamespace(config=SimpleNamespace(experimental=SimpleNamespace(
        get_memory_info=lambda device: asked.append(device) or {"current": 1, "peak": 3 * 2**20})))
    model = TFTRTModel.__new__(TFTRTModel)  # no TensorRT here: the loaded model's state, as __init__ sets it
    model._tf, model._device = fake_tf, "/GPU:0"
    assert model.run_metrics() == {"gpu_memory_mb": 3.0} and asked == ["GPU:0"]
    model._device = "/CPU:0"
    assert model.run_metrics() == {}
    assert TFTRTEngine.reports_gpu_memory and not plan_trial(cfg("engine=tflite")).constraints.max_gpu_memory_mb


# ---- the runner: a cached result is judged again under the current bounds ----
def _spec(cache_dir, **bounds) -> TrialSpec:
    return TrialSpec(
        model=ModelConfig(name="digits_cnn", source="digits_cnn"), engine="tflite",
        engine_params={"num_threads": 1, "use_xnnpack": True, "allow_tf_ops": True, "int8_io": False},
        precision="fp32", batch_size=1, data=DataConfig(name="digits"), measure=MeasureConfig(),
        fidelity=FidelityConfig(), trial=TrialConfig(), cache_dir=str(cache_dir),
        constraints=ConstraintsConfig(**bounds))


def test_a_cached_result_is_judged_under_the_current_bounds_without_a_worker(tmp_path):
    free = _spec(tmp_path)
    measured = TrialResult(free.trial_key(), TrialStatus.OK, free.to_dict(), metrics=dict(METRICS),
                           started_at=time.time(), mlflow_run_ids={"parent": "child"})
    runner.save_result(measured, str(tmp_path))
    before = runner._POOL.proc if runner._POOL else None
    tight = runner.execute(_spec(tmp_path, max_latency_p99_ms=10))
    assert tight.cached and tight.status == TrialStatus.INFEASIBLE
    assert tight.reason == "latency_p99_ms=12.3 > constraints.max_latency_p99_ms=10 (+23%)"
    assert tight.spec["constraints"]["max_latency_p99_ms"] == 10  # the bounds it was judged under
    assert tight.mlflow_run_ids == {}  # its child runs show the old verdict: found again by trial key, updated
    again = runner.execute(free)
    assert again.cached and again.status == TrialStatus.OK and again.reason is None
    assert again.mlflow_run_ids == {"parent": "child"}  # same verdict as stored: the links stay
    runner.save_result(tight, str(tmp_path))  # an infeasible result is a complete measurement: served as one
    assert runner.execute(free).status == TrialStatus.OK
    assert (runner._POOL.proc if runner._POOL else None) is before  # nothing was measured


def test_mlflow_violation_metrics_only_where_violated(tmp_path):
    spec = _spec(tmp_path, max_latency_p99_ms=10, max_model_size_mb=2)
    res = TrialResult("k", TrialStatus.INFEASIBLE, spec.to_dict(), metrics=dict(METRICS))
    assert _violation_metrics(res, spec) == {"violation_latency_p99_ms": pytest.approx(2.3)}
    assert _violation_metrics(TrialResult("k", TrialStatus.FAILED, spec.to_dict()), spec) == {}


def test_a_changed_verdict_updates_the_child_run_without_a_stale_reason_or_violation(tmp_path):
    import dataclasses

    from trtsweep.config import TrackingConfig
    from trtsweep.tracking import Tracker

    tracker = Tracker(TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="c", log_models=False))
    parent = tracker.parent_run("sweep", "sweep")
    tight = _spec(tmp_path, max_latency_p99_ms=10)
    now = time.time()
    res = TrialResult(tight.trial_key(), TrialStatus.OK, tight.to_dict(), metrics=dict(METRICS), started_at=now,
                      ended_at=now)
    runner.judge(res, tight)
    run_id = tracker.log_trial(parent, res, tight)
    data = tracker.client.get_run(run_id).data
    assert data.tags["status"] == "infeasible" and data.tags["reason"].startswith("latency_p99_ms=12.3")
    assert data.metrics["violation_latency_p99_ms"] == pytest.approx(2.3)
    free = dataclasses.replace(tight, constraints=ConstraintsConfig())
    runner.judge(res, free)  # the cached result under the current (no) bounds: ok, logged under the same parent
    assert tracker.log_trial(parent, res, free) == run_id
    data = tracker.client.get_run(run_id).data
    assert data.tags["status"] == "ok" and "reason" not in data.tags
    assert data.metrics["violation_latency_p99_ms"] == 0.0


# ---- tables: the best and the confirmation candidates are never over a bound ----
def _record(engine, precision, tput, p99, status="ok", bounds=None, drop=0.0):
    bounds = bounds or {}
    metrics = {"throughput_ips": tput, "latency_p50_ms": p99 / 2, "latency_p99_ms": p99, "accuracy_drop": drop,
               "top1_agreement": 1 - drop, "throughput_ci_low": tput * 0.99, "throughput_ci_high": tput * 1.01}
    if status == "ok":  # as the runner judges it
        status = str(verdict(metrics, bounds, 0.01)[0])
    return {"trial_key": f"{engine}-{precision}", "status": status, "reason": None,
            "spec": {"model": {"name": "m"}, "engine": engine, "precision": precision, "batch_size": 1,
                     "data": {"name": "digits"}, "engine_params": {}, "fidelity": {"max_accuracy_drop": 0.01},
                     "constraints": bounds},
            "metrics": metrics}


def test_an_infeasible_trial_is_never_best_nor_a_confirmation_candidate():
    bounds = {"max_latency_p99_ms": 5.0}
    recs = [_record("tf", "fp32", 100, 20, bounds=bounds), _record("tflite", "int8", 900, 6, bounds=bounds),
            _record("tflite", "fp32", 300, 4, bounds=bounds), _record("onnx", "fp32", 290, 4.5, bounds=bounds)]
    df = report.table(recs)
    assert df.set_index("trial_key").loc["tflite-int8", "status"] == "infeasible"
    assert df.set_index("trial_key").loc["tflite-int8", "violates"] == "latency_p99_ms"
    best = report.best_per_model(df)
    assert best.trial_key.tolist() == ["tflite-fp32"]  # not the 3x faster int8 that is over the bound
    # the infeasible TF FP32 baseline still is the speed-up's reference
    assert best.speedup_vs_tf_fp32.iloc[0] == pytest.approx(3.0)
    assert "tflite-int8" not in set(report.pareto_front(df).trial_key)
    text = report.summary_text(df)
    assert "best for m bs=1: engine=tflite precision=fp32" in text
    assert "infeasible: 2 trial(s) measured but over a bound (constraints.max_latency_p99_ms ×2)" in text
    rows = [report.row(r) for r in recs]
    assert [r["trial_key"] for r in confirm.select(rows, top_k=3)] == ["tflite-fp32", "onnx-fp32"]


def test_judge_applies_other_bounds_to_a_table_and_keeps_the_recorded_accuracy_verdict():
    recs = [_record("tflite", "fp32", 300, 4), _record("tflite", "int8", 900, 6, status="accuracy_violation",
                                                        drop=0.05)]
    recs[1]["reason"] = "accuracy_drop=0.0500 > fidelity.max_accuracy_drop=0.01"
    df = report.table(recs)
    judged = report.judge(df, ConstraintsConfig(max_latency_p99_ms=5))
    j = judged.set_index("trial_key")
    assert j.loc["tflite-fp32", "status"] == "ok"
    assert j.loc["tflite-int8", "status"] == "accuracy_violation"
    assert j.loc["tflite-int8", "reason"] == ("accuracy_drop=0.0500 > fidelity.max_accuracy_drop=0.01; "
                                              "latency_p99_ms=6 > constraints.max_latency_p99_ms=5 (+20%)")
    relaxed = report.judge(df, None, max_accuracy_drop=0.1).set_index("trial_key")
    assert relaxed.loc["tflite-int8", "status"] == "ok"  # judged anew with the accuracy bound given


def _csv(path, rows):
    pd.DataFrame([{"model": "m", "batch_size": 1, "data": "digits", "status": "ok", "accuracy_drop": 0.0,
                   "top1_agreement": 1.0, "host.cpu_model": "A", "host.cpu_flags": "avx2", **r} for r in rows]
                 ).to_csv(path, index=False)
    return str(path)


def test_compare_judges_both_files_with_the_bounds_and_names_the_violated_one(tmp_path, capsys):
    base = _csv(tmp_path / "base.csv", [
        {"engine": "tflite", "precision": "int8", "throughput_ips": 1000.0, "latency_p50_ms": 1.0,
         "latency_p99_ms": 2.0},
        {"engine": "tflite", "precision": "fp32", "throughput_ips": 500.0, "latency_p50_ms": 2.0,
         "latency_p99_ms": 3.0}])
    now = _csv(tmp_path / "now.csv", [
        {"engine": "tflite", "precision": "int8", "throughput_ips": 1000.0, "latency_p50_ms": 1.0,
         "latency_p99_ms": 8.0},  # as fast on average, but its tail is over the bound
        {"engine": "tflite", "precision": "fp32", "throughput_ips": 500.0, "latency_p50_ms": 2.0,
         "latency_p99_ms": 3.0}])
    assert main(["compare", base, now]) == 0  # no bound given: statuses as recorded
    capsys.readouterr()
    assert main(["compare", base, now, "--max-latency-p99-ms", "5"]) == 1
    out = capsys.readouterr().out
    assert "status ok → infeasible (latency_p99_ms=8 > constraints.max_latency_p99_ms=5 (+60%))" in out
    assert "current: infeasible: m tflite int8 bs=1" in out and "latency_p99_ms=8 >" in out
    assert "baseline: best for m bs=1: engine=tflite precision=int8" in out
    assert "current: best for m bs=1: engine=tflite precision=fp32" in out  # never the violating int8
    assert main(["compare", base, now, "--max-latency-p99-ms", "0"]) == 2
    assert "--max-latency-p99-ms=0 is invalid: must be > 0; fix:" in capsys.readouterr().err
    assert main(["report", now, "--max-latency-p99-ms", "5"]) == 0
    assert "best for m bs=1: engine=tflite precision=fp32" in capsys.readouterr().out


# ---- the Optuna sweeper: one constraint per name, an infeasible trial is never Optuna's best ----
def _job(status, **metrics):
    return JobResult(TrialStatus(status), "k", None if status == "ok" else "why", metrics)


def test_optuna_records_every_constraint_and_never_picks_an_infeasible_trial(monkeypatch):
    bounds = {"max_latency_p99_ms": 5.0, "max_gpu_memory_mb": 100.0, "max_peak_rss_mb": None}
    study = optuna.create_study(direction="maximize")
    for tput, p99, status in [(100.0, 4.0, "ok"), (900.0, 9.0, "infeasible"), (150.0, 4.5, "ok")]:
        trial = study.ask()
        outcome = _outcome.trial_outcome(_job(status, throughput_ips=tput, latency_p99_ms=p99, accuracy_drop=0.0),
                                         None, "throughput_ips", False, 0.01, bounds)
        _outcome.tell(study, trial, outcome)
    assert study.best_trial.values == [150.0]  # Optuna's own choice: not the infeasible 900
    t = study.trials[1]
    assert t.user_attrs["constraint_names"] == ["accuracy_drop", "latency_p99_ms", "gpu_memory_mb"]
    assert t.user_attrs["constraint"] == [pytest.approx(-0.01), pytest.approx(4.0), 0.0]  # no GPU metric: met
    assert _outcome.is_infeasible(t) and not _outcome.is_infeasible(study.trials[2])
    if _outcome.native_constraints():
        assert t.constraints == {"accuracy_drop": pytest.approx(-0.01), "latency_p99_ms": pytest.approx(4.0),
                                 "gpu_memory_mb": 0.0}
    # Optuna 4: the tuple in name order, where its constraints_func samplers keep it
    monkeypatch.setattr(_outcome, "native_constraints", lambda: False)
    trial = study.ask()
    _outcome.tell(study, trial, _outcome.trial_outcome(_job("infeasible", throughput_ips=1.0, latency_p99_ms=6.0),
                                                       None, "throughput_ips", False, 0.01, bounds))
    assert study.trials[-1].system_attrs["constraints"] == (0.0, pytest.approx(1.0), 0.0)


def test_the_runners_infeasible_verdict_wins_over_what_the_sweeper_recomputes():
    same = _outcome.trial_outcome(_job("infeasible", throughput_ips=1.0, latency_p99_ms=5.0), None,
                                  "throughput_ips", False, 0.01, {"max_latency_p99_ms": 5.0})
    assert not same.feasible and same.attrs["constraint"][1] > 0  # exactly at the bound by float rounding
    unbounded = _outcome.trial_outcome(_job("infeasible", throughput_ips=1.0), None, "throughput_ips", False, 0.01)
    assert not unbounded.feasible and unbounded.label == "INFEASIBLE"
