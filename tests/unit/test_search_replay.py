"""The wall-clock replay of benchmarks/search_efficiency.py: what each trial is charged."""

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def se():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("search_efficiency", ROOT / "benchmarks" / "search_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(order, precision, bs, threads, *, status="ok", tput=100.0, reused=0.0, conv="c1", fid="f1",
         convert=10.0, calibrate=0.0, fidelity=3.0, overhead=0.5, ends=(1.0, 2.0, 3.0)):
    means = [bs / tput * 1000.0] * len(ends)
    return {"order": order, "model": "m", "engine": "onnx", "precision": precision, "batch_size": bs,
            "engine.intra_op_num_threads": threads, "status": status, "throughput_ips": tput,
            "throughput_ci_low": tput * 0.9, "throughput_ci_high": tput * 1.1, "accuracy_drop": 0.0,
            "convert_time_s": convert, "calibrate_time_s": calibrate, "load_time_s": 0.25,
            "measure_time_s": ends[-1] + 0.01, "fidelity_time_s": fidelity, "conversion_reused": reused,
            "conversion_id": conv, "fidelity_id": fid, "overhead_s": overhead,
            "trial_wall_s": overhead + 0.25 + ends[-1] + 0.01 + fidelity + (0 if reused else convert + calibrate),
            "timed_repeats": len(ends), "repeat_means_ms": json.dumps(means), "repeat_trimmed_ms": json.dumps(means),
            "step_end_s": json.dumps(list(ends)), "warmup_iters": 10, "sweep_overhead_s": 20.0}


@pytest.fixture()
def grid(se, tmp_path, monkeypatch):
    monkeypatch.setitem(se.MODELS, "m", se.Profile("1,8"))
    rows = [_row(0, "fp32", 1, 1), _row(1, "fp32", 1, 2, reused=1.0, fidelity=0.0, tput=150.0),
            _row(2, "fp32", 8, 1, reused=1.0, fidelity=0.0, tput=400.0),
            _row(3, "int8", 1, 1, conv="c2", fid="f2", convert=30.0, calibrate=5.0, tput=50.0, overhead=4.5)]
    path = tmp_path / "grid_m.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return se.load_grid(path, "m")


def test_natural_order_reproduces_the_recorded_wall_time(se, grid):
    recorded = 20.0 + sum(r["trial_wall_s"] for r in grid.rows)
    assert grid.total_s == pytest.approx(recorded)


def test_a_conversion_is_charged_once_and_its_untimed_part_with_it(se, grid):
    ledger = se.Ledger(grid)
    start = ledger.now
    assert start == pytest.approx(20.0)  # the sweep overhead; the first row's overhead is the median's
    ledger.play(grid.rows[3])  # int8 first: pays its conversion, calibration and its extra 4 s of overhead
    assert ledger.now - start == pytest.approx(0.5 + 4.0 + 0.25 + 30 + 5 + 3.0 + 0.01 + 3.0)
    t = ledger.now
    ledger.play(grid.rows[1])  # fp32 (c1) for the first time: converts, and checks fidelity f1
    assert ledger.now - t == pytest.approx(0.5 + 0.25 + 10 + 3.0 + 0.01 + 3.0)
    t = ledger.now
    ledger.play(grid.rows[0])  # c1 again: load + measure only
    assert ledger.now - t == pytest.approx(0.5 + 0.25 + 3.0 + 0.01)


def test_a_pruned_trial_stops_paying_at_its_step_and_skips_fidelity(se, grid):
    ledger = se.Ledger(grid)
    t = ledger.now
    state, steps = ledger.play(grid.rows[0], lambda step, value: step == 2)
    assert (state, steps) == ("pruned", 2)
    assert ledger.now - t == pytest.approx(0.5 + 0.25 + 10 + 2.0)
    assert ledger.best == 0.0 and not ledger.done
    state, _ = ledger.play(grid.rows[2])  # the same fidelity id, finished: pays the check once
    assert state == "done"
    assert ledger.best == 400.0


def test_the_shipped_search_runs_on_the_recorded_grid_within_its_budget(se):
    grid = se.load_grid(ROOT / "benchmarks" / "data" / "grid_digits_cnn.csv", "digits_cnn")
    assert grid.total_s == pytest.approx(grid.rows[0]["recording_wall_s"], rel=0.01)
    budget = 0.3 * grid.total_s
    ledger = se.replay_search(grid, seed=0, budget_s=budget)
    assert ledger.stop_reason.startswith("timeout")
    longest = max(r["trial_wall_s"] for r in grid.rows if r["trial_wall_s"] == r["trial_wall_s"])
    assert budget <= ledger.now <= budget + longest  # asks stop at the budget; the last trial may run past it
    assert 0 < ledger.best <= grid.best_tput
