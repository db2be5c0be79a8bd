"""Which params a child carries and how it is named (trtsweep.mlflow_view), without MLflow."""

from __future__ import annotations

from trtsweep.mlflow_view import MAX_PARAMS, child_params, run_name, varying_keys


def _row(engine="tflite", precision="fp32", **extra):
    base = {"model": "m", "engine": engine, "precision": precision, "batch_size": "1", "threads": "2",
            "precision.calibrate": str(precision == "int8"), "measure.repeats": "3", "core_set": "0,1"}
    return {**base, **extra}


def test_varying_keys_are_the_swept_ones_not_an_engines_own_defaults():
    rows = [_row("tf", **{"engine.inter_op": "1"}), _row("tflite", **{"engine.num_threads": "1"}),
            _row("tflite", **{"engine.num_threads": "2"}), _row("tflite", "int8", **{"engine.num_threads": "2"})]
    assert varying_keys(rows) == ["engine", "precision", "engine.num_threads"]


def test_varying_keys_never_exceed_the_params_budget():
    rows = [_row(**{f"engine.p{i}": str(i + j) for i in range(20)}) for j in range(2)]
    keys = varying_keys(rows)
    assert len(keys) == MAX_PARAMS - 6
    assert len(child_params({**rows[0], "fidelity.max_accuracy_drop": "0.01"}, keys)) == MAX_PARAMS


def test_child_params_are_the_key_axes_and_the_varying_ones():
    row = _row(**{"engine.num_threads": "2", "fidelity.max_accuracy_drop": "0.01"})
    assert child_params(row, ["engine.num_threads"]) == {
        "model": "m", "engine": "tflite", "precision": "fp32", "batch_size": "1", "threads": "2",
        "fidelity.max_accuracy_drop": "0.01", "engine.num_threads": "2"}  # the bound a nightly judges with


def test_run_names_differ_where_the_trials_differ_and_show_the_status():
    a, b = _row(**{"engine.num_threads": "1"}), _row(**{"engine.num_threads": "2"})
    varying = ["engine.num_threads"]
    assert run_name(a, varying, "ok") == "tflite-fp32-bs1-t2-num_threads=1"
    assert run_name(b, varying, "ok") != run_name(a, varying, "ok")
    assert run_name(a, varying, "failed").endswith("-FAILED")
    assert run_name(a, varying, "accuracy_violation").endswith("-VIOLATION")
    assert run_name({**a, "model": "other"}, ["model", *varying], "ok").startswith("other-tflite")
