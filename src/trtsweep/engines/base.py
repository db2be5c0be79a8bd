"""The one engine interface.

An engine is a module ``trtsweep.engines.<name>`` that defines one subclass of :class:`Engine`
(named in ``ENGINE``) plus a config file ``conf/engine/<name>.yaml``.  Nothing outside the engine
module imports the engine's library, and the module itself imports it lazily (inside methods), so
that planning a sweep never pays for importing TensorFlow, LiteRT or ONNX Runtime.

Lifecycle inside a trial worker::

    params = Engine.Params(**cfg)              # typed, validated (``validate``) at the entry
    reason = Engine.unsupported(precision, params)   # None, or why the plan skips it
    eng = Engine(params)
    result = eng.convert(model, precision, calib, out_dir)   # artifact on disk + report
    loaded = eng.load(result.artifact, model, precision, batch_size)  # a LoadedModel, fully built here
    prepared = loaded.prepare(inputs)          # outside the timed loop
    outputs = loaded.run(prepared)             # the only thing inside the timed loop
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from trtsweep.errors import ConfigError, ModelError
from trtsweep.types import Batch, CalibrationData, ModelInfo
from trtsweep.validation import typed

PRECISIONS = ("fp32", "fp16", "int8", "int8_dynamic")


@dataclass
class ConversionResult:
    artifact: str  # path of the converted model (file or directory) inside the trial's artifact dir
    convert_time_s: float
    calibrate_time_s: float = 0.0
    report: dict = field(default_factory=dict)  # engine-specific description (segments, ops left in TF...)
    metrics: dict = field(default_factory=dict)  # engine-specific metrics, e.g. trt_segments


def require_calibration(engine: str, precision: str, calibration: CalibrationData | int | None) -> None:
    """The one check that a conversion which needs calibration has samples: at planning time their
    number (``data.calibration_samples``), in ``convert`` the data itself."""
    count = calibration if isinstance(calibration, int) else len(calibration or ())
    if count == 0:
        raise ConfigError(f"precision={precision} with engine={engine} needs calibration data; "
                          f"fix: data.calibration_samples=128")


class CalibrationTimer:
    """Seconds of calibration inside a conversion (reported apart from the conversion time), however the
    converter runs it: around a block (``with timer:``), or from the first item a converter pulls from
    a calibration generator (:meth:`wrap`) to its exhaustion, or to :meth:`stop` when the converter
    keeps calibrating after the last pull."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._since: float | None = None

    def start(self) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def stop(self) -> None:
        if self._since is not None:
            self.seconds += time.perf_counter() - self._since
            self._since = None

    def __enter__(self) -> CalibrationTimer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def wrap(self, generator_fn: Callable[[], Iterator[Any]], stop_when_exhausted: bool = True
             ) -> Callable[[], Iterator[Any]]:
        def timed() -> Iterator[Any]:
            self.start()
            try:
                yield from generator_fn()
            finally:
                if stop_when_exhausted:
                    self.stop()

        return timed

    def split(self, total_s: float) -> tuple[float, float]:
        """(conversion, calibration) seconds of a conversion that took ``total_s`` in all."""
        return max(total_s - self.seconds, 0.0), self.seconds


