"""The Hydra app: ``python sweep.py ...`` and ``trtsweep sweep ...`` both run :func:`main`.

The config groups and presets ship inside the package (``trtsweep/conf``, presets in
``trtsweep/conf/sweep``), so an installed wheel needs no checkout.  A config dir of your own adds
models and presets through Hydra's search path: ``--config-dir /my/conf`` or
``hydra.searchpath=[file:///my/conf]`` (e.g. ``/my/conf/model/my_model.yaml``, then ``model=my_model``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig

# config.yaml and the groups (presets in sweep/).  Given to Hydra as a directory, not as the module
# ``trtsweep.conf``: Hydra's pkg:// source would need an __init__.py in every config dir.
CONF_DIR = Path(__file__).resolve().parent / "conf"


#: Hydra flags that only print something: no job runs, so no trial worker is started
PRINT_ONLY = ("-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info", "-sc",
              "--shell-completion")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def app(cfg: DictConfig) -> dict:
    from trtsweep.app import run_job

    return run_job(cfg)


def main() -> None:
    """Run the Hydra app on ``sys.argv``.  The trial worker and MLflow's process start first: they
    import TensorFlow and MLflow (seconds each) while Hydra starts, composes and plans; a sweep that
    stops before its first trial stops them (:func:`trtsweep.session.fail`, or at exit)."""
    args = sys.argv[1:]
    if not any(a.split("=", 1)[0] in PRINT_ONLY for a in args):
        from trtsweep import mlflow_process, runner

        runner.pool().prewarm()
        if "tracking=none" not in args:
            mlflow_process.prestart()  # imports MLflow; opens nothing until a sweep sends its settings
    app()


def run(args: Sequence[str], prog: str = "trtsweep sweep") -> None:
    """Run the Hydra app on ``args`` (what follows ``sweep`` on the command line): Hydra reads
    ``sys.argv``, so it is set to exactly what ``python sweep.py <args>`` would give."""
    saved = sys.argv
    sys.argv = [prog, *args]
    try:
        main()
    finally:
        sys.argv = saved
