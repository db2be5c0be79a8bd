"""ONNX Runtime engine: SavedModel → ONNX (tf2onnx) → fp32 / fp16 / int8 (static) / int8 (dynamic).

One artifact (``model.onnx``) serves every batch size: the batch dimension stays symbolic.
Conversion parameters (``opset``, ``quant_format``, ``per_channel``, ``activation_type``,
``reduce_range``) change the artifact; runtime parameters only change the ``InferenceSession``.

tf2onnx, onnx, onnxruntime and TensorFlow are imported inside functions so that planning a sweep
stays cheap (``availability`` imports only onnxruntime, once per process).

This package holds the parameters, the loaded model and the engine; the private modules hold one idea
each and never import this package at run time:

- ``_convert``: SavedModel → ONNX (tf2onnx), fp16;
- ``_quantize``: int8 dynamic and static (calibrated) quantization;
- ``_graph``: what a graph holds (op types, quantized nodes, ops onnxruntime cannot run).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtsweep.engines.base import (
    Availability,
    CalibrationTimer,
    ConversionResult,
    Engine,
    LoadedModel,
    match_names,
    param_stage,
)
from trtsweep.engines.onnx._convert import OnnxConversionError, to_fp16, to_onnx
from trtsweep.engines.onnx._graph import describe_onnx, unsupported_ops
from trtsweep.engines.onnx._quantize import (
    ACTIVATION_TYPES,
    QUANT_FORMATS,
    preprocess,
    quantize_int8_dynamic,
    quantize_int8_static,
)
from trtsweep.errors import ConfigError, ModelError, one_line
from trtsweep.types import Batch, CalibrationData, ModelInfo, TensorSpec

ARTIFACT_NAME = "model.onnx"

#: tf2onnx 1.17 maps TF ops up to opset 18; opset 13 is the floor for per-channel QDQ quantization
MIN_OPSET, MAX_OPSET = 13, 18

GRAPH_OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
EXECUTION_MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}
EXECUTION_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}

_ORT_TYPE_TO_NUMPY = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


@dataclass
class OnnxParams:
    #: ONNX opset tf2onnx targets (convert stage)
    opset: int = 17
    #: threads inside one op; 0 = follow `threads` (the core budget)
    intra_op_num_threads: int = field(default=0, metadata=param_stage("runtime"))
    #: threads across independent ops (only used with execution_mode=parallel); 0 = follow `threads`
    inter_op_num_threads: int = field(default=0, metadata=param_stage("runtime"))
    #: graph optimizations at session creation: disable | basic | extended | all
    graph_optimization_level: str = field(default="all", metadata=param_stage("runtime"))
    #: sequential | parallel
    execution_mode: str = field(default="sequential", metadata=param_stage("runtime"))
    #: int8 graph format: qdq (Q/DQ pairs, fused by ORT) | qoperator (QLinearConv...)
    quant_format: str = "qdq"
    #: per-output-channel weight scales for int8 / int8_dynamic
    per_channel: bool = True
    #: int8 static activations: uint8 (ORT's advice for x86) | int8 (ARM, GPU)
    activation_type: str = "uint8"
    #: 7-bit weights: avoids int16 saturation on x86 CPUs without VNNI
    reduce_range: bool = False
    #: execution provider: cpu | cuda | tensorrt | openvino | dnnl | coreml
    provider: str = field(default="cpu", metadata=param_stage("runtime"))


class OnnxEngine(Engine):
    name = "onnx"
    precisions = ("fp32", "fp16", "int8", "int8_dynamic")
    Params = OnnxParams
    thread_params = ("intra_op_num_threads", "inter_op_num_threads")
    libraries = ("tensorflow|tensorflow-cpu", "tf2onnx", "onnx", "onnxruntime|onnxruntime-gpu")
    mlflow_flavor = "onnx"

    # ---- planning ----------------------------------------------------------
    @classmethod
    def availability(cls) -> Availability:
        return _availability()

    @classmethod
    def validate(cls, params: OnnxParams) -> None:
        if not MIN_OPSET <= params.opset <= MAX_OPSET:
            raise ConfigError(
                f"engine.opset={params.opset} is out of range; fix: use {MIN_OPSET}..{MAX_OPSET} "
                f"(tf2onnx 1.17 supports up to {MAX_OPSET}; e.g. engine.opset=17)"
            )
        _check_choice("graph_optimization_level", params.graph_optimization_level, GRAPH_OPTIMIZATION_LEVELS)
        _check_choice("execution_mode", params.execution_mode, EXECUTION_MODES)
        _check_choice("quant_format", params.quant_format, QUANT_FORMATS)
        _check_choice("activation_type", params.activation_type, ACTIVATION_TYPES)
        _check_choice("provider", params.provider, EXECUTION_PROVIDERS)

    @classmethod
    def unsupported(cls, precision: str, params: Any) -> str | None:
        reason = super().unsupported(precision, params)
        if reason is not None or params is None or params.provider == "cpu":
            return reason
        avail = _availability()
        wanted = EXECUTION_PROVIDERS[params.provider]
        if avail.available and wanted not in avail.details.get("providers", []):
            return (
                f"engine.provider={params.provider} needs {wanted}, which this onnxruntime build lacks "
                f"(available: {', '.join(avail.details.get('providers', []))}); fix: engine.provider=cpu"
            )
        return None

    # ---- work --------------------------------------------------------------
    def convert(
        self,
        model: ModelInfo,
        precision: str,
        calibration: CalibrationData | None,
        out_dir: Path,
        batch_sizes: Iterable[int] = (1,),
    ) -> ConversionResult:
        reason = self.unsupported(precision, self.params)
        if reason is not None:
            raise ConfigError(reason)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        artifact = out_dir / ARTIFACT_NAME
        report: dict[str, Any] = {"precision": precision}

        import onnx

        t0 = time.perf_counter()
        calibration_timer = CalibrationTimer()
        proto = to_onnx(model, self.params.opset)
        if precision == "fp32":
            onnx.save(proto, str(artifact))
        elif precision == "fp16":
            onnx.save(to_fp16(proto), str(artifact))
        else:
            report.update(self._quantize(proto, precision, artifact, model, calibration, calibration_timer))
        convert_s, calibrate_s = calibration_timer.split(time.perf_counter() - t0)  # calibration on its own

        final = onnx.load(str(artifact))
        report.update(describe_onnx(final))
        report["providers"] = [EXECUTION_PROVIDERS[self.params.provider]]
        report["available_providers"] = _availability().details.get("providers", [])
        report["artifact_mb"] = round(artifact.stat().st_size / 2**20, 4)
        report["batch_dimension"] = "dynamic"
        report["batch_sizes"] = sorted(set(int(b) for b in batch_sizes))
        return ConversionResult(
            artifact=str(artifact),
            convert_time_s=convert_s,
            calibrate_time_s=calibrate_s,
            report=report,
            metrics={"converted_fraction": 1.0},
        )

    def _quantize(self, proto: Any, precision: str, artifact: Path, model: ModelInfo,
                  calibration: CalibrationData | None, timer: CalibrationTimer) -> dict:
        """int8 / int8_dynamic into ``artifact``; returns the report entries."""
        import onnx

        with tempfile.TemporaryDirectory(dir=artifact.parent, prefix="tmp-") as tmp:
            fp32_path = Path(tmp) / "model_fp32.onnx"
            onnx.save(proto, str(fp32_path))
            source, preprocessed = preprocess(fp32_path, Path(tmp) / "model_pre.onnx")
            if precision == "int8_dynamic":
                return {"preprocess": preprocessed, **quantize_int8_dynamic(source, artifact, self.params)}
            self.require_calibration(precision, calibration)
            assert calibration is not None
            with timer:  # static: calibration runs inside quantize_static
                details = quantize_int8_static(source, artifact, self.params, model, calibration)
            return {"preprocess": preprocessed, **details}

    def load(self, artifact: Path, model: ModelInfo, precision: str, batch_size: int) -> LoadedModel:
        import onnxruntime as ort

        path = _artifact_file(Path(artifact))
        options = session_options(self.params)
        providers = [EXECUTION_PROVIDERS[self.params.provider]]
        if providers[0] != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")  # ORT assigns ops the provider lacks to CPU
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        return OnnxModel(session, model, batch_size, _options_dict(self.params))

    def mlflow_model_args(self, artifact: Path, model: ModelInfo, loaded: LoadedModel) -> dict:
        """The ONNX model with this trial's session options and providers (MLflow's pyfunc runs it so)."""
        import onnx
        import onnxruntime as ort

        p = self.params
        level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION_LEVELS[p.graph_optimization_level])
        providers = list(dict.fromkeys([EXECUTION_PROVIDERS[p.provider], "CPUExecutionProvider"]))
        return {"onnx_model": onnx.load(str(_artifact_file(Path(artifact)))), "onnx_execution_providers": providers,
                "onnx_session_options": {"intra_op_num_threads": p.intra_op_num_threads,
                                         "inter_op_num_threads": p.inter_op_num_threads,
                                         "execution_mode": p.execution_mode,
                                         "graph_optimization_level": int(level)}}


ENGINE = OnnxEngine


# ---------------------------------------------------------------------------
# loaded model
class OnnxModel(LoadedModel):
    """An ``InferenceSession`` plus the name/dtype mapping between the signature and the ONNX graph."""

    def __init__(self, session: Any, model: ModelInfo, batch_size: int, options: dict):
        self._session = session
        self._batch_size = batch_size
        self._options = options
        onnx_inputs = session.get_inputs()
        in_map = match_names([t.name for t in model.inputs], [i.name for i in onnx_inputs], "input")
        dtypes = {i.name: _ORT_TYPE_TO_NUMPY.get(i.type) for i in onnx_inputs}
        self._inputs: list[tuple[TensorSpec, str, Any]] = [
            (spec, in_map[spec.name], dtypes[in_map[spec.name]] or np.dtype(spec.dtype)) for spec in model.inputs
        ]
        out_map = match_names([t.name for t in model.outputs], [o.name for o in session.get_outputs()], "output")
        self._output_names = [out_map[t.name] for t in model.outputs]

    def prepare(self, batch: Batch) -> dict[str, np.ndarray]:
        feed = {}
        for spec, onnx_name, dtype in self._inputs:
            if spec.name in batch:
                value = batch[spec.name]
            elif onnx_name in batch:
                value = batch[onnx_name]
            else:
                raise ModelError(
                    f"batch has no input '{spec.name}' (got {', '.join(sorted(batch)) or 'nothing'}); "
                    f"fix: feed arrays keyed by the signature input names"
                )
            feed[onnx_name] = np.ascontiguousarray(value, dtype=dtype)
        return feed

    def run(self, prepared: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(self._output_names, prepared)

    def describe(self) -> dict:
        return {
            "providers": self._session.get_providers(),
            "session_options": dict(self._options),
            "inputs": {spec.name: onnx_name for spec, onnx_name, _ in self._inputs},
            "outputs": list(self._output_names),
            "batch_size": self._batch_size,
        }

    def close(self) -> None:
        self._session = None


# ---------------------------------------------------------------------------
# planning helpers
@functools.lru_cache(maxsize=1)
def _availability() -> Availability:
    missing = [m for m in ("onnxruntime", "tf2onnx", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        return Availability(
            False,
            f"engine=onnx needs {', '.join(missing)}; fix: pip install onnxruntime tf2onnx onnx (or use engine=tf)",
        )
    try:
        import onnxruntime as ort

        providers = list(ort.get_available_providers())
    except Exception as e:  # noqa: BLE001 - a broken wheel (missing shared library...) is "unavailable", not a crash
        return Availability(False, f"onnxruntime does not import: {one_line(e)}; fix: pip install -U onnxruntime")
    details = {
        "onnxruntime": importlib.metadata.version("onnxruntime"),
        "tf2onnx": importlib.metadata.version("tf2onnx"),
        "onnx": importlib.metadata.version("onnx"),
        "providers": providers,
    }
    return Availability(True, details=details)


def _check_choice(fname: str, value: str, choices: dict) -> None:
    if value not in choices:
        default = OnnxParams.__dataclass_fields__[fname].default
        raise ConfigError(
            f"engine.{fname}={value!r} is unknown; fix: use one of {', '.join(choices)} "
            f"(default: engine.{fname}={default})"
        )


# ---------------------------------------------------------------------------
# loading
def _artifact_file(artifact: Path) -> Path:
    path = artifact / ARTIFACT_NAME if artifact.is_dir() else artifact
    if not path.is_file():
        raise ModelError(f"no ONNX model at {path}; fix: convert first (engine=onnx writes {ARTIFACT_NAME})")
    return path


def session_options(params: OnnxParams) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = params.intra_op_num_threads
    options.inter_op_num_threads = params.inter_op_num_threads
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION_LEVELS[params.graph_optimization_level])
    options.execution_mode = getattr(ort.ExecutionMode, EXECUTION_MODES[params.execution_mode])
    options.log_severity_level = 3  # errors only: fp16/int8 fallbacks otherwise warn on every session
    return options


def _options_dict(params: OnnxParams) -> dict:
    return {
        "intra_op_num_threads": params.intra_op_num_threads,
        "inter_op_num_threads": params.inter_op_num_threads,
        "graph_optimization_level": params.graph_optimization_level,
        "execution_mode": params.execution_mode,
        "provider": params.provider,
    }


__all__ = ["ENGINE", "OnnxEngine", "OnnxParams", "OnnxModel", "OnnxConversionError", "describe_onnx", "match_names",
           "session_options", "unsupported_ops"]
