"""Inputs TF-TRT pulls from generator functions: calibration batches, zero batches for engine building.

Inputs are checked and cast here, before TensorFlow sees them, so a bad batch fails with a message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np

from trtsweep.engines.base import require_calibration
from trtsweep.errors import ConfigError, ModelError
from trtsweep.types import CalibrationData, ModelInfo, TensorSpec

if TYPE_CHECKING:  # type-only: at run time no private module imports the package
    from trtsweep.engines.tftrt import TFTRTParams


def build_batch_sizes(params: TFTRTParams, batch_sizes: Iterable[int]) -> tuple[int, ...]:
    """Batch sizes ``build()`` builds engines for: the sweep's, plus ``max_batch_size``; ascending.

    Ascending matters in implicit-batch mode: the engine cache is LRU, so with a small
    ``maximum_cached_engines`` the largest engine (which can serve every smaller batch) is kept.
    """
    sizes = {int(b) for b in batch_sizes} | {int(params.max_batch_size)}
    bad = sorted(b for b in sizes if b < 1)
    if bad:
        raise ConfigError(f"batch_size={bad[0]} is invalid: must be ≥ 1; fix: batch_size=1")
    return tuple(sorted(sizes))


def input_order(model: ModelInfo) -> list[str]:
    """Order in which the converted function takes positional inputs.

    A signature takes keyword inputs; ``nest.flatten`` orders a dict by sorted key, and that is the
    order of the signature function's ``inputs`` which TF-TRT's converted function is called with.
    """
    return sorted(spec.name for spec in model.inputs)


def _np_dtype(spec: TensorSpec) -> np.dtype:
    try:
        return np.dtype(spec.dtype)
    except TypeError:
        raise ModelError(f"input '{spec.name}' has dtype {spec.dtype}, which has no numpy equivalent; "
                         f"TF-TRT needs numeric inputs") from None


def _calibration_arrays(calibration: CalibrationData, model: ModelInfo) -> list[tuple[np.ndarray, ...]]:
    specs = {s.name: s for s in model.inputs}
    order = input_order(model)
    batches: list[tuple[np.ndarray, ...]] = []
    first_shapes: tuple[tuple[int, ...], ...] | None = None
    for i, batch in enumerate(calibration.batches):
        missing = [n for n in order if n not in batch]
        if missing:
            raise ModelError(f"calibration batch {i} lacks input '{missing[0]}' (has {', '.join(sorted(batch))})")
        arrays = tuple(np.asarray(batch[n], dtype=_np_dtype(specs[n])) for n in order)
        for name, arr in zip(order, arrays, strict=True):
            want = specs[name].concrete(arr.shape[0] if arr.ndim else 1)
            if arr.shape != want:
                raise ModelError(f"calibration batch {i}: input '{name}' has shape {arr.shape}, signature expects "
                                 f"{want}")
        shapes = tuple(a.shape for a in arrays)
        if first_shapes is None:
            first_shapes = shapes
        elif shapes != first_shapes:
            raise ConfigError(f"calibration batch {i} has shapes {shapes} but batch 0 has {first_shapes}; TF-TRT INT8 "
                              f"calibration needs one shape; "
                              f"fix: make data.calibration_samples a multiple of the calibration batch")
        batches.append(arrays)
    return batches


def calibration_input_fn(calibration: CalibrationData,
                         model: ModelInfo) -> Callable[[], Iterator[tuple[np.ndarray, ...]]]:
    """Generator function for ``converter.convert(calibration_input_fn=...)``: one tuple per batch.

    Inputs are checked and cast here, before TensorFlow sees them, so a bad batch fails with a message.
    """
    require_calibration("tftrt", "int8", calibration)
    batches = _calibration_arrays(calibration, model)

    def gen() -> Iterator[tuple[np.ndarray, ...]]:
        yield from batches

    return gen


def build_input_fn(model: ModelInfo, batch_sizes: Sequence[int]) -> Callable[[], Iterator[tuple[np.ndarray, ...]]]:
    """Generator function for ``converter.build(input_fn=...)``: one zero batch per batch size.

    Engine building depends on shapes, not values (INT8 ranges come from calibration).
    """
    specs = {s.name: s for s in model.inputs}
    order = input_order(model)
    shapes = [[(specs[n].concrete(bs), _np_dtype(specs[n])) for n in order] for bs in batch_sizes]

    def gen() -> Iterator[tuple[np.ndarray, ...]]:
        for per_input in shapes:
            yield tuple(np.zeros(shape, dtype=dtype) for shape, dtype in per_input)

    return gen
