"""A trial's converted model as an MLflow model directory, packaged in the trial worker.

The worker has what a first-class MLflow model needs: the engine's library (TensorFlow stays out of the
sweep process), the evaluation data for an input example, and the model it just measured.  Each engine
names its MLflow flavor (``Engine.mlflow_flavor``): ``tensorflow`` (SavedModels: TF, TF-TRT) and ``onnx``
are MLflow's own, built from ``Engine.mlflow_model_args``; ``pyfunc`` wraps the engine's own loaded
model (:mod:`trtsweep.mlflow_pyfunc`; LiteRT, which MLflow has no flavor for).

The directory is checked before it is kept: loaded back with ``mlflow.pyfunc.load_model``, it must
reproduce the measured model's outputs on the input example; its signature is
``infer_signature(example, what it predicts)``.  It is built once per trial key beside the converted
artifact (``artifacts/<engine>/<conversion key>/mlflow/<trial key>/``); :mod:`trtsweep.mlflow_registry`
uploads it as a logged model.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from trtsweep.atomic import build_once
from trtsweep.errors import TrtsweepError
from trtsweep.identity import digest
from trtsweep.safe_names import inside

log = logging.getLogger(__name__)

#: the input example: the first evaluation rows, at most this many ...
EXAMPLE_ROWS = 8
#: ... and at most about this many bytes of input (at least one row)
EXAMPLE_BYTES = 1 << 20


def package_dir(spec: Any) -> Path:
    return inside(Path(spec.cache_dir) / "artifacts", spec.engine, spec.conversion_key(), "mlflow", spec.trial_key())


def package(spec: Any, engine: Any, model: Any, ds: Any, artifact: Path, loaded: Any) -> Path:
    """The trial's MLflow model directory (built now unless it exists); raises when it cannot be built
    or does not reproduce ``loaded``'s outputs."""
    target = package_dir(spec)
    with build_once(target, lambda t: (t / "MLmodel").exists()) as work:
        if work is not None:
            _save(work, spec, engine, model, ds, Path(artifact), loaded)
    return target