class LoadedModel(ABC):
    """A loaded, fully built model at a fixed batch size."""

    @abstractmethod
    def prepare(self, batch: Batch) -> Any:
        """Turn numpy inputs into whatever ``run`` consumes (done outside the timed loop)."""

    @abstractmethod
    def run(self, prepared: Any) -> list[np.ndarray]:
        """Run one batch; returns host numpy outputs (copy to host is part of the call)."""

    def to_float(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs as real numbers (e.g. dequantised int8 outputs); used outside the timed loop."""
        return outputs

    def describe(self) -> dict:
        """What actually runs (ops, delegates, providers...), logged with the trial."""
        return {}

    def run_metrics(self) -> dict[str, float]:
        """Metrics of running it, read after the measurement (e.g. ``gpu_memory_mb``); default: none."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook (releases what ``load`` holds); default: nothing
        pass


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ""  # one line when not available: why, and what to use instead
    details: dict = field(default_factory=dict)


def param_stage(stage: str) -> dict:
    """Field metadata: ``convert`` params change the artifact, ``runtime`` params only how it runs."""
    return {"stage": stage}


class Engine(ABC):
    #: short name used in config (``engine=<name>``) and in results
    name: ClassVar[str]
    #: precisions this engine can produce
    precisions: ClassVar[tuple[str, ...]]
    #: typed parameters (a dataclass); fields with ``metadata=param_stage("runtime")`` do not
    #: change the converted artifact, so a sweep over them reuses one conversion
    Params: ClassVar[type]
    #: thread-count parameters that follow the top-level ``threads`` (the core budget) when left at
    #: their "auto" value (0, or -1 for LiteRT's old default); the first is the one ``threads`` names
    thread_params: ClassVar[tuple[str, ...]] = ()
    #: the "auto" values of a thread parameter (follow ``threads``)
    auto_threads: ClassVar[tuple[int, ...]] = (0,)
    #: packages whose versions identify this engine's artifacts and results (``a|b``: either one)
    libraries: ClassVar[tuple[str, ...]] = ("tensorflow|tensorflow-cpu",)
    #: its loaded models report ``gpu_memory_mb`` (``LoadedModel.run_metrics``): only these trials are
    #: judged by ``constraints.max_gpu_memory_mb``
    reports_gpu_memory: ClassVar[bool] = False
    #: how a converted artifact is logged as an MLflow model (:mod:`trtsweep.mlflow_models`): an MLflow
    #: flavor (``tensorflow``, ``onnx``) whose ``save_model`` takes :meth:`mlflow_model_args`, or
    #: ``pyfunc``: a wrapper around this engine's own loaded model, for libraries MLflow has no flavor for
    mlflow_flavor: ClassVar[str] = "pyfunc"

    def __init__(self, params: Any):
        self.params = params

    # ---- planning (cheap: no heavy imports) ----
    @classmethod
    def availability(cls) -> Availability:
        return Availability(True)

    @classmethod
    def diagnose(cls) -> dict:
        """Everything ``trtsweep doctor`` should print (may be slower than ``availability``)."""
        return dict(cls.availability().details)

    @classmethod  # noqa: B027 - an optional hook: an engine without checks of its own keeps this one
    def validate(cls, params: Any) -> None:
        """Raise ConfigError naming the field and the fix for an invalid value."""

    @classmethod
    def unsupported(cls, precision: str, params: Any) -> str | None:
        """Why this combination cannot run (the plan skips it), or None."""
        if precision not in cls.precisions:
            return (
                f"engine={cls.name} does not support precision={precision} "
                f"(supported: {', '.join(cls.precisions)})"
            )
        return None

    @classmethod
    def check_threads(cls, params: Any) -> None:
        """Every thread parameter is a count (≥ 1) or an auto value (follow ``threads``)."""
        for name in cls.thread_params:
            value = getattr(params, name)
            if value < 1 and value not in cls.auto_threads:
                raise ConfigError(f"engine.{name}={value} must be ≥ 1, or 0 to follow `threads`; "
                                  f"fix: engine.{name}=0")

    @classmethod
    def resolve_threads(cls, params: Any, threads: int, explicit: bool) -> int:
        """Set every auto thread parameter to ``threads`` (in place) and return the core budget the
        trial really has: an explicitly set ``engine.<thread param>`` wins over the default budget,
        and contradicting an explicit ``threads`` is a config error."""
        if not cls.thread_params:
            return threads
        primary = cls.thread_params[0]
        own = getattr(params, primary)
        if own > 0:
            if explicit and own != threads:
                raise ConfigError(f"engine.{primary}={own} contradicts threads={threads} (engine={cls.name}); "
                                  f"fix: set only one of them")
            threads = own
        for name in cls.thread_params:
            if getattr(params, name) <= 0:
                setattr(params, name, threads)
        return threads

    @classmethod
    def conversion_params(cls, params: Any) -> dict:
        return {
            f.name: getattr(params, f.name)
            for f in dataclasses.fields(params)
            if f.metadata.get("stage", "convert") == "convert"
        }

    @classmethod
    def process_env(cls, params: Any) -> dict[str, str]:
        """Environment the worker process must have before importing the engine's library."""
        return {}

    @classmethod
    def needs_calibration(cls, precision: str, params: Any) -> bool:
        return precision == "int8"

    @classmethod
    def calibration_batch_size(cls, params: Any, batch_sizes: list[int]) -> int:
        """Batch size of the calibration batches handed to ``convert`` (1: per-sample statistics)."""
        return 1

    @classmethod
    def require_calibration(cls, precision: str, calibration: CalibrationData | int | None) -> None:
        """Planning: ``data.calibration_samples`` > 0; ``convert``: calibration data with batches."""
        require_calibration(cls.name, precision, calibration)

    # ---- work (inside the trial worker) ----
    @abstractmethod
    def convert(
        self,
        model: ModelInfo,
        precision: str,
        calibration: CalibrationData | None,
        out_dir: Path,
        batch_sizes: Iterable[int] = (1,),
    ) -> ConversionResult:
        """Convert ``model`` into ``out_dir`` (a fresh, empty directory)."""

    @abstractmethod
    def load(self, artifact: Path, model: ModelInfo, precision: str, batch_size: int) -> LoadedModel:
        """Load and fully build the converted model for ``batch_size``."""

    def mlflow_model_args(self, artifact: Path, model: ModelInfo, loaded: LoadedModel) -> dict:
        """The arguments of ``mlflow.<mlflow_flavor>.save_model`` for ``artifact`` other than the path,
        signature, input example and requirements (e.g. ``onnx_model``); called in the trial worker with
        the measured model.  ``pyfunc`` engines need none."""
        return {}


# ---- registry: engines are discovered by module name, so adding one edits no list ----

def engine_names() -> list[str]:
    import trtsweep.engines as pkg

    return sorted(
        m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_") and m.name != "base"
    )


def get_engine(name: str) -> type[Engine]:
    names = engine_names()
    if name not in names:
        raise ConfigError(f"engine={name} is unknown; fix: use one of {', '.join(names)}")
    mod = importlib.import_module(f"trtsweep.engines.{name}")
    return mod.ENGINE


def engine_param_names(name: str) -> set[str]:
    """The parameters ``engine.<name>`` an engine takes (cheap: no engine library is imported)."""
    return {f.name for f in dataclasses.fields(get_engine(name).Params)}


def make_params(engine: type[Engine], values: Mapping[str, Any]) -> Any:
    """The engine's typed params from config values (``engine.<name>``): unknown or mistyped keys fail
    clearly (:func:`trtsweep.validation.typed`), then the thread counts, then the engine's own checks
    (``Engine.validate``)."""
    params = typed(engine.Params, {k: v for k, v in values.items() if k != "name"}, "engine",
                   owner=f"engine={engine.name}")
    engine.check_threads(params)
    engine.validate(params)
    return params


# ---- helpers shared by engines ----

def _normalize(name: str) -> str:
    """'serving_default_input_1:0' and 'input_1' compare equal after this."""
    name = name.split(":")[0]
    name = re.sub(r"^serving_default_", "", name)
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


def match_names(wanted: Sequence[str], available: Sequence[str], kind: str) -> dict[str, str]:
    """Map signature names to a converted model's names (ONNX graph, LiteRT interpreter): exact, then
    normalized, then by position for the rest (in the order of ``available``)."""
    mapping: dict[str, str] = {}
    free = list(available)
    for name in wanted:
        if name in free:
            mapping[name] = name
            free.remove(name)
    for name in [w for w in wanted if w not in mapping]:
        hits = [a for a in free if _normalize(a) == _normalize(name)]
        if len(hits) == 1:
            mapping[name] = hits[0]
            free.remove(hits[0])
    rest = [w for w in wanted if w not in mapping]
    if rest and len(rest) == len(free):
        mapping.update(zip(rest, free, strict=True))
    elif rest:
        raise ModelError(
            f"cannot match signature {kind}s {rest} to the converted model's {kind}s {list(available)}; "
            f"fix: check model.signature_key or re-export the SavedModel with named {kind}s"
        )
    return mapping
