"""An MLflow ``pyfunc`` model around an engine's own loaded model, for engines MLflow has no flavor for
(LiteRT): ``mlflow.pyfunc.load_model(uri).predict(x)`` runs what the trial measured — the same
``LoadedModel`` (its input dtype and quantisation, its dequantised outputs), the same engine settings,
the same batch size (a longer input runs in batches of it, the last one padded by wrapping around, as
the evaluation set was).

A model from code (MLflow's way without pickles): :data:`CODE_FILE` makes the model, configured by the
packaged model's ``model_config``.  Imported only where MLflow models are packaged (the trial worker) or
loaded; the packaged model carries this package as code (``code/trtsweep``), so loading it needs only
the engine's library.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from mlflow.pyfunc import PythonModel

from trtsweep.engines.base import get_engine, make_params
from trtsweep.types import ModelInfo

#: the key of the converted artifact in the pyfunc model's ``artifacts``
ARTIFACT_KEY = "artifact"


class EngineModel(PythonModel):
    """Configured by the model's ``model_config`` (:func:`model_config`).  Input: one array (a model with
    one input) or a dict of arrays by input name; output: one array (a model with one output) or a dict
    of arrays by output name, as real numbers."""

    def load_context(self, context):
        cfg = context.model_config
        eng_cls = get_engine(cfg["engine"])
        engine = eng_cls(make_params(eng_cls, cfg["engine_params"]))
        artifact = context.artifacts[ARTIFACT_KEY]
        # the model's SavedModel is where this model's artifact is now (engine=tf loads it from there)
        self.info = ModelInfo.from_dict({**cfg["model"], "path": artifact})
        self.batch_size = int(cfg["batch_size"])
        self.loaded = engine.load(Path(artifact), self.info, cfg["precision"], self.batch_size)

    # np.ndarray (or a dict of them): a hint MLflow infers no schema from, so it leaves the input as given
    # and checks it against the signature
    def predict(self, context, model_input: np.ndarray, params: dict | None = None):
        inputs, outputs = self.info.inputs, self.info.outputs
        if isinstance(model_input, dict):
            arrays = {s.name: np.asarray(model_input[s.name]) for s in inputs}
        elif len(inputs) == 1:
            arrays = {inputs[0].name: np.asarray(model_input)}
        else:
            raise ValueError(f"this model has inputs {[s.name for s in inputs]}: pass a dict of arrays by name")
        n = len(next(iter(arrays.values())))
        parts = []
        for start in range(0, n, self.batch_size):
            idx = np.arange(start, start + self.batch_size) % n
            batch = {k: np.ascontiguousarray(v[idx]) for k, v in arrays.items()}
            parts.append(self.loaded.to_float(self.loaded.run(self.loaded.prepare(batch))))
        result = [np.concatenate([p[i] for p in parts])[:n] for i in range(len(outputs))]
        return result[0] if len(result) == 1 else {s.name: r for s, r in zip(outputs, result, strict=True)}


def model_config(engine: str, engine_params: dict, precision: str, batch_size: int, model: ModelInfo) -> dict:
    """What :class:`EngineModel` loads: the trial's engine settings, precision, batch size and signature."""
    cfg = {"engine": engine, "engine_params": engine_params, "precision": precision, "batch_size": batch_size,
           "model": {**model.to_dict(), "path": ""}}  # the path: the artifact's, once loaded
    return json.loads(json.dumps(cfg))  # plain JSON types (MLflow stores it as YAML)


#: the model-from-code file that MLflow runs to get an :class:`EngineModel`
CODE_FILE = Path(__file__).with_name("mlflow_pyfunc_code.py")
