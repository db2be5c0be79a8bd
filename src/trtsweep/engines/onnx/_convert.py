"""SavedModel → ONNX with tf2onnx (every unconvertible op collected, not only the first), and fp16."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trtsweep.engines.onnx._graph import unsupported_ops
from trtsweep.errors import TrtsweepError, one_line
from trtsweep.types import ModelInfo, TensorSpec


class OnnxConversionError(TrtsweepError):
    """The SavedModel could not be turned into a runnable ONNX graph."""


def to_onnx(model: ModelInfo, opset: int) -> Any:
    """SavedModel signature → ONNX ModelProto, inputs/outputs named as in the signature."""
    from tf2onnx import tf_loader
    from tf2onnx.convert import _convert_common  # what `python -m tf2onnx.convert --saved-model` runs

    try:
        graph_def, inputs, outputs, concrete_func, _, tables, renames = tf_loader.from_saved_model(
            model.path, None, None, tag=["serve"], signatures=[model.signature_key],
            return_concrete_func=True, return_initialized_tables=True, return_tensors_to_rename=True,
        )
        overrides = _shape_overrides(model.inputs, concrete_func, renames)
        # continue_on_error: collect every unconvertible op instead of stopping at the first one
        proto, _ = _convert_common(
            graph_def, name=model.name, continue_on_error=True, opset=opset, input_names=inputs,
            output_names=outputs, tensors_to_rename=renames, initialized_tables=tables,
            shape_override=overrides or None,
        )
    except Exception as e:
        raise OnnxConversionError(
            f"tf2onnx could not convert {model.path} (signature {model.signature_key}): {one_line(e)}"
        ) from e
    left = unsupported_ops(proto)
    if left:
        ops = ", ".join(f"{op} ×{n}" for op, n in sorted(left.items()))
        raise OnnxConversionError(
            f"tf2onnx cannot convert TF op types {ops} to ONNX opset {opset}; "
            f"fix: try a newer engine.opset, replace those ops in the model, or use engine=tf / engine=tflite"
        )
    return proto


def _shape_overrides(specs: Sequence[TensorSpec], concrete_func: Any, renames: dict) -> dict[str, list]:
    """Pin non-batch dims the signature leaves open but the ModelInfo fixes (model.input_shapes)."""
    graph_name = {v: k for k, v in renames.items()}
    import tensorflow as tf

    signature = {t.name: t for t in tf.nest.flatten(concrete_func.structured_input_signature)
                 if isinstance(t, tf.TensorSpec)}
    overrides = {}
    for spec in specs:
        sig = signature.get(spec.name)
        if sig is None or sig.shape.rank is None or spec.name not in graph_name:
            continue
        open_dims = any(d is None for d in sig.shape.as_list()[1:])
        fixed_dims = all(d is not None for d in spec.shape[1:])
        if open_dims and fixed_dims and len(spec.shape) == sig.shape.rank:
            overrides[graph_name[spec.name]] = [None] + [int(d) for d in spec.shape[1:]]  # type: ignore[arg-type]
    return overrides


def to_fp16(proto: Any) -> Any:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # keep_io_types: callers keep feeding and receiving float32; casts sit at the graph edges
    return convert_float_to_float16(proto, keep_io_types=True)
