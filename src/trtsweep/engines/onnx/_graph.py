"""What an ONNX graph holds: its op types (and the quantized ones), opset, and the ops onnxruntime
cannot run (TF ops tf2onnx left unmapped)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

#: op types that carry quantized (integer) arithmetic or (de)quantization
_QUANT_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
    "QGemm", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM",
})
#: domains whose ops onnxruntime implements without extensions
_ORT_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def unsupported_ops(proto: Any) -> Counter:
    """Op types left in the graph that onnxruntime cannot run (TF ops tf2onnx did not map)."""
    import onnx.defs

    left: Counter = Counter()
    for node in _all_nodes(proto.graph):
        if node.domain not in _ORT_DOMAINS:
            left[f"{node.domain}.{node.op_type}"] += 1
        elif node.domain != "com.microsoft" and not onnx.defs.has(node.op_type, node.domain):
            left[node.op_type] += 1
    return left


def _all_nodes(graph: Any) -> Iterable[Any]:
    """Nodes of a graph and of its subgraphs (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g.node:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def describe_onnx(proto: Any) -> dict:
    """Opset, node count, op histogram and quantized-node count of an ONNX model."""
    ops = Counter(node.op_type for node in _all_nodes(proto.graph))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "opset": opset,
        "node_count": sum(ops.values()),
        "op_types": dict(sorted(ops.items())),
        "quantized_nodes": sum(n for op, n in ops.items() if _is_quant_op(op)),
        "inputs": [i.name for i in proto.graph.input],
        "outputs": [o.name for o in proto.graph.output],
    }


def _is_quant_op(op_type: str) -> bool:
    return op_type in _QUANT_OPS or op_type.startswith("QLinear")
