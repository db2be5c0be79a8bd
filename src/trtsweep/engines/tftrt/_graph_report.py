"""What was converted: TensorRT segments vs ops left in TensorFlow in a (converted) GraphDef, and the
configuration traps that change what a sweep measures."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from trtsweep.engines.tftrt._inputs import build_batch_sizes

if TYPE_CHECKING:  # type-only: at run time no private module imports the package
    from trtsweep.engines.tftrt import TFTRTParams

#: op types that are plumbing, not work: counted neither as converted nor as left in TensorFlow
PLUMBING_OPS = frozenset({
    "Placeholder", "_Arg", "_Retval", "NoOp", "Identity", "IdentityN", "Const",
    "StatefulPartitionedCall", "PartitionedCall",
})
TRT_ENGINE_OP = "TRTEngineOp"

#: fragmentation: at least this many segments, most of them smaller than SMALL_SEGMENT_NODES nodes
FRAGMENTED_MIN_SEGMENTS = 4
SMALL_SEGMENT_NODES = 10


def _called_functions(node: Any) -> list[str]:
    names = []
    for value in node.attr.values():
        kind = value.WhichOneof("value")
        if kind == "func":
            names.append(value.func.name)
        elif kind == "list":
            names.extend(f.name for f in value.list.func)
    return names


def _segment_function(node: Any) -> str | None:
    if "segment_func" not in node.attr:
        return None
    attr = node.attr["segment_func"]
    return attr.func.name if attr.WhichOneof("value") == "func" and attr.func.name else None


def _work_ops(nodes: Iterable[Any]) -> Counter:
    return Counter(n.op for n in nodes if n.op not in PLUMBING_OPS)


def conversion_report(graph_def: Any, params: TFTRTParams | None = None, timed_batch_sizes: Sequence[int] = ()) -> dict:
    """Describe a (converted) GraphDef: TensorRT segments, work in TensorRT vs TensorFlow, traps.

    Walks the top-level graph and every library function reachable from it (TF2 puts
    ``TRTEngineOp`` nodes inside functions); a segment's size is the size of its ``segment_func``.
    Plumbing ops (:data:`PLUMBING_OPS`) are counted on neither side.  ``params`` and
    ``timed_batch_sizes`` enable the warnings that depend on the configuration.
    """
    library = {f.signature.name: f for f in graph_def.library.function}
    segments: dict[str, str | None] = {}  # TRTEngineOp node name -> segment function
    tf_ops: Counter = Counter()
    roots = [n for n in graph_def.node]
    pending = [name for n in roots for name in _called_functions(n)] if roots else list(library)
    bodies: list[Iterable[Any]] = [roots]
    seen: set[str] = set()
    all_nodes = [*roots, *(n for f in library.values() for n in f.node_def)]
    segment_funcs = {_segment_function(n) for n in all_nodes if n.op == TRT_ENGINE_OP} - {None}
    while pending:
        name = pending.pop()
        if name in seen or name in segment_funcs or name not in library:
            continue
        seen.add(name)
        bodies.append(library[name].node_def)
        pending.extend(c for n in library[name].node_def for c in _called_functions(n))
    for body in bodies:
        for node in body:
            if node.op == TRT_ENGINE_OP:
                segments[node.name] = _segment_function(node)
            elif node.op not in PLUMBING_OPS:
                tf_ops[node.op] += 1
    seg_sizes: dict[str, int | None] = {}
    trt_ops: Counter = Counter()
    for node_name, func in sorted(segments.items()):
        body = library.get(func) if func else None
        seg_sizes[node_name] = sum(_work_ops(body.node_def).values()) if body is not None else None
        if body is not None:
            trt_ops.update(_work_ops(body.node_def))
    in_trt = sum(v for v in seg_sizes.values() if v)
    in_tf = sum(tf_ops.values())
    total = in_trt + in_tf
    sizes_unknown = bool(seg_sizes) and all(v is None for v in seg_sizes.values())  # native segments removed
    report = {
        "trt_segments": len(segments),
        "nodes_in_trt": in_trt,
        "nodes_in_tf": in_tf,
        "nodes_total": total,
        "trt_converted_fraction": None if sizes_unknown else (round(in_trt / total, 6) if total else 0.0),
        "segment_node_counts": seg_sizes,
        "ops_in_tf": dict(tf_ops.most_common()),
        "ops_in_trt": dict(trt_ops.most_common()),
    }
    report["warnings"], report["notes"] = _report_findings(report, params, timed_batch_sizes)
    return report


def _fmt_ops(ops: Mapping[str, int], limit: int = 8) -> str:
    items = list(ops.items())
    text = ", ".join(f"{op}×{n}" for op, n in items[:limit])
    return text + (f", … ({len(items) - limit} more types)" if len(items) > limit else "") if items else "none"


def _report_findings(report: Mapping[str, Any], params: TFTRTParams | None,
                     timed: Sequence[int]) -> tuple[list[str], list[str]]:
    """(warnings, notes): warnings are traps that change what is measured; notes explain behaviour."""
    warnings: list[str] = []
    notes: list[str] = []
    n_seg = report["trt_segments"]
    if n_seg == 0:
        warnings.append("no TensorRT segment: the whole model runs in native TensorFlow (TF-TRT falls back silently); "
                        f"ops left in TensorFlow: {_fmt_ops(report['ops_in_tf'])}")
    sizes = [s for s in report["segment_node_counts"].values() if s is not None]
    small = [s for s in sizes if s < SMALL_SEGMENT_NODES]
    if n_seg >= FRAGMENTED_MIN_SEGMENTS and len(small) * 2 > len(sizes):
        warnings.append(f"fragmented conversion: {n_seg} TensorRT engines, {len(small)} with < "
                        f"{SMALL_SEGMENT_NODES} nodes (median {statistics.median(sizes):g}); every engine boundary "
                        f"costs a TensorFlow↔TensorRT hand-off and many small engines are often slower than native "
                        f"TensorFlow; fix: raise engine.minimum_segment_size, or avoid the ops that split the graph: "
                        f"{_fmt_ops(report['ops_in_tf'])}")
    if params is None:
        return warnings, notes
    if params.use_dynamic_shape and params.allow_build_at_runtime and n_seg:
        notes.append("engine.allow_build_at_runtime=true with engine.use_dynamic_shape=true: an engine missing from "
                        "the saved model is built at its first call (trtsweep warms up in load(), before timing); "
                        "shapes outside the built profiles run in native TensorFlow")
    if not params.build_engines and n_seg:
        warnings.append("engine.build_engines=false: no engine is pre-built, each is built at its first call "
                        "(in load(), before timing), so convert_time_s excludes TensorRT engine building")
    shapes = build_batch_sizes(params, timed) if timed else ()
    if not params.use_dynamic_shape and n_seg and params.maximum_cached_engines < len(shapes):
        warnings.append(f"engine.maximum_cached_engines={params.maximum_cached_engines} < {len(shapes)} input shapes "
                        f"(batch sizes {', '.join(map(str, shapes))}): each TRTEngineOp keeps only the most recent "
                        f"engines (LRU), so smaller batches run on a larger engine not tuned for them and a larger "
                        f"one is rebuilt at run time or falls back to TensorFlow; "
                        f"fix: engine.maximum_cached_engines={len(shapes)}")
    return warnings, notes
