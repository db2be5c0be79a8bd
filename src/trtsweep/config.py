"""Typed config: the composed Hydra config is validated once into a :class:`TrialSpec`.

Every invalid value fails here, before any work, with a :class:`ConfigError` whose message names the
value and the fix.  Unsupported-but-valid combinations (``engine=tf precision=int8``) are not errors:
:func:`plan_trial` returns a spec with ``skip_reason`` set and the runner records it as skipped.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from trtsweep import cores
from trtsweep.constraints import ConstraintsConfig
from trtsweep.engines.base import PRECISIONS, get_engine, make_params
from trtsweep.errors import ConfigError
from trtsweep.identity import data_fingerprint, digest, host_identity, library_versions, model_fingerprint
from trtsweep.safe_names import safe_component
from trtsweep.validation import positive, typed

MODEL_SOURCES = ("digits_cnn", "keras", "saved_model", "unsupported_op")
#: bump when a generated model's builder changes: cached models, conversions and results keyed on it go stale
GENERATED_MODEL_VERSION = 2
DATA_SOURCES = ("digits", "sample_images", "random", "file")


@dataclass
class ModelConfig:
    name: str
    source: str
    path: str | None = None
    signature_key: str = "serving_default"
    input_shapes: dict = field(default_factory=dict)  # input name -> full shape incl. batch (-1/None ok for batch)
    input_size: int | None = None  # keras applications: square image side
    application: str | None = None  # keras applications: class name in keras.applications
    num_classes: int | None = None
    input_range: list | None = None  # [low, high] that image data is scaled to
    seed: int = 0
    epochs: int = 12
    default_data: str = "random"  # the data used when data=auto
    classifier_activation: str | None = "softmax"  # keras applications: null = logits

    def validate(self) -> None:
        safe_component(self.name, "model.name")  # part of cache file names: no '/', '..', NUL
        if self.source not in MODEL_SOURCES:
            raise ConfigError(f"model.source={self.source} is unknown; fix: use one of {', '.join(MODEL_SOURCES)}")
        if self.source == "saved_model":
            if not self.path:
                raise ConfigError("model=saved_model needs a path; fix: model.path=/path/to/savedmodel")
            p = Path(self.path).expanduser()
            if not p.is_dir():
                raise ConfigError(f"model.path={self.path} does not exist; "
                                  "fix: point model.path to a SavedModel directory")
            if not (p / "saved_model.pb").exists() and not (p / "saved_model.pbtxt").exists():
                raise ConfigError(f"model.path={self.path} is not a SavedModel (no saved_model.pb); "
                                  "fix: export with tf.saved_model.save or model.export()")
        if self.source == "keras" and not self.application:
            raise ConfigError(f"model={self.name} needs model.application (a keras.applications class, "
                              "e.g. MobileNetV2)")
        if self.input_size is not None:
            positive("model.input_size", self.input_size, "model.input_size=224")
        for name, shape in (self.input_shapes or {}).items():
            if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) or d is None for d in shape):
                raise ConfigError(f"model.input_shapes.{name}={shape!r} must be a list of integers "
                                  "(batch dim may be -1)")


@dataclass
class DataConfig:
    name: str
    calibration_samples: int = 128
    eval_samples: int = 256
    seed: int = 0
    path: str | None = None

    def validate(self) -> None:
        if self.name not in DATA_SOURCES:
            raise ConfigError(f"data={self.name} is unknown; fix: use one of {', '.join(DATA_SOURCES)}")
        positive("data.eval_samples", self.eval_samples, "data.eval_samples=256")
        positive("data.calibration_samples", self.calibration_samples, "data.calibration_samples=128", allow_zero=True)
        if self.name == "file" and (not self.path or not Path(self.path).expanduser().exists()):
            raise ConfigError(f"data.path={self.path} does not exist; "
                              "fix: data.path=/path/to/inputs.npz (or .npy, or an image directory)")


@dataclass
class MeasureConfig:
    warmup_iters: int = 10
    min_iters: int = 50
    min_time_s: float = 1.0
    repeats: int = 3
    trim: float = 0.05
    max_cv: float = 0.10  # spread of repeat means above which more repeats run (then: unstable)
    max_repeats: int = 10  # the bound on those extra repeats

    def validate(self) -> None:
        positive("measure.min_iters", self.min_iters, "measure.min_iters=50")
        positive("measure.repeats", self.repeats, "measure.repeats=3")
        positive("measure.max_cv", self.max_cv, "measure.max_cv=0.10")
        if self.max_repeats < self.repeats:
            raise ConfigError(f"measure.max_repeats={self.max_repeats} is below measure.repeats={self.repeats}; "
                              f"fix: measure.max_repeats={max(10, self.repeats)}")
        positive("measure.warmup_iters", self.warmup_iters, "measure.warmup_iters=10", allow_zero=True)
        positive("measure.min_time_s", self.min_time_s, "measure.min_time_s=1.0", allow_zero=True)
        if not 0 <= self.trim < 0.5:
            raise ConfigError(f"measure.trim={self.trim} must be in [0, 0.5); fix: measure.trim=0.05")


@dataclass
class ConfirmConfig:
    """Re-measure the close candidates at the end of a sweep, interleaved, before naming a winner."""

    enabled: bool = True
    top_k: int = 3  # at most this many candidates (those whose CI overlaps the best one's)
    rounds: int = 5  # interleaved rounds A B C A B C ...; each round is one timed repeat per candidate

    def validate(self) -> None:
        positive("confirm.top_k", self.top_k, "confirm.top_k=3")
        if self.rounds < 2:
            raise ConfigError(f"confirm.rounds={self.rounds} is too few for a confidence interval; "
                              "fix: confirm.rounds=5")


@dataclass
class FidelityConfig:
    max_accuracy_drop: float = 0.01

    def validate(self) -> None:
        if not 0 <= self.max_accuracy_drop <= 1:
            raise ConfigError(f"fidelity.max_accuracy_drop={self.max_accuracy_drop} must be in [0, 1]; "
                              "fix: fidelity.max_accuracy_drop=0.01")


@dataclass
class TrialConfig:
    timeout_s: float = 900.0
    max_memory_mb: int = 16000
    reuse_worker: bool = True

    def validate(self) -> None:
        positive("trial.timeout_s", self.timeout_s, "trial.timeout_s=900")


@dataclass
class TrackingConfig:
    uri: str | None = "sqlite:///mlflow.db"  # null with tracking=none
    experiment: str = "trtsweep"
    log_models: bool = True
    enabled: bool = True
    tags: dict = field(default_factory=dict)  # name -> text, on every run of the sweep (parent and children)
    required: bool = False  # MLflow must work: disabled or unreachable stops the sweep (trtsweep nightly)
    register_best: bool = True  # confirmed winners → trtsweep.<model> in the Model Registry (needs log_models)

    def validate(self) -> None:
        for bad in (k for k, v in self.tags.items() if isinstance(v, (dict, list))):
            raise ConfigError(f"tracking.tags.{bad}={self.tags[bad]!r} must be one value (a tag is text); "
                              f"fix: +tracking.tags.{bad}=<text>")
        self.tags = {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in self.tags.items()}
        if self.required and not self.enabled:
            raise ConfigError("tracking=none, but this sweep needs MLflow (trtsweep nightly compares with its history)"
                              "; fix: tracking=sqlite (the default) or tracking=server")


@dataclass
class TrialSpec:
    """Everything a worker needs to run one trial; JSON-serialisable."""

    model: ModelConfig
    engine: str
    engine_params: dict
    precision: str
    batch_size: int
    data: DataConfig
    measure: MeasureConfig
    fidelity: FidelityConfig
    trial: TrialConfig
    cache_dir: str
    force: bool = False
    skip_reason: str | None = None
    sweep_batch_sizes: list = field(default_factory=list)
    threads: int = 1  # the resolved core budget of this trial (what its engine's thread params follow)
    core_set: list = field(default_factory=list)  # the cores the worker is pinned to for this trial
    model_fingerprint: str = ""  # content identity of the model (see identity.model_fingerprint)
    versions: dict = field(default_factory=dict)  # converter/runtime library versions of this engine
    data_fingerprint: str = ""  # content identity of data.path (data=file): calibration and fidelity use it
    host: dict = field(default_factory=dict)  # identity.host_identity(core_set), fixed at plan time
    # bounds that judge a measurement (trtsweep.constraints): not part of the trial's identity
    constraints: ConstraintsConfig = field(default_factory=ConstraintsConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: Mapping) -> "TrialSpec":
        return TrialSpec(
            model=_known(ModelConfig, d["model"]),
            engine=d["engine"],
            engine_params=dict(d["engine_params"]),
            precision=d["precision"],
            batch_size=d["batch_size"],
            data=_known(DataConfig, d["data"]),
            measure=_known(MeasureConfig, d["measure"]),
            fidelity=_known(FidelityConfig, d["fidelity"]),
            trial=_known(TrialConfig, d["trial"]),
            cache_dir=d["cache_dir"],
            force=d.get("force", False),
            skip_reason=d.get("skip_reason"),
            sweep_batch_sizes=list(d.get("sweep_batch_sizes") or []),
            threads=int(d.get("threads", 1)), core_set=list(d.get("core_set") or []),
            model_fingerprint=d.get("model_fingerprint", ""), versions=dict(d.get("versions") or {}),
            data_fingerprint=d.get("data_fingerprint", ""), host=dict(d.get("host") or {}),
            constraints=_known(ConstraintsConfig, d.get("constraints") or {}),
        )

    # identity ---------------------------------------------------------------
    def model_key(self) -> dict:
        """The model's identity: its config plus its content (``model_fingerprint``, set at plan time)."""
        return {**model_identity(self.model), "fingerprint": self.model_fingerprint}

    def conversion_identity(self) -> dict:
        """What a converted artifact depends on: model content, converter/library versions, conversion
        parameters (and calibration data).  Batch-size and thread sweeps share one conversion."""
        eng = get_engine(self.engine)
        params = eng.conversion_params(make_params(eng, self.engine_params))
        calib = dataclasses.asdict(self.data) if eng.needs_calibration(self.precision, None) else None
        if calib is not None:
            calib.pop("eval_samples", None)
            calib["content"] = self.data_fingerprint
        ident = {"model": self.model_key(), "engine": self.engine, "precision": self.precision,
                 "params": params, "calibration": calib, "versions": self.versions}
        if self.engine == "tftrt":  # TF-TRT pre-builds engines for the batch sizes it will run
            ident["batch_sizes"] = sorted(set(self.sweep_batch_sizes or [self.batch_size]))
        return ident

    def conversion_key(self) -> str:
        return digest(self.conversion_identity())

    def trial_identity(self) -> dict:
        """What a measured result depends on: the conversion's identity, every runtime setting, the
        measurement method, and the host (CPU model and flags, core set, GPU and driver).  Not the
        ``constraints``: they judge a measurement without changing it (a cached result is judged again)."""
        return {
            "conversion": self.conversion_identity(), "params": self.engine_params, "threads": self.threads,
            "batch_size": self.batch_size, "data": dataclasses.asdict(self.data), "data_content": self.data_fingerprint,
            "measure": dataclasses.asdict(self.measure), "fidelity": dataclasses.asdict(self.fidelity),
            "host": self.host,
            "fault": None,  # the test-only fault hook's old place (now trtsweep.faults): kept, so keys stay valid
        }

    def trial_key(self) -> str:
        """Identifies a measured result: same key, same measurement (the resume cache)."""
        return digest(self.trial_identity())

    def label(self) -> str:
        """Short description: engine params only where they differ from the engine's defaults."""
        eng = get_engine(self.engine)
        defaults = dataclasses.asdict(eng.Params())
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.engine_params.items())
                         if defaults.get(k) != v and k not in eng.thread_params)
        return (f"{self.model.name} {self.engine} {self.precision} bs={self.batch_size} threads={self.threads}"
                + (f" [{extra}]" if extra else ""))


