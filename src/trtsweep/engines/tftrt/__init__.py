"""TF-TRT engine: SavedModel → ``TrtGraphConverterV2`` → SavedModel whose TensorRT-compatible
subgraphs are replaced by ``TRTEngineOp`` segments (fp32 / fp16 / int8 with calibration).

Written against the TF-TRT API of TensorFlow 2.16–2.17, the last releases built with TensorRT
(NGC TensorFlow containers, see ``docker/``).  Every keyword passed to TensorFlow is checked against
``inspect.signature`` of the *installed* classes, so an older or newer TensorFlow that lacks an
argument fails with a :class:`ConfigError` instead of silently dropping a setting.

Engines are built inside :meth:`TFTRTEngine.convert` (``converter.build``) for every batch size the
sweep will time, and saved with the model, so no TensorRT engine is built inside the timed loop.

TensorFlow is imported only inside functions.  :meth:`TFTRTEngine.availability` answers at once
where there is no NVIDIA driver; elsewhere it probes TensorFlow in a child process (unless the caller
has imported it already), so planning a sweep stays TF-free and a TensorRT library that crashes when
loaded cannot take the planner down with it.

This package holds the parameters, the loaded model and the engine; the private modules hold one idea each
and never import this package at run time:

- ``_api``: the keyword arguments of each TF-TRT call, checked against the installed signatures;
- ``_inputs``: calibration and engine-build input functions;
- ``_graph_report``: what was converted (TensorRT segments vs ops left in TensorFlow) and its traps;
- ``_probe``: whether TF-TRT can run here (the TensorFlow probe, availability);
- ``_diagnostics``: one-line hints for known TF-TRT failures, the native build log.
"""

from __future__ import annotations

import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from trtsweep.engines.base import Availability, CalibrationTimer, ConversionResult, Engine, LoadedModel
from trtsweep.engines.tftrt._api import (
    API_BUILD,
    API_CONVERT,
    API_INIT,
    API_SAVE,
    FIELD_TO_API,
    PRECISION_MODES,
    check_installed_api,
    trt_call_kwargs,
)
from trtsweep.engines.tftrt._diagnostics import (
    BUILD_LOG,
    _capture_native_log,
    _hinted_errors,
    log_warnings,
    trt_error_hint,
)
from trtsweep.engines.tftrt._graph_report import conversion_report
from trtsweep.engines.tftrt._inputs import (
    _np_dtype,
    build_batch_sizes,
    build_input_fn,
    calibration_input_fn,
    input_order,
)
from trtsweep.engines.tftrt._probe import (
    _availability,
    _probe_in_subprocess,
    _require_available,
    _version,
    availability_from_probe,
    probe_tensorflow,
)
from trtsweep.errors import ConfigError, ModelError
from trtsweep.types import Batch, CalibrationData, ModelInfo

SAVED_MODEL_DIR = "saved_model"

#: ``trt_convert.supported_profile_strategies()`` of TF 2.16/2.17 (and 2.21)
PROFILE_STRATEGIES = ("Range", "Optimal", "Range+Optimal", "ImplicitBatchModeCompatible")
DEFAULT_PROFILE_STRATEGY = "Range"
#: TF-TRT casts the workspace size to int64 and adds to it: it uses ``sys.maxsize - 512`` as its own cap
MAX_WORKSPACE_BYTES = sys.maxsize - 512


@dataclass
class TFTRTParams:
    """TF-TRT parameters (``conf/engine/tftrt.yaml``); all change the converted artifact."""

    max_workspace_size_bytes: int = 1 << 30
    minimum_segment_size: int = 3
    #: largest batch size to pre-build engines for, on top of the sweep's batch sizes
    max_batch_size: int = 1
    maximum_cached_engines: int = 1
    use_calibration: bool = True
    allow_build_at_runtime: bool = True
    #: TF-TRT's own default is False (implicit batch), which TensorRT 10 no longer has: see implicit_batch_reason
    use_dynamic_shape: bool = True
    dynamic_shape_profile_strategy: str = DEFAULT_PROFILE_STRATEGY
    #: run ``converter.build()`` so engines are built and saved at conversion, not at first call
    build_engines: bool = True


# ---------------------------------------------------------------------------------------------
# validation and the keyword arguments handed to TF-TRT


