"""TFLite / LiteRT: converted with TensorFlow's TFLiteConverter, run with ``ai_edge_litert``'s
Interpreter (``tf.lite.Interpreter`` is deprecated).

Precisions: ``fp32``; ``fp16`` (float16 weights); ``int8_dynamic`` (dynamic-range: int8 weights,
float activations, no calibration); ``int8`` (full integer with a representative dataset; float
input/output unless ``int8_io``).  Ops the builtin set lacks are kept as TensorFlow (Flex) ops when
``allow_tf_ops``; the report says what fraction stayed builtin.  The pip LiteRT build has no Flex
delegate, so such a model converts (partially) but cannot run here: the trial fails saying so.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

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
from trtsweep.errors import TrtsweepError, one_line
from trtsweep.types import CalibrationData, ModelInfo


@dataclass
class TFLiteParams:
    num_threads: int = field(default=0, metadata=param_stage("runtime"))  # 0 (or -1) = follow `threads`
    use_xnnpack: bool = field(default=True, metadata=param_stage("runtime"))
    allow_tf_ops: bool = True  # keep unsupported ops as TF (Flex) ops instead of failing conversion
    int8_io: bool = False  # full-integer models: int8 input/output instead of float


def _interpreter_cls():
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter


def ops_report(interpreter) -> dict:
    ops = [o["op_name"] for o in interpreter._get_ops_details()]  # LiteRT's only op listing (private API)
    counts = Counter(ops)
    flex = {k: v for k, v in counts.items() if k.startswith("Flex")}
    custom = {k: v for k, v in counts.items() if k == "CUSTOM" or k.startswith("Custom")}
    tensors = interpreter.get_tensor_details()
    int8 = sum(1 for t in tensors if np.dtype(t["dtype"]) in (np.int8, np.uint8))
    return {
        "ops_total": len(ops),
        "op_types": dict(sorted(counts.items())),
        "ops_left_in_tf": flex,
        "custom_ops": custom,
        "converted_fraction": (len(ops) - sum(flex.values())) / len(ops) if ops else 1.0,
        "int8_tensors": int8,
        "tensors": len(tensors),
    }


class TFLiteModel(LoadedModel):
    def __init__(self, path: Path, model: ModelInfo, batch_size: int, params: TFLiteParams):
        Interpreter = _interpreter_cls()
        if params.num_threads <= 0:  # not resolved by the plan (a direct caller): the core budget
            from trtsweep.cores import core_budget

            params = dataclasses.replace(params, num_threads=core_budget())
        kwargs: dict[str, Any] = {"model_path": str(path), "num_threads": params.num_threads}
        if not params.use_xnnpack:
            from ai_edge_litert.interpreter import OpResolverType

            kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self.interpreter = it = Interpreter(**kwargs)
        self.report = ops_report(it)
        if self.report["ops_left_in_tf"]:
            raise TrtsweepError(
                f"the converted model keeps TensorFlow ops {sorted(self.report['ops_left_in_tf'])} "
                f"({self.report['converted_fraction']:.0%} of ops converted) and this LiteRT build has no Flex "
                f"delegate to run them; fix: engine=tf or engine=onnx for this model, or a LiteRT build with Flex"
            )
        details = it.get_input_details()
        if len(details) != len(model.inputs):
            raise TrtsweepError(f"converted model has {len(details)} inputs, the signature {len(model.inputs)}")
        self._inputs = []
        for spec, d in zip(model.inputs, _match(model.inputs, details, "input"), strict=True):
            shape = spec.concrete(batch_size)
            if tuple(d["shape"]) != shape:
                it.resize_tensor_input(d["index"], list(shape), strict=False)
            self._inputs.append((spec.name, d["index"]))
        it.allocate_tensors()
        in_details = {d["index"]: d for d in it.get_input_details()}
        self._in_quant = {idx: in_details[idx].get("quantization", (0.0, 0)) for _, idx in self._inputs}
        self._in_dtype = {idx: in_details[idx]["dtype"] for _, idx in self._inputs}
        outs = it.get_output_details()
        self._outputs = [(d["index"], d.get("quantization", (0.0, 0)), d["dtype"])
                         for d in _match(model.outputs, outs, "output")]
        self._set, self._invoke, self._get = it.set_tensor, it.invoke, it.get_tensor
        self.params = params

    def prepare(self, batch: dict) -> list:
        prepared = []
        for name, idx in self._inputs:
            x = batch[name]
            dtype = self._in_dtype[idx]
            if np.dtype(dtype) in (np.int8, np.uint8) and x.dtype.kind == "f":
                scale, zero = self._in_quant[idx]
                info = np.iinfo(dtype)
                x = np.clip(np.round(x / scale + zero), info.min, info.max)
            prepared.append((idx, np.ascontiguousarray(x.astype(dtype, copy=False))))
        return prepared

    def run(self, prepared: list) -> list[np.ndarray]:
        for idx, x in prepared:
            self._set(idx, x)
        self._invoke()
        return [self._get(idx) for idx, _, _ in self._outputs]

    def to_float(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        res = []
        for y, (_, (scale, zero), dtype) in zip(outputs, self._outputs, strict=True):
            if np.dtype(dtype) in (np.int8, np.uint8) and scale:
                y = (y.astype(np.float32) - zero) * scale
            res.append(y)
        return res

    def describe(self) -> dict:
        return {"num_threads": self.params.num_threads, "xnnpack": self.params.use_xnnpack,
                "interpreter": "ai_edge_litert", **self.report}


def _match(specs: list, details: list[dict], kind: str) -> list[dict]:
    """The interpreter's inputs or outputs in the order of the signature's ``specs``: by name (LiteRT
    names inputs ``serving_default_<name>:0``), else by position — inputs in the interpreter's order,
    outputs (named ``StatefulPartitionedCall:<n>``) in name order, as the signature's are."""
    by_name = {d["name"]: d for d in details}
    available = list(by_name) if kind == "input" else sorted(by_name)
    names = match_names([t.name for t in specs], available, kind)
    return [by_name[names[t.name]] for t in specs]