def example_rows(ds: Any, model: Any) -> int:
    row_bytes = sum(ds.evaluation[s.name][:1].nbytes for s in model.inputs)
    return max(1, min(EXAMPLE_ROWS, ds.eval_count, EXAMPLE_BYTES // max(row_bytes, 1)))


def flavor_of(engine: Any, model: Any) -> str:
    """The engine's flavor, or ``pyfunc`` for a SavedModel with several inputs (MLflow's tensorflow
    pyfunc feeds one array)."""
    flavor = engine.mlflow_flavor
    return "pyfunc" if flavor == "tensorflow" and len(model.inputs) != 1 else flavor


def _save(path: Path, spec: Any, engine: Any, model: Any, ds: Any, artifact: Path, loaded: Any) -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its "validating the input example" lines
    import mlflow
    from mlflow.models import Model, infer_signature

    rows = example_rows(ds, model)
    example = {s.name: ds.evaluation[s.name][:rows] for s in model.inputs}
    x = example[model.inputs[0].name] if len(model.inputs) == 1 else example
    measured = _measured_outputs(loaded, example, spec.batch_size, rows)
    flavor = flavor_of(engine, model)
    if flavor == "pyfunc":
        from trtsweep import mlflow_pyfunc

        module: Any = mlflow.pyfunc
        args = {"python_model": str(mlflow_pyfunc.CODE_FILE),
                "model_config": mlflow_pyfunc.model_config(spec.engine, spec.engine_params, spec.precision,
                                                           spec.batch_size, model),
                "artifacts": {mlflow_pyfunc.ARTIFACT_KEY: str(artifact)},
                "code_paths": [str(Path(__file__).parent)],  # trtsweep itself: the wrapper and the engine
                "pip_requirements": [*module.get_default_pip_requirements(), f"numpy=={np.__version__}",
                                     *(f"{lib}=={v}" for lib, v in sorted(spec.versions.items()) if v != "none")]}
    else:
        module = importlib.import_module(f"mlflow.{flavor}")
        args = {"pip_requirements": module.get_default_pip_requirements(),
                **engine.mlflow_model_args(artifact, model, loaded)}
    # inputs only for now: no flavor runs the model to infer the rest; the outputs come from the check below.
    # The input example is added once the model is checked: MLflow writes it as JSON and reads it back
    # on every load (seconds for an image batch), and it is the same for every trial of the model
    with warnings.catch_warnings():  # "an input example was not provided": it is, below
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        module.save_model(path=str(path), signature=infer_signature(x), **args)
    # its requirements were checked against this environment when it was saved
    predicted = mlflow.pyfunc.load_model(str(path), suppress_warnings=True).predict(x)
    _check(predicted, measured, spec)
    meta = Model.load(str(path))
    meta.signature = infer_signature(x, predicted)
    add_input_example(meta, x, path)
    meta.metadata = {**(meta.metadata or {}), "trtsweep_trial_key": spec.trial_key(), "trtsweep_engine": spec.engine,
                     "trtsweep_precision": spec.precision, "trtsweep_batch_size": spec.batch_size}
    meta.save(str(path / "MLmodel"))
    for cache in path.rglob("__pycache__"):  # copied with code_paths
        shutil.rmtree(cache, ignore_errors=True)


#: the input example files of the examples packaged in this process: digest -> (metadata, file texts)
_EXAMPLES: dict[str, tuple[dict, dict[str, str]]] = {}


def add_input_example(meta: Any, x: Any, path: Path) -> None:
    """Write ``x`` as the model's input example (``input_example.json`` and its serving input, as
    ``save_model(input_example=x)`` writes them) and name it in ``meta``; the JSON is made once per
    example in this process (a sweep's trials of one model share their example)."""
    from mlflow.models.utils import _Example

    arrays = x if isinstance(x, dict) else {"": x}
    key = digest([[k, str(v.dtype), list(v.shape), hashlib.sha256(np.ascontiguousarray(v)).hexdigest()]
                  for k, v in sorted(arrays.items())])
    if key not in _EXAMPLES:
        example = _Example(x)
        texts = {example.info["artifact_path"]: example.json_input_example}
        if example.json_serving_input:
            texts[example.info["serving_input_path"]] = example.json_serving_input
        _EXAMPLES[key] = (dict(example.info), texts)
    info, texts = _EXAMPLES[key]
    for name, text in texts.items():
        (Path(path) / name).write_text(text)
    meta.saved_input_example_info = dict(info)


def _measured_outputs(loaded: Any, example: dict, batch_size: int, rows: int) -> list[np.ndarray]:
    """What the measured model computes on the example rows (run at its batch size, as in the trial)."""
    from trtsweep.data import batches

    parts = [loaded.to_float(loaded.run(loaded.prepare(b))) for b in batches(example, batch_size)]
    return [np.concatenate([p[i] for p in parts])[:rows] for i in range(len(parts[0]))]


def _check(predicted: Any, measured: list[np.ndarray], spec: Any) -> None:
    """Every measured output has an equal (to float noise) output in the MLflow model's prediction."""
    got = [np.asarray(v) for v in (predicted.values() if isinstance(predicted, dict) else [predicted])]
    for i, want in enumerate(measured):
        tol = 1e-4 * max(1.0, float(np.abs(want).max()))
        if not any(g.shape == want.shape and np.allclose(g, want, rtol=1e-3, atol=tol) for g in got):
            worst = min((float(np.abs(g - want).max()) for g in got if g.shape == want.shape), default=float("inf"))
            raise TrtsweepError(f"the MLflow model of engine={spec.engine} does not reproduce the measured output "
                                f"{i} (max difference {worst:.3g}); it is not logged as a model")