def validate_params(p: TFTRTParams) -> None:
    """Raise :class:`ConfigError` naming the field and the fix for the first invalid value."""
    if p.max_workspace_size_bytes <= 0:
        raise ConfigError(f"engine.max_workspace_size_bytes={p.max_workspace_size_bytes} must be > 0; "
                          f"fix: engine.max_workspace_size_bytes=1073741824 (1 GiB)")
    if p.max_workspace_size_bytes > MAX_WORKSPACE_BYTES:
        raise ConfigError(f"engine.max_workspace_size_bytes={p.max_workspace_size_bytes} overflows TF-TRT's int64 "
                          f"(max {MAX_WORKSPACE_BYTES}); fix: engine.max_workspace_size_bytes=4294967296")
    if p.minimum_segment_size < 1:
        raise ConfigError(f"engine.minimum_segment_size={p.minimum_segment_size} must be ≥ 1 (TF-TRT's -1 disables "
                          f"conversion of the main graph, which leaves nothing to measure); "
                          f"fix: engine.minimum_segment_size=3")
    if p.max_batch_size < 1:
        raise ConfigError(f"engine.max_batch_size={p.max_batch_size} must be ≥ 1; fix: engine.max_batch_size=1 "
                          f"(engines are built for every swept batch_size anyway)")
    if p.maximum_cached_engines < 1:
        raise ConfigError(f"engine.maximum_cached_engines={p.maximum_cached_engines} must be ≥ 1; "
                          f"fix: engine.maximum_cached_engines=<number of swept batch sizes>")
    strategy = p.dynamic_shape_profile_strategy
    if strategy not in PROFILE_STRATEGIES:
        near = [s for s in PROFILE_STRATEGIES if s.lower() == str(strategy).lower()]
        fix = near[0] if near else DEFAULT_PROFILE_STRATEGY
        raise ConfigError(f"engine.dynamic_shape_profile_strategy={strategy!r} is unknown; fix: "
                          f"engine.dynamic_shape_profile_strategy={fix} (one of {', '.join(PROFILE_STRATEGIES)})")
    if strategy != DEFAULT_PROFILE_STRATEGY and not p.use_dynamic_shape:
        raise ConfigError(f"engine.dynamic_shape_profile_strategy={strategy} only applies with "
                          f"engine.use_dynamic_shape=true; fix: engine.use_dynamic_shape=true or "
                          f"engine.dynamic_shape_profile_strategy={DEFAULT_PROFILE_STRATEGY}")
    if p.use_dynamic_shape and not p.build_engines:
        raise ConfigError("engine.use_dynamic_shape=true needs engine.build_engines=true: TF-TRT collects the "
                          "optimization profiles in converter.build(); fix: engine.build_engines=true")
    if not p.build_engines and not p.allow_build_at_runtime:
        raise ConfigError("engine.build_engines=false with engine.allow_build_at_runtime=false leaves every "
                          "TRTEngineOp without an engine, so the model would run entirely in TensorFlow; "
                          "fix: engine.build_engines=true")


def implicit_batch_reason(params: TFTRTParams, loaded_tensorrt: Sequence[int] | None) -> str | None:
    """Why implicit-batch conversion cannot work with the loaded TensorRT, or None.

    TensorRT 10 removed implicit batch mode (NGC containers from 24.05 on ship TensorRT 10): with
    ``use_dynamic_shape=false`` TF-TRT then builds no engine and silently runs native TensorFlow.
    """
    if params.use_dynamic_shape or not loaded_tensorrt or loaded_tensorrt[0] < 10:
        return None
    return (f"TensorRT {_version(loaded_tensorrt)} has no implicit batch mode, so engine.use_dynamic_shape=false "
            f"would build no TensorRT engine (TF-TRT silently runs TensorFlow); fix: engine.use_dynamic_shape=true")


# ---------------------------------------------------------------------------------------------
# process-level plumbing used by convert/load