def _known(cls: type, values: Mapping) -> Any:
    """``cls`` from a stored dict, leaving out settings it no longer has (a cached result's spec)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def model_identity(model: ModelConfig) -> dict:
    """One identity per model config (cache keys, the generated model's directory): the config with
    an absolute path, plus the builder version for generated models."""
    m = dataclasses.asdict(model)
    if model.path:
        m["path"] = os.path.abspath(os.path.expanduser(model.path))
    if model.source != "saved_model":
        m["builder_version"] = GENERATED_MODEL_VERSION
    return m


def resolve_threads(value: Any) -> int:
    """``threads``: null = the core budget (affinity and cgroup quota, see :mod:`trtsweep.cores`)."""
    if value is None:
        return cores.core_budget()
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"threads={value!r} is invalid: must be an integer ≥ 1, or null for every core this "
                          f"process may use ({cores.core_budget()} here); fix: threads={cores.core_budget()}")
    return value


def to_container(cfg: Any) -> dict:
    """DictConfig (or mapping) -> plain dict with interpolations resolved."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def plan_trial(cfg: Any, sweep_batch_sizes: list[int] | None = None) -> TrialSpec:
    """Validate one composed config into a TrialSpec. Raises ConfigError on invalid values."""
    c = to_container(cfg)
    for key in ("model", "engine", "precision", "data"):
        if not isinstance(c.get(key), dict) or "name" not in c[key]:
            raise ConfigError(f"config group '{key}' is missing; fix: pass {key}=<option> (see conf/{key}/)")

    model = typed(ModelConfig, c["model"], "model")
    precision = c["precision"]["name"]
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision} is unknown; fix: use one of {', '.join(PRECISIONS)}")

    engine_values = dict(c["engine"])
    eng = get_engine(str(engine_values.get("name")))
    params = make_params(eng, engine_values)
    threads = resolve_threads(c.get("threads"))
    threads = eng.resolve_threads(params, threads, explicit=c.get("threads") is not None)

    data_values = dict(c["data"])
    if data_values.get("name") == "auto":
        data_values["name"] = model.default_data
    data = typed(DataConfig, data_values, "data")

    batch_size = c.get("batch_size")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} is invalid: must be an integer ≥ 1; fix: batch_size=1")

    measure = typed(MeasureConfig, c.get("measure", {}), "measure")
    fidelity = typed(FidelityConfig, c.get("fidelity", {}), "fidelity")
    trial = typed(TrialConfig, c.get("trial", {}), "trial")
    constraints = typed(ConstraintsConfig, c.get("constraints") or {}, "constraints")
    confirm_config(c)  # validated here so that bad values fail before work, like every other one
    tracking_config(c)

    cache_dir = str(Path(c.get("cache_dir") or "outputs/cache").expanduser().resolve())
    pinned = cores.core_set(threads)
    spec = TrialSpec(
        model=model, engine=eng.name, engine_params=dataclasses.asdict(params), precision=precision,
        batch_size=batch_size, data=data, measure=measure, fidelity=fidelity, trial=trial,
        cache_dir=cache_dir, force=bool(c.get("force", False)), constraints=constraints,
        sweep_batch_sizes=sorted(set(sweep_batch_sizes or [batch_size])),
        threads=threads, core_set=pinned,
        model_fingerprint=(model_fingerprint(model.path) if model.source == "saved_model"
                           else digest(model_identity(model))),
        versions=library_versions(eng.libraries), host=host_identity(pinned),
        data_fingerprint=data_fingerprint(data.path) if data.name == "file" and data.path else "",
    )
    reason = eng.unsupported(precision, params)
    if reason is None and eng.needs_calibration(precision, params):
        eng.require_calibration(precision, data.calibration_samples)
    if reason is None:
        availability = eng.availability()
        if not availability.available:
            reason = availability.reason
    spec.skip_reason = reason
    return spec