class TFLiteEngine(Engine):
    name = "tflite"
    precisions = ("fp32", "fp16", "int8", "int8_dynamic")
    Params = TFLiteParams
    thread_params = ("num_threads",)
    auto_threads = (0, -1)  # -1: LiteRT's own default
    libraries = ("tensorflow|tensorflow-cpu", "ai-edge-litert")
    mlflow_flavor = "pyfunc"  # MLflow has no LiteRT/TFLite flavor: trtsweep.mlflow_pyfunc wraps TFLiteModel

    @classmethod
    def availability(cls) -> Availability:
        try:
            from importlib.metadata import version

            _interpreter_cls()
            return Availability(True, details={"ai-edge-litert": version("ai-edge-litert")})
        except Exception as e:  # noqa: BLE001 - a broken install is "unavailable" (with why), not a crash
            return Availability(False, f"ai-edge-litert is not importable ({e}); fix: pip install ai-edge-litert")

    @classmethod
    def unsupported(cls, precision: str, params: Any) -> str | None:
        reason = super().unsupported(precision, params)
        if reason is None and params.int8_io and precision != "int8":
            return f"engine.int8_io=true only applies to precision=int8 (full integer), not {precision}"
        return reason

    def convert(self, model: ModelInfo, precision: str, calibration: CalibrationData | None, out_dir: Path,
                batch_sizes: Iterable[int] = (1,)) -> ConversionResult:
        import tensorflow as tf

        # the conversion's time runs from the SavedModel to the written artifact, as the other engines'
        # (loading the model into the converter takes seconds and is part of converting it)
        t0 = time.perf_counter()
        conv = tf.lite.TFLiteConverter.from_saved_model(model.path, signature_keys=[model.signature_key])
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        calibration_timer = CalibrationTimer()
        if precision == "fp16":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.target_spec.supported_types = [tf.float16]
        elif precision == "int8_dynamic":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        elif precision == "int8":
            self.require_calibration(precision, calibration)
            assert calibration is not None
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            names = [s.name for s in model.inputs]
            batches = calibration.batches

            def representative():
                for b in batches:
                    yield {n: b[n] for n in names}

            # calibration (and quantization) starts with the first sample pulled and ends with convert()
            conv.representative_dataset = calibration_timer.wrap(representative, stop_when_exhausted=False)
            ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if self.params.int8_io:
                conv.inference_input_type = tf.int8
                conv.inference_output_type = tf.int8
        if self.params.allow_tf_ops:
            ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
        conv.target_spec.supported_ops = ops
        try:
            flat = conv.convert()
        except Exception as e:
            raise TrtsweepError(f"TFLite conversion failed: {_converter_gist(e)}") from e
        calibration_timer.stop()
        path = out_dir / "model.tflite"
        path.write_bytes(flat)
        convert_s, calibrate_s = calibration_timer.split(time.perf_counter() - t0)
        it = _interpreter_cls()(model_content=flat)
        report = ops_report(it)
        report["precision"] = precision
        return ConversionResult(artifact=str(path), convert_time_s=convert_s, calibrate_time_s=calibrate_s,
                                report=report, metrics={"converted_fraction": report["converted_fraction"]})

    def load(self, artifact: Path, model: ModelInfo, precision: str, batch_size: int) -> LoadedModel:
        return TFLiteModel(Path(artifact), model, batch_size, self.params)


def _converter_gist(e: Exception) -> str:
    text = str(e)
    for line in text.splitlines():
        if "error:" in line and ("op" in line or "not supported" in line):
            return line.split("error:", 1)[1].strip()[:300]
    return one_line(e, 300, with_type=False)


ENGINE = TFLiteEngine