def _allow_gpu_memory_growth() -> None:
    """Let TensorRT get GPU memory for its workspace: TensorFlow otherwise reserves nearly all of it."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        with suppress(RuntimeError, ValueError):  # GPUs already initialised in this process: leave as is
            tf.config.experimental.set_memory_growth(gpu, True)


def _resolve_saved_model(artifact: Path) -> Path:
    artifact = Path(artifact)
    if (artifact / SAVED_MODEL_DIR / "saved_model.pb").exists():
        return artifact / SAVED_MODEL_DIR
    if (artifact / "saved_model.pb").exists():
        return artifact
    raise ModelError(f"{artifact} holds no TF-TRT SavedModel (no saved_model.pb); re-run the conversion with "
                     "force=true")


# ---------------------------------------------------------------------------------------------
# loaded model and engine


class TFTRTModel(LoadedModel):
    """The converted SavedModel's signature at one batch size; engines deserialized in ``__init__``."""

    def __init__(self, saved_model_dir: Path, model: ModelInfo, batch_size: int):
        import tensorflow as tf

        self._tf = tf
        self._model = model
        self._batch_size = batch_size
        self._device = "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"
        if self._device == "/GPU:0":  # gpu_memory_mb (run_metrics) is this model's peak: from here on
            with suppress(AttributeError, ValueError):  # reset_memory_stats: TF ≥ 2.9
                tf.config.experimental.reset_memory_stats("GPU:0")
        self._loaded = tf.saved_model.load(str(saved_model_dir))
        if model.signature_key not in self._loaded.signatures:
            raise ModelError(f"converted model has no signature '{model.signature_key}' "
                             f"(has {', '.join(self._loaded.signatures)}); re-run the conversion with force=true")
        self._fn = self._loaded.signatures[model.signature_key]
        self._dtypes = {s.name: _np_dtype(s) for s in model.inputs}
        outputs = list(self._fn.structured_outputs)
        declared = [o.name for o in model.outputs]
        # same order as the native-TF reference (the model's declared outputs), else sorted keys
        self._output_keys = declared if declared and set(declared) <= set(outputs) else sorted(outputs)
        self._warm_up()

    def _warm_up(self) -> None:
        """One call at this batch size: deserializes (or builds) the engines before any timing."""
        zeros = {s.name: np.zeros(s.concrete(self._batch_size), dtype=self._dtypes[s.name]) for s in self._model.inputs}
        self.run(self.prepare(zeros))

    def prepare(self, batch: Batch) -> dict:
        tf = self._tf
        with tf.device(self._device):
            return {n: tf.identity(tf.constant(np.asarray(batch[n], dtype=dt))) for n, dt in self._dtypes.items()}

    def run(self, prepared: dict) -> list[np.ndarray]:
        out = self._fn(**prepared)
        return [out[k].numpy() for k in self._output_keys]  # .numpy() copies to host: the GPU sync point

    def run_metrics(self) -> dict[str, float]:
        """``gpu_memory_mb``: the peak of TensorFlow's GPU allocator since this model was loaded (engines
        deserialized, warm-up, the timed loop), ``tf.config.experimental.get_memory_info('GPU:0')['peak']``
        in bytes; what TF-TRT allocates through that allocator is in it.  None on CPU."""
        if self._device != "/GPU:0":
            return {}
        with suppress(AttributeError, ValueError):  # an older TF without get_memory_info: not reported
            return {"gpu_memory_mb": self._tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20}
        return {}

    def describe(self) -> dict:
        from trtsweep.gpu import gpu_facts

        report = conversion_report(self._fn.graph.as_graph_def())
        return {
            "device": self._device,
            "batch_size": self._batch_size,
            "trt_segments": report["trt_segments"],
            "trt_converted_fraction": report["trt_converted_fraction"],
            "segment_node_counts": report["segment_node_counts"],
            "ops_in_tf": report["ops_in_tf"],
            "gpu": gpu_facts(),
        }


