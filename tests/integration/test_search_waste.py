"""The Optuna sweeper wastes no trials and stops hopeless ones early (real sweeps of digits_cnn):

- a 6-point space with ``n_trials=10`` measures 6 distinct configurations and ends "space exhausted";
- a second search on the same storage and cache measures nothing already measured;
- a configuration made 5 ms slower per call (``TRTSWEEP_TEST_FAULT=slow@...``) is pruned after its first
  measurement step, with its partial figures, and the best is unchanged.
"""

from __future__ import annotations

import json
import os

import pytest
from test_optuna_sweeper import load, mlflow_runs, optuna, run, sweep_cmd  # noqa: F401 - optuna: importorskip

from hydra_plugins.trtsweep_sweepers import _space

SIX = ["engine=tflite", "precision=choice(fp32,fp16,int8)", "batch_size=choice(1,8)"]


def measured_results(cache) -> dict:
    """trial key → when it was measured, for every result in the cache."""
    out = {}
    for f in (cache / "results").glob("*.json"):
        rec = json.loads(f.read_text())
        out[rec["trial_key"]] = (rec["status"], rec["started_at"])
    return out


@pytest.mark.slow
@pytest.mark.usefixtures("seeded_cache")
def test_six_point_space_measures_six_configurations_then_a_second_search_measures_nothing(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    proc = run(sweep_cmd(tmp_path, *SIX, "hydra.sweeper.n_trials=10", "hydra.sweeper.seed=0", study="first"),
               tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "optuna stopped: space exhausted: all 6 configuration(s) measured — 6 measured here" in proc.stdout
    study = load(storage, "first")
    measured = [t for t in study.trials if "known_from" not in t.user_attrs]
    assert len(measured) == 6 and len({_space.config_key(t.params) for t in measured}) == 6
    for t in measured:  # complete, or pruned after a step as hopeless next to the best (batch 1 vs 8)
        assert t.state.name == "COMPLETE" or (t.state.name, t.user_attrs["status"]) == ("PRUNED", "pruned"), t
    for t in study.trials:
        if "known_from" in t.user_attrs:  # a repeat proposed by the sampler: told the earlier figures
            first = next(m for m in measured if m.params == t.params)
            assert t.values == first.values and t.user_attrs["known_from"] == f"trial #{first.number}"
    before = measured_results(tmp_path / "cache")
    assert len([k for k, (status, _) in before.items() if status in ("ok", "pruned")]) == 6

    proc2 = run(sweep_cmd(tmp_path, *SIX, "hydra.sweeper.n_trials=10", "hydra.sweeper.seed=1", study="second"),
                tmp_path)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert "0 measured here" in proc2.stdout and "space exhausted: all 6" in proc2.stdout, proc2.stdout[-3000:]
    second = load(storage, "second")
    assert all(t.user_attrs.get("known_from") for t in second.trials)  # from the cache or the first study
    assert second.best_trial.params == study.best_trial.params
    assert measured_results(tmp_path / "cache") == before  # no trial measured again
    if len([k for k, (status, _) in before.items() if status == "ok"]) >= 2:  # else nothing to confirm against
        assert "optuna final answer (confirmed by interleaved re-measurement)" in proc2.stdout, proc2.stdout[-2500:]


@pytest.mark.slow
@pytest.mark.usefixtures("seeded_cache")
def test_a_hopeless_configuration_is_pruned_after_its_first_step(tmp_path):
    os.environ["TRTSWEEP_TEST_FAULT"] = "slow@precision=fp16"
    try:
        proc = run(sweep_cmd(tmp_path, "engine=tflite", "precision=choice(fp32,fp16)", "batch_size=8",
                             "measure.repeats=3", "hydra.sweeper.n_trials=2", study="prune"), tmp_path)
    finally:
        del os.environ["TRTSWEEP_TEST_FAULT"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(f"sqlite:///{tmp_path}/optuna.db", "prune")
    by_precision = {t.params["precision"]: t for t in study.trials if "known_from" not in t.user_attrs}
    slow, fast = by_precision["fp16"], by_precision["fp32"]
    assert slow.state.name == "PRUNED" and sorted(slow.intermediate_values) == [1], slow
    assert slow.user_attrs["status"] == "pruned"
    assert "pruned after 1 measurement step(s)" in slow.user_attrs["reason"]
    assert f"best feasible trial #{fast.number}" in slow.user_attrs["reason"]
    assert 0 < slow.user_attrs["throughput_ips"] < fast.values[0] / 2  # its partial figures
    assert "accuracy" not in slow.user_attrs  # no fidelity pass for a pruned trial
    assert study.best_trial.number == fast.number
    assert "1 pruned after a measurement step" in proc.stdout
    assert f"optuna best: trial #{fast.number} throughput_ips=" in proc.stdout
    import pandas as pd

    csv = next((tmp_path / "outputs" / "multirun").rglob("results.csv"))
    rows = pd.read_csv(csv)
    assert set(rows[rows.precision == "fp16"].status) == {"pruned"}
    assert "best" not in rows or not rows[rows.precision == "fp16"].best.fillna(False).astype(bool).any()
    _, children = mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db", "prune")  # the pruned trial's child run
    run_ = next(c for c in children if c.info.run_id == slow.user_attrs["mlflow_run_id"])
    assert run_.info.status == "KILLED" and run_.data.tags["status"] == "pruned"
    assert "pruned after 1 measurement step(s)" in run_.data.tags["reason"]
