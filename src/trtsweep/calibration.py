"""INT8 calibration data: representative batches drawn from the data config.

Engines receive a :class:`CalibrationData` (a list of input batches in the model's signature
shapes and dtypes) and feed it to their own calibrator (TFLite's representative dataset, ONNX
Runtime's CalibrationDataReader, TF-TRT's calibration_input_fn).
"""

from __future__ import annotations

from trtsweep.data import Dataset, batches
from trtsweep.types import CalibrationData


def calibration_data(ds: Dataset, batch_size: int = 1) -> CalibrationData:
    """Every calibration sample exactly once, in batches of ``batch_size`` (last one wrapped)."""
    if not ds.calibration or len(next(iter(ds.calibration.values()))) == 0:
        return CalibrationData([])
    return CalibrationData(batches(ds.calibration, batch_size))
