"""Plan-time checks beyond each setting's own (``trtsweep.config``): what a trial would otherwise find
only when it runs, checked once per sweep before the first trial, each a one-line ConfigError.

* :func:`check_job`, per job, cheap (no model): MLflow's tracking URI can ever work
  (:mod:`trtsweep.urls`); the memory cap is positive; a calibrating precision has at least one
  calibration batch of samples; a ``data=file`` file loads and holds numbers.
* :func:`check_sweeper`: the Optuna sweeper's storage URL (``hydra.sweeper.storage``).
* :func:`check_data_fits`, once the model is resolved: the data file fits its signature.
"""

from __future__ import annotations

from typing import Any

from trtsweep.config import TrialSpec, tracking_config
from trtsweep.engines.base import get_engine, make_params
from trtsweep.errors import ConfigError
from trtsweep.types import ModelInfo
from trtsweep.urls import storage_url_problem, tracking_uri_problem
from trtsweep.validation import positive

#: seconds a plan may spend resolving one model (building a generated one, once per cache): its own
#: limit, not ``trial.timeout_s`` (which bounds a trial, and may be set low to catch a hanging one)
MODEL_TIMEOUT_S = 3600.0


#: the top-level settings of conf/config.yaml (the config groups and the values beside them)
SETTINGS = ("batch_size", "cache_dir", "confirm", "constraints", "data", "engine", "fidelity", "force", "measure",
            "model", "name", "precision", "threads", "tracking", "trial")


def check_job(plain: dict, spec: TrialSpec) -> None:
    unknown = sorted(k for k in plain if k not in SETTINGS and k != "hydra")
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a setting; fix: leave out +{unknown[0]}=..., or use one of "
                          f"{', '.join(SETTINGS)}")
    extra = sorted(k for k in (plain.get("precision") or {}) if k != "name")
    if extra:
        raise ConfigError(f"precision.{extra[0]} is not a setting (a precision has only its name); "
                          f"fix: precision=<fp32|fp16|int8|int8_dynamic>, engine settings as engine.<param>")
    tcfg = tracking_config(plain)
    if tcfg.enabled:
        problem = tracking_uri_problem(tcfg.uri)
        if problem:
            raise ConfigError(problem)
    positive("trial.max_memory_mb", spec.trial.max_memory_mb, "trial.max_memory_mb=16000")
    eng = get_engine(spec.engine)
    params = make_params(eng, spec.engine_params)
    if eng.unsupported(spec.precision, params) is None and eng.needs_calibration(spec.precision, params):
        need = max(1, int(eng.calibration_batch_size(params, spec.sweep_batch_sizes)))
        have = spec.data.calibration_samples
        if have < need:
            raise ConfigError(f"data.calibration_samples={have} is smaller than one calibration batch of engine="
                              f"{spec.engine} precision={spec.precision} ({need} samples); "
                              f"fix: data.calibration_samples={max(need, 128)}")
    if spec.data.name == "file":
        from trtsweep.data import read_file

        read_file(spec.data, mmap=True)


def check_sweeper(cfg: Any) -> None:
    """The sweeper's settings in the job's config (``hydra.sweeper.*``), where it has them."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover
        return
    if not isinstance(cfg, DictConfig):
        return
    target = str(OmegaConf.select(cfg, "hydra.sweeper._target_", default="") or "")
    if "optuna" not in target.lower():
        return
    problem = storage_url_problem(OmegaConf.select(cfg, "hydra.sweeper.storage", default=None))
    if problem:
        raise ConfigError(problem)


def check_data_fits(spec: TrialSpec, model: dict | ModelInfo) -> None:
    if spec.data.name != "file":
        return
    from trtsweep.data import check_file

    check_file(spec.data, model if isinstance(model, ModelInfo) else ModelInfo.from_dict(model))
