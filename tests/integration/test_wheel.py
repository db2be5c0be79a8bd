"""The package as a user installs it: a wheel that holds every config and preset, whose
``trtsweep sweep`` runs the Hydra app outside any checkout."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from trtsweep.entry import CONF_DIR

ROOT = Path(__file__).resolve().parents[2]
FAST = ["tracking=none", "measure.warmup_iters=2", "measure.min_iters=10", "measure.min_time_s=0.05",
        "measure.repeats=2", "data.eval_samples=128", "confirm.enabled=false"]


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout's packaged files (the checkout gets no build/)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src-copy"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=ignore)
    shutil.copytree(ROOT / "hydra_plugins", src / "hydra_plugins", ignore=ignore)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(src)]
    if importlib.util.find_spec("setuptools") and importlib.util.find_spec("wheel"):
        cmd.insert(5, "--no-build-isolation")  # the installed setuptools: offline and seconds faster
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_clean_env())
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("trtsweep-*.whl")
    return whl


def test_wheel_holds_every_config_and_preset(wheel):
    with zipfile.ZipFile(wheel) as z:
        infos = {i.filename: i for i in z.infolist()}
        entry_points = next(z.read(n).decode() for n in infos if n.endswith(".dist-info/entry_points.txt"))
    shipped = sorted(p.relative_to(CONF_DIR).as_posix() for p in CONF_DIR.rglob("*.yaml"))
    for must in ("config.yaml", "engine/tf.yaml", "engine/tflite.yaml", "engine/onnx.yaml", "engine/tftrt.yaml",
                 "sweep/default.yaml", "sweep/tune_cpu.yaml", "sweep/tune_tftrt.yaml"):
        assert must in shipped
    for rel in shipped:
        info = infos.get(f"trtsweep/conf/{rel}")
        assert info is not None, f"the wheel lacks trtsweep/conf/{rel}"
        assert (info.external_attr >> 16) & 0o170000 != 0o120000, f"trtsweep/conf/{rel} is a symlink"
        assert info.file_size == (CONF_DIR / rel).stat().st_size
    for module in ("trtsweep/entry.py", "trtsweep/cli.py", "hydra_plugins/trtsweep_sweepers/__init__.py",
                   "hydra_plugins/trtsweep_sweepers/grid.py", "trtsweep/templates/report.html",
                   "trtsweep/templates/report.md"):
        assert module in infos, module
    assert "trtsweep = trtsweep.cli:main" in entry_points


@pytest.mark.slow
def test_installed_wheel_runs_trtsweep_sweep_outside_the_checkout(wheel, tmp_path, cache_dir):
    """A venv (with the system's packages, so TensorFlow is not installed again) holding only the
    wheel's trtsweep: `trtsweep sweep` composes, picks the presets' sweepers and runs a real sweep."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=120)
    py, exe = venv / "bin" / "python", venv / "bin" / "trtsweep"
    env = _clean_env()
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall",
                          str(wheel)], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    work = tmp_path / "work"  # outside the checkout: no sweep.py, no conf/ to fall back on
    work.mkdir()

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(exe), "sweep", *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=timeout)

    where = subprocess.run(
        [str(py), "-c", "from hydra.core.plugins import Plugins; Plugins.instance(); import sys, trtsweep.entry; "
                        "print(trtsweep.entry.CONF_DIR); "
                        "print(sys.modules['hydra_plugins.trtsweep_sweepers.grid'].__file__)"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr[-3000:]
    conf_dir, grid_file = where.stdout.split()
    assert Path(conf_dir).is_relative_to(venv) and Path(grid_file).is_relative_to(venv), where.stdout

    res = run("--cfg", "job")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "name: digits_cnn" in res.stdout and "engine:" in res.stdout
    for preset, target in (("tune_cpu", "optuna.OptunaSweeper"), ("default", "grid.TrtsweepGridSweeper")):
        res = run(f"+sweep={preset}", "--cfg", "hydra", "-p", "hydra.sweeper._target_")
        assert res.returncode == 0 and res.stdout.strip() == f"hydra_plugins.trtsweep_sweepers.{target}", res.stderr

    res = run("-m", "engine=tflite", "precision=fp32,fp16", *FAST, f"cache_dir={cache_dir}", timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "trials: ok=2" in res.stdout, res.stdout[-2000:]
    (results,) = (work / "outputs" / "multirun").rglob("results.csv")
    assert len(results.read_text().splitlines()) == 3
    assert "tflite" in (results.parent / "report.html").read_text()  # the report's templates ship too