def confirm_config(cfg: Any) -> ConfirmConfig:
    return typed(ConfirmConfig, to_container(cfg).get("confirm") or {}, "confirm")


def tracking_config(cfg: Any) -> TrackingConfig:
    return typed(TrackingConfig, to_container(cfg).get("tracking", {}), "tracking")


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def mlflow_params(spec: TrialSpec, resolved: Mapping | None = None) -> dict[str, str]:
    """Flattened config with plain ``model``/``engine``/``precision``/``batch_size`` and ``engine.<param>``."""
    flat: dict[str, Any] = {}
    if resolved:
        flat.update(flatten({k: v for k, v in resolved.items() if k not in ("hydra",)}))
    flat.pop("engine.name", None)
    flat.pop("precision.name", None)
    flat["model"] = spec.model.name
    flat["engine"] = spec.engine
    flat["precision"] = spec.precision
    flat["batch_size"] = spec.batch_size
    flat["threads"] = spec.threads
    flat["core_set"] = ",".join(map(str, spec.core_set))
    flat["data"] = spec.data.name
    flat.pop("model.name", None)
    flat.pop("data.name", None)
    for k, v in spec.engine_params.items():
        flat[f"engine.{k}"] = v
    return {k: ("null" if v is None else str(v))[:6000] for k, v in flat.items()}
