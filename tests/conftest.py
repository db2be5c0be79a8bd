"""Shared fixtures: a session cache (the digits model is trained once), and a helper that runs the
real ``sweep.py`` in a fresh working directory with fast measurement settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "measure.warmup_iters=2", "measure.min_iters=10", "measure.min_time_s=0.05", "measure.repeats=2",
    "data.eval_samples=128", "data.calibration_samples=32", "tracking.log_models=false",
]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the whole session (models, conversions), unless TRTSWEEP_TEST_CACHE points elsewhere."""
    env = os.environ.get("TRTSWEEP_TEST_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def digits_model(cache_dir):
    from trtsweep import models
    from trtsweep.config import ModelConfig

    return models.resolve(ModelConfig(name="digits_cnn", source="digits_cnn"), cache_dir)


@pytest.fixture
def seeded_cache(tmp_path, digits_model, cache_dir) -> Path:
    """``tmp_path/cache`` holding only the session's built models (digits_cnn is trained once per session):
    conversions, results and reference outputs start empty, as in a fresh cache."""
    import shutil

    dst = tmp_path / "cache"
    shutil.copytree(Path(cache_dir) / "models", dst / "models", dirs_exist_ok=True)
    return dst


class SweepRun:
    def __init__(self, cwd: Path, cache: Path):
        self.cwd, self.cache = cwd, cache
        self.db = cwd / "mlflow.db"

    def args(self, *overrides: str, fast: bool = True) -> list[str]:
        flags = [o for o in overrides if o.startswith("-")]
        values = [o for o in overrides if not o.startswith("-")]
        # fast settings first, so a test's own overrides win
        return [sys.executable, str(ROOT / "sweep.py"), *flags, *(FAST if fast else []), *values,
                f"cache_dir={self.cache}"]

    def env(self, extra: dict | None = None) -> dict:
        env = dict(os.environ)
        env.pop("MLFLOW_TRACKING_URI", None)
        env["PYTHONUNBUFFERED"] = "1"
        # this checkout's trtsweep and hydra_plugins first, not an installed (or another worktree's) copy
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        env.update(extra or {})
        return env

    def __call__(self, *overrides: str, fast: bool = True, timeout: float = 600,
                 env: dict | None = None) -> subprocess.CompletedProcess:
        """Run ``sweep.py`` with ``overrides``; ``env``: extra environment variables (e.g. a test fault)."""
        return subprocess.run(self.args(*overrides, fast=fast), cwd=self.cwd, env=self.env(env), capture_output=True,
                              text=True, timeout=timeout)

    def popen(self, *overrides: str, fast: bool = True) -> subprocess.Popen:
        return subprocess.Popen(self.args(*overrides, fast=fast), cwd=self.cwd, env=self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=f"sqlite:///{self.db}")

    def runs(self, experiment: str = "trtsweep/digits_cnn"):
        c = self.client()
        exp = c.get_experiment_by_name(experiment)
        assert exp is not None, f"no MLflow experiment {experiment}"
        runs = c.search_runs([exp.experiment_id], max_results=1000)
        parents = [r for r in runs if r.data.tags.get("trtsweep.role") == "parent"]
        children = [r for r in runs if r.data.tags.get("trtsweep.role") == "trial"]
        return parents, children

    def results_csv(self) -> Path:
        found = sorted((self.cwd / "outputs").rglob("results.csv"), key=lambda p: p.stat().st_mtime)
        assert found, "no results.csv written"
        return found[-1]


@pytest.fixture
def sweep(tmp_path, cache_dir) -> SweepRun:
    return SweepRun(tmp_path, cache_dir)


@pytest.fixture(scope="module")
def module_sweep(tmp_path_factory, cache_dir) -> SweepRun:
    """A working directory that lives as long as a test module: one sweep that several tests read."""
    return SweepRun(tmp_path_factory.mktemp("sweep"), cache_dir)
