"""int8 with onnxruntime.quantization: dynamic (weights only) and static (calibrated activations)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtsweep.engines.base import match_names
from trtsweep.errors import one_line
from trtsweep.types import CalibrationData, ModelInfo

if TYPE_CHECKING:  # type-only: at run time no private module imports the package
    from trtsweep.engines.onnx import OnnxParams

QUANT_FORMATS = {"qdq": "QDQ", "qoperator": "QOperator"}
ACTIVATION_TYPES = {"uint8": "QUInt8", "int8": "QInt8"}


def preprocess(src: Path, dst: Path) -> tuple[Path, str]:
    """ORT's recommended pre-quantization pass (shape inference + fusions); optional by nature."""
    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst))
    except Exception as e:  # noqa: BLE001 - optional pass (e.g. shape inference on an unusual graph): quantize the raw graph
        return src, f"skipped: {one_line(e)}"
    return dst, "ok"


def quantize_int8_dynamic(src: Path, dst: Path, params: OnnxParams) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=params.per_channel, reduce_range=params.reduce_range,
                     weight_type=QuantType.QInt8)
    return {"quantization": {"mode": "dynamic", "weight_type": "int8", "per_channel": params.per_channel,
                             "reduce_range": params.reduce_range}}


def quantize_int8_static(src: Path, dst: Path, params: OnnxParams, model: ModelInfo,
                     calibration: CalibrationData) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    reader = _calibration_reader(src, model, calibration)
    quantize_static(
        str(src), str(dst), reader,
        quant_format=getattr(QuantFormat, QUANT_FORMATS[params.quant_format]),
        per_channel=params.per_channel,
        reduce_range=params.reduce_range,
        activation_type=getattr(QuantType, ACTIVATION_TYPES[params.activation_type]),
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    samples = sum(int(next(iter(b.values())).shape[0]) for b in calibration.batches if b)
    return {"quantization": {"mode": "static", "format": params.quant_format, "activation_type":
                             params.activation_type, "weight_type": "int8", "per_channel": params.per_channel,
                             "reduce_range": params.reduce_range, "calibrate_method": "minmax",
                             "calibration_batches": len(calibration), "calibration_samples": samples}}


def _calibration_reader(src: Path, model: ModelInfo, calibration: CalibrationData) -> Any:
    """A CalibrationDataReader yielding the calibration batches keyed by the ONNX input names."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype
    from onnxruntime.quantization import CalibrationDataReader

    graph_inputs = onnx.load(str(src), load_external_data=False).graph.input
    dtypes = {i.name: tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in graph_inputs}
    names = match_names([t.name for t in model.inputs], list(dtypes), "input")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration.batches)

        def get_next(self) -> dict | None:
            batch = next(self._batches, None)
            if batch is None:
                return None
            return {names[k]: np.ascontiguousarray(v, dtype=dtypes[names[k]]) for k, v in batch.items() if k in names}

    return _Reader()
