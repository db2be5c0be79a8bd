"""The shared vocabulary of models and data: a model's signature (:class:`TensorSpec`,
:class:`ModelInfo`), an input batch (:data:`Batch`) and INT8 calibration data (:class:`CalibrationData`).

Plain dataclasses with no heavy imports: model sources build them, data sources shape arrays from
them, engines convert and run from them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from trtsweep.errors import ConfigError


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model signature. ``shape`` uses ``None`` for dynamic dims."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def concrete(self, batch_size: int) -> tuple[int, ...]:
        """Shape with the batch dimension set; raises if another dim is still unknown."""
        dims = list(self.shape)
        if dims and dims[0] is None:
            dims[0] = batch_size
        if any(d is None for d in dims):
            raise ConfigError(
                f"input '{self.name}' has an unknown dimension {self.shape}; "
                f"fix: set +model.input_shapes.{self.name}=[...] with every non-batch dimension"
            )
        return tuple(int(d) for d in dims)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_dict(d: Mapping) -> "TensorSpec":
        return TensorSpec(d["name"], tuple(d["shape"]), d["dtype"])


@dataclass
class ModelInfo:
    """A resolved model: a SavedModel on disk and its serving signature."""

    name: str
    path: str
    signature_key: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    fingerprint: str
    input_range: tuple[float, float] | None = None
    num_classes: int | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["inputs"] = [t.to_dict() for t in self.inputs]
        d["outputs"] = [t.to_dict() for t in self.outputs]
        return d

    @staticmethod
    def from_dict(d: Mapping) -> "ModelInfo":
        d = dict(d)
        d["inputs"] = [TensorSpec.from_dict(t) for t in d["inputs"]]
        d["outputs"] = [TensorSpec.from_dict(t) for t in d["outputs"]]
        if d.get("input_range") is not None:
            d["input_range"] = tuple(d["input_range"])
        return ModelInfo(**d)


Batch = dict  # input name -> np.ndarray


@dataclass
class CalibrationData:
    """Representative batches for INT8 calibration, shaped from the model signature."""

    batches: list[Batch]

    def __len__(self) -> int:
        return len(self.batches)
