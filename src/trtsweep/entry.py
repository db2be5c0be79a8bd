"""The Hydra app: ``python sweep.py ...`` and ``trtsweep sweep ...`` both run :func:`main`.

The config groups and presets ship inside the package (``trtsweep/conf``, presets in
``trtsweep/conf/sweep``), so an installed wheel needs no checkout.  A config dir of your own adds
models and presets through Hydra's search path: ``--config-dir /my/conf`` or
``hydra.searchpath=[file:///my/conf]`` (e.g. ``/my/conf/model/my_model.yaml``, then ``model=my_model``).

Exit codes (DESIGN.md §3, :mod:`trtsweep.outcome`): 0 done; 1 no trial succeeded; 2 a user or
configuration error, in one line before any trial — an override or option Hydra cannot compose
(``bogus=1``, ``engine=bogus``, ``+sweep=nope``) included, which Hydra itself would report in many lines
with exit code 1 (``HYDRA_FULL_ERROR=1`` still shows Hydra's own report).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig

from trtsweep import tflog
from trtsweep.redact import mask_logs

mask_logs()  # every log record of a sweep, from its first, with URLs' passwords masked (docs/security.md)

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
    """Run the Hydra app on ``sys.argv``, then exit with the code of its trials (1: none succeeded).  The
    trial worker and MLflow's process start first: they import TensorFlow and MLflow (seconds each) while
    Hydra starts, composes and plans; a sweep that stops before its first trial stops them
    (:func:`trtsweep.session.fail`, or at exit)."""
    from trtsweep import outcome

    tflog.quiet_by_default()  # before the worker starts: it inherits the environment
    outcome.reset()
    args = sys.argv[1:]
    if not any(a.split("=", 1)[0] in PRINT_ONLY for a in args):
        from trtsweep import mlflow_process, runner

        runner.pool().prewarm()
        if "tracking=none" not in args:
            mlflow_process.prestart()  # imports MLflow; opens nothing until a sweep sends its settings
    with _config_errors_in_one_line():
        app()
    code = outcome.exit_code()
    if code:
        print(f"trtsweep: no trial succeeded ({outcome.summary()}); exit code {code}", file=sys.stderr, flush=True)
        sys.exit(code)


class _config_errors_in_one_line:
    """Hydra reports its own errors (an override it cannot apply, an option that does not exist) in many
    lines and exits 1; here they are one ``trtsweep: error:`` line and exit code 2, like every other
    configuration error.  Other exceptions keep Hydra's report."""

    def __enter__(self) -> None:
        from hydra._internal import utils as hydra_utils

        self._module, self._saved = hydra_utils, hydra_utils.run_and_report
        saved = self._saved

        def run_and_report(func):  # type: ignore[no-untyped-def]
            try:
                return func()
            except Exception as e:  # noqa: BLE001 - reported below, by us or by Hydra
                if is_config_error(e) and not hydra_utils._is_env_set("HYDRA_FULL_ERROR"):
                    from trtsweep.errors import TrtsweepError, config_error_line
                    from trtsweep.session import fail

                    fail(str(e) if isinstance(e, TrtsweepError) else config_error_line(e))
                return saved(_raise(e))

        hydra_utils.run_and_report = run_and_report

    def __exit__(self, *exc: object) -> None:
        self._module.run_and_report = self._saved


def _raise(e: BaseException):  # type: ignore[no-untyped-def]
    def again():  # type: ignore[no-untyped-def]
        raise e

    return again


def is_config_error(e: BaseException) -> bool:
    """An override, option or value the config cannot take (Hydra's and OmegaConf's, and ours)."""
    from hydra.errors import ConfigCompositionException, OverrideParseException, SearchPathException
    from omegaconf.errors import OmegaConfBaseException

    from trtsweep.errors import ConfigError

    return isinstance(e, (ConfigCompositionException, OverrideParseException, SearchPathException,
                          OmegaConfBaseException, ConfigError))


def run(args: Sequence[str], prog: str = "trtsweep sweep") -> None:
    """Run the Hydra app on ``args`` (what follows ``sweep`` on the command line): Hydra reads
    ``sys.argv``, so it is set to exactly what ``python sweep.py <args>`` would give."""
    saved = sys.argv
    sys.argv = [prog, *args]
    try:
        main()
    finally:
        sys.argv = saved
