"""The trtsweep command: sweep (the Hydra app), doctor, report, compare (nightly regression flags)."""

from __future__ import annotations

import pandas as pd
import pytest

from trtsweep.cli import main


def test_doctor_lists_every_engine_with_its_state(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "host:" in out and "flags:" in out
    for name in ("tf", "tflite", "onnx", "tftrt"):
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    tftrt = next(line for line in out.splitlines() if line.startswith("tftrt "))
    assert "tf_version=" in tftrt and "tensorrt_enabled=" in tftrt and "linked_tensorrt=" in tftrt


def _csv(path, tput, drop=0.0, status="ok", cpu="cpu A"):
    pd.DataFrame([
        {"model": "m", "engine": "tflite", "precision": "int8", "batch_size": 1, "data": "digits",
         "engine.num_threads": 1, "status": status, "throughput_ips": tput, "accuracy_drop": drop,
         "latency_p50_ms": 1000 / tput, "top1_agreement": 1 - drop, "host.cpu_model": cpu, "host.cpu_flags": "avx2"},
        {"model": "m", "engine": "tf", "precision": "fp32", "batch_size": 1, "data": "digits",
         "engine.num_threads": None, "status": "ok", "throughput_ips": 100.0, "accuracy_drop": 0.0,
         "latency_p50_ms": 10.0, "top1_agreement": 1.0, "host.cpu_model": cpu, "host.cpu_flags": "avx2"},
    ]).to_csv(path, index=False)
    return str(path)


def test_compare_flags_slowdown_and_accuracy_loss(tmp_path, capsys):
    base = _csv(tmp_path / "base.csv", 1000)
    assert main(["compare", base, _csv(tmp_path / "same.csv", 960)]) == 0  # within 10%
    assert main(["compare", base, _csv(tmp_path / "slow.csv", 700)]) == 1
    out = capsys.readouterr().out
    assert "throughput 1000.0 → 700.0" in out and "tflite" in out
    assert main(["compare", base, _csv(tmp_path / "worse.csv", 1000, drop=0.02)]) == 1
    assert main(["compare", base, _csv(tmp_path / "failed.csv", float("nan"), status="failed")]) == 1
    main(["compare", base, _csv(tmp_path / "other.csv", 500, cpu="cpu B")])
    assert "False" in capsys.readouterr().out  # different host is said


def test_report_prints_best_and_writes_plot(tmp_path, capsys):
    csv = _csv(tmp_path / "r.csv", 1000)
    assert main(["report", csv, "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "best for m bs=1: engine=tflite precision=int8" in out and "10.00x vs tf fp32" in out
    assert (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.parametrize("args", [
    ["-m", "engine=tflite", "precision=fp32,int8"],
    ["--help"], ["-h"], ["--cfg", "job"], ["--info", "defaults"], ["hydra/sweeper=optuna", "+sweep=tune_cpu"],
    ["--config-dir", "/my/conf", "model=my_model"], ["-cd=/my/conf", "--multirun", "batch_size=1,8"], [],
])
def test_sweep_hands_every_argument_to_hydra(args, monkeypatch):
    import sys

    import trtsweep.entry

    seen = []
    monkeypatch.setattr(trtsweep.entry, "main", lambda: seen.append(list(sys.argv)))
    argv = list(sys.argv)
    assert main(["sweep", *args]) == 0
    assert seen == [["trtsweep sweep", *args]]  # what `python sweep.py <args>` gives Hydra
    assert sys.argv == argv


@pytest.mark.parametrize("args, started", [
    (["-m", "engine=tf,tflite"], ["worker", "mlflow"]), (["+sweep=tune_cpu"], ["worker", "mlflow"]),
    ([], ["worker", "mlflow"]), (["-cd", "/my/conf"], ["worker", "mlflow"]), (["tracking=none"], ["worker"]),
    (["--cfg", "job"], []), (["--cfg=hydra"], []), (["-c", "job", "-m"], []), (["--help"], []),
    (["--info", "defaults"], []), (["--hydra-help"], []), (["-sc", "install=bash"], []),
])
def test_the_worker_and_mlflow_start_before_hydra_unless_hydra_only_prints(args, started, monkeypatch):
    """The worker imports TensorFlow and MLflow's process imports MLflow (seconds each) while Hydra
    starts, composes and plans."""
    import sys
    from types import SimpleNamespace

    import trtsweep.entry
    from trtsweep import mlflow_process, runner

    order = []
    monkeypatch.setattr(runner, "pool", lambda: SimpleNamespace(prewarm=lambda: order.append("worker")))
    monkeypatch.setattr(mlflow_process, "prestart", lambda: order.append("mlflow"))
    monkeypatch.setattr(trtsweep.entry, "app", lambda: order.append("hydra"))
    monkeypatch.setattr(sys, "argv", ["sweep.py", *args])
    trtsweep.entry.main()
    assert order == [*started, "hydra"]


def test_sweep_runs_the_hydra_app_with_the_packaged_configs(capsys):
    from hydra.core.global_hydra import GlobalHydra

    try:
        assert main(["sweep", "--cfg", "job", "engine=onnx"]) == 0
        out = capsys.readouterr().out
        assert "name: digits_cnn" in out and "intra_op_num_threads" in out
        assert main(["sweep", "+sweep=tune_cpu", "--cfg", "hydra", "-p", "hydra.sweeper._target_"]) == 0
        assert capsys.readouterr().out.strip() == "hydra_plugins.trtsweep_sweepers.optuna.OptunaSweeper"
    finally:
        GlobalHydra.instance().clear()
