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


def test_compare_shares_the_nightly_rule_a_slowdown_within_the_repeat_noise_is_not_flagged(tmp_path, capsys):
    def noisy(name, tput, cv):
        path = _csv(tmp_path / name, tput)
        pd.read_csv(path).assign(latency_cv=cv).to_csv(path, index=False)
        return path

    base = noisy("base.csv", 1000, 0.08)
    assert main(["compare", base, noisy("now.csv", 850, 0.08)]) == 0  # -15%: past 10%, within 3σ of the noise
    assert "or the noise" in capsys.readouterr().out
    assert main(["compare", base, noisy("now.csv", 850, 0.08), "--sigmas", "0"]) == 1  # the floor alone
    steady = noisy("steady.csv", 1000, 0.01)
    assert main(["compare", steady, noisy("quiet.csv", 850, 0.01)]) == 1  # steady repeats: a real slowdown
    assert "noise 4.2%, floor 10%" in capsys.readouterr().out


def test_report_prints_best_and_writes_plot(tmp_path, capsys):
    csv = _csv(tmp_path / "r.csv", 1000)
    assert main(["report", csv, "--plot", str(tmp_path / "p.png"), "--no-html"]) == 0
    out = capsys.readouterr().out
    assert "best for m bs=1: engine=tflite precision=int8" in out and "10.00x vs tf fp32" in out
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert not (tmp_path / "report.html").exists()


def test_report_of_the_latest_sweep_writes_its_html_next_to_it(tmp_path, monkeypatch, capsys):
    import os

    monkeypatch.chdir(tmp_path)
    assert main(["report"]) == 2  # no sweep yet
    assert capsys.readouterr().err == ("trtsweep: error: no sweep under outputs/ (no results.csv); fix: trtsweep "
                                       "report <sweep dir | results.csv | MLflow experiment or run id>, or run a "
                                       "sweep first\n")
    old, new = (tmp_path / "outputs" / "multirun" / "2026-11-27" / t for t in ("23-59-00", "00-01-00"))
    for d, when in ((old, 1_000_000), (new, 2_000_000)):
        d.mkdir(parents=True)
        os.utime(_csv(d / "results.csv", 1000), (when, when))
    assert main(["report"]) == 0
    rel = new.relative_to(tmp_path)
    assert f"report: {rel / 'report.html'} (summary: {rel / 'report.md'})" in capsys.readouterr().out
    assert not (old / "report.html").exists()
    assert "10.00×" in (new / "report.html").read_text()  # tflite int8 vs tf fp32
    assert main(["report", str(old), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "report.md").exists() and not (old / "report.md").exists()


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


@pytest.mark.parametrize("args, fix", [(["--history", "0"], "--history 7"), (["--floor", "2"], "--floor 0.05"),
                                       (["--sigmas", "-1"], "--sigmas 3")])
def test_nightly_refuses_bad_options_before_measuring_anything(args, fix, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["nightly", *args, "model=digits_cnn"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fix in err
    assert not (tmp_path / "outputs").exists()


def test_nightly_sweep_arguments_tag_every_run_and_require_mlflow():
    from pathlib import Path

    from trtsweep.nightly import hydra_args

    args = hydra_args(["model=digits_cnn", "engine=tflite"], "20261128T020000", "2026-11-28", Path("out/n"))
    assert args[:4] == ["-m", "+sweep=nightly", "model=digits_cnn", "engine=tflite"]
    assert "+tracking.tags.nightly='true'" in args and "+tracking.tags.nightly_run='20261128T020000'" in args
    assert "tracking.required=true" in args and "hydra.sweep.dir=out/n" in args
    suite = next(a for a in args if a.startswith("+tracking.tags.nightly_suite="))
    same = hydra_args(["engine=tflite", "model=digits_cnn", "hydra.sweep.dir=x"], "2", "2026-11-29", Path("o"))
    assert suite in same and "hydra.sweep.dir=o" not in same  # the same suite; the user's directory wins