class TFTRTEngine(Engine):
    name = "tftrt"
    precisions = tuple(PRECISION_MODES)
    reports_gpu_memory = True  # TFTRTModel.run_metrics: gpu_memory_mb (constraints.max_gpu_memory_mb)
    Params = TFTRTParams
    #: TensorRT is linked into TensorFlow (its version follows TF's); the pip ``tensorrt`` where present
    libraries = ("tensorflow|tensorflow-cpu", "tensorrt")
    #: the converted SavedModel, re-saved whole (engines included) with a ``__call__`` for MLflow's pyfunc
    mlflow_flavor = "tensorflow"

    # ---- planning ----
    @classmethod
    def availability(cls) -> Availability:
        return _availability()

    @classmethod
    def diagnose(cls) -> dict:
        """The full probe even without a GPU driver: TF version, CUDA/TensorRT build, TensorRT versions, GPUs."""
        facts = _probe_in_subprocess()
        return {k: v for k, v in availability_from_probe(facts).details.items() if k != "note"}

    @classmethod
    def validate(cls, params: TFTRTParams) -> None:
        validate_params(params)

    @classmethod
    def unsupported(cls, precision: str, params: Any) -> str | None:
        reason = super().unsupported(precision, params)
        if reason is not None or params is None:
            return reason
        if precision == "int8" and not params.use_calibration:
            return ("engine=tftrt precision=int8 with engine.use_calibration=false needs a quantization-aware model "
                    "with dynamic ranges on every tensor, which trtsweep does not produce; "
                    "fix: engine.use_calibration=true")
        avail = cls.availability()
        return implicit_batch_reason(params, avail.details.get("loaded_tensorrt")) if avail.available else None

    @classmethod
    def needs_calibration(cls, precision: str, params: Any) -> bool:
        # params is None when only the precision is known (e.g. TrialSpec.conversion_key): default is True
        return precision == "int8" and (params is None or bool(params.use_calibration))

    @classmethod
    def calibration_batch_size(cls, params: Any, batch_sizes: list[int]) -> int:
        """The largest built batch size: TF-TRT calibrates on one input shape, which must lie inside the
        dynamic-shape profile (built sizes), and in implicit-batch mode the calibrated engine is built at
        that size, so it must be the largest for every timed batch to fit it."""
        return max(build_batch_sizes(params if params is not None else TFTRTParams(), batch_sizes or [1]))

    @classmethod
    def process_env(cls, params: Any) -> dict[str, str]:
        return {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}

    # ---- work ----
    def convert(self, model: ModelInfo, precision: str, calibration: CalibrationData | None, out_dir: Path,
                batch_sizes: Iterable[int] = (1,)) -> ConversionResult:
        params: TFTRTParams = self.params
        timed = tuple(batch_sizes)
        avail = _require_available()
        implicit = implicit_batch_reason(params, avail.details.get("loaded_tensorrt"))
        if implicit:
            raise ConfigError(implicit)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        shapes = build_batch_sizes(params, timed)
        calls = trt_call_kwargs(params, precision, model.path, model.signature_key, str(out_dir / SAVED_MODEL_DIR))
        check_installed_api(calls)
        calibration_timer = CalibrationTimer()  # from the first calibration batch pulled to the last
        if self.needs_calibration(precision, params):
            self.require_calibration(precision, calibration)
            assert calibration is not None
            calibration_fn = calibration_input_fn(calibration, model)
            calls[API_CONVERT]["calibration_input_fn"] = calibration_timer.wrap(calibration_fn)
        calls[API_BUILD]["input_fn"] = build_input_fn(model, shapes)

        from tensorflow.python.compiler.tensorrt import trt_convert

        _allow_gpu_memory_growth()
        log_path = out_dir / BUILD_LOG
        t0 = time.perf_counter()
        with _hinted_errors(log_path), _capture_native_log(log_path):
            converter = trt_convert.TrtGraphConverterV2(**calls[API_INIT])
            converted = converter.convert(**calls[API_CONVERT])
            if params.build_engines:
                converter.build(**calls[API_BUILD])
            converter.save(**calls[API_SAVE])
        convert_s, calibrate_s = calibration_timer.split(time.perf_counter() - t0)

        report = conversion_report(converted.graph.as_graph_def(), params=params, timed_batch_sizes=timed)
        report["warnings"] += log_warnings(log_path.read_text(errors="replace") if log_path.exists() else "")
        report.update({
            "precision_mode": PRECISION_MODES[precision],
            "build_batch_sizes": list(shapes) if params.build_engines else [],
            "calibration_batches": len(calibration) if calls[API_CONVERT]["calibration_input_fn"] else 0,
            "converter_kwargs": {k: v for k, v in calls[API_INIT].items()},
            "tensorflow": avail.details.get("tf_version"),
            "tensorrt_linked": _version(avail.details.get("linked_tensorrt")),
            "tensorrt_loaded": _version(avail.details.get("loaded_tensorrt")),
        })
        report["warnings"] += avail.details.get("warnings", [])
        return ConversionResult(
            artifact=str(out_dir / SAVED_MODEL_DIR),
            convert_time_s=convert_s,
            calibrate_time_s=calibrate_s,
            report=report,
            metrics={k: report[k] for k in ("trt_segments", "trt_converted_fraction")},
        )

    def load(self, artifact: Path, model: ModelInfo, precision: str, batch_size: int) -> LoadedModel:
        _require_available()
        _allow_gpu_memory_growth()
        with _hinted_errors():
            return TFTRTModel(_resolve_saved_model(Path(artifact)), model, batch_size)

    def mlflow_model_args(self, artifact: Path, model: ModelInfo, loaded: LoadedModel) -> dict:
        from trtsweep.engines.tf import saved_model_args

        assert isinstance(loaded, TFTRTModel)
        return saved_model_args(loaded._loaded, model)


ENGINE = TFTRTEngine

__all__ = [
    "ENGINE", "TFTRTEngine", "TFTRTParams", "TFTRTModel", "FIELD_TO_API", "PROFILE_STRATEGIES",
    "availability_from_probe", "build_batch_sizes", "build_input_fn", "calibration_input_fn",
    "check_installed_api", "conversion_report", "implicit_batch_reason", "input_order", "log_warnings",
    "probe_tensorflow",
    "trt_call_kwargs", "trt_error_hint", "validate_params",
]
