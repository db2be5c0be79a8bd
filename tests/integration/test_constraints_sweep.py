"""Constraints on a real measured trial: a bound makes it infeasible (with the reason, in results.csv and
MLflow), and the cached result is judged again — ok without the bound, infeasible under others — without
being measured again."""

from __future__ import annotations

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

TRIAL = ["-m", "model=digits_cnn", "engine=tflite", "precision=fp32", "engine.num_threads=1", "data.seed=11"]


def _only_row(sweep) -> pd.Series:
    df = pd.read_csv(sweep.results_csv())
    assert len(df) == 1
    return df.iloc[0]


def test_bounds_make_a_measured_trial_infeasible_and_a_cached_one_is_judged_again(sweep):
    res = sweep(*TRIAL, "constraints.max_latency_p99_ms=0.0001")
    assert res.returncode == 0, res.stderr[-3000:]
    row = _only_row(sweep)
    assert row.status == "infeasible" and not row.cached and row.violates == "latency_p99_ms"
    assert row.reason.startswith(f"latency_p99_ms={row.latency_p99_ms:.4g} > constraints.max_latency_p99_ms=0.0001 (+")
    assert "no trial passed the accuracy check and the constraints" in res.stdout
    assert "infeasible: 1 trial(s) measured but over a bound (constraints.max_latency_p99_ms ×1)" in res.stdout
    _, children = sweep.runs()
    (child,) = children
    assert child.data.tags["status"] == "infeasible" and child.data.tags["reason"] == row.reason
    assert child.info.status == "FINISHED"
    assert child.data.metrics["violation_latency_p99_ms"] == pytest.approx(row.latency_p99_ms - 0.0001)
    assert not any(k.startswith("violation_") and k != "violation_latency_p99_ms" for k in child.data.metrics)
    measured_at = row.measured_at

    res = sweep(*TRIAL)  # the bound removed: the same measurement, now ok
    assert res.returncode == 0, res.stderr[-3000:]
    row = _only_row(sweep)
    assert row.status == "ok" and row.cached and row.measured_at == measured_at
    assert pd.isna(row.reason) and "best for digits_cnn bs=1: engine=tflite" in res.stdout

    res = sweep(*TRIAL, "constraints.max_peak_rss_mb=1", "constraints.max_model_size_mb=0.0001",
                "constraints.max_gpu_memory_mb=1")
    assert res.returncode == 0, res.stderr[-3000:]
    row = _only_row(sweep)
    assert row.status == "infeasible" and row.cached and row.measured_at == measured_at
    assert row.violates == "peak_rss_mb,model_size_mb"  # a CPU trial is never judged by the GPU bound
    assert "> constraints.max_peak_rss_mb=1 (+" in row.reason
    assert "> constraints.max_model_size_mb=0.0001 (+" in row.reason
    assert "gpu_memory_mb" not in row.reason
    out = res.stdout + res.stderr
    assert out.count("constraints.max_gpu_memory_mb=1 applies to GPU engines only (tftrt): tflite trials are never "
                     "judged by it") == 1


def test_an_optuna_search_records_the_bounds_of_the_jobs_config(sweep, tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path}/optuna.db"
    res = sweep("-m", "hydra/sweeper=optuna", "model=digits_cnn", "engine=tflite", "engine.num_threads=1",
                "precision=choice(fp32,fp16)", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler=grid",
                f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=c",
                "constraints.max_latency_p99_ms=0.0001")
    assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="c", storage=storage)
    assert len(study.trials) == 2
    for t in study.trials:  # measured, but over the bound: complete and infeasible, never Optuna's best
        assert t.state.name == "COMPLETE" and t.user_attrs["status"] == "infeasible"
        recorded = dict(zip(t.user_attrs["constraint_names"], t.user_attrs["constraint"], strict=True))
        assert recorded["latency_p99_ms"] == pytest.approx(t.user_attrs["latency_p99_ms"] - 0.0001)
        assert recorded["accuracy_drop"] <= 0 and set(recorded) == {"accuracy_drop", "latency_p99_ms"}
    with pytest.raises(ValueError):
        _ = study.best_trial
