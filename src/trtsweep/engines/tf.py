"""Native TensorFlow: the SavedModel's serving signature, called eagerly. The FP32 reference and
the baseline every speed-up is stated against."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from trtsweep.engines.base import ConversionResult, Engine, LoadedModel, param_stage
from trtsweep.types import CalibrationData, ModelInfo


@dataclass
class TFParams:
    jit_compile: bool = field(default=False, metadata=param_stage("runtime"))
    intra_op_threads: int = field(default=0, metadata=param_stage("runtime"))  # 0 = follow `threads`
    inter_op_threads: int = field(default=0, metadata=param_stage("runtime"))  # 0 = follow `threads`


class TFModel(LoadedModel):
    def __init__(self, model: ModelInfo, jit_compile: bool):
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(model.path)
        sig = self._loaded.signatures[model.signature_key]
        self._fn = tf.function(sig, jit_compile=True) if jit_compile else sig
        self._out_names = [o.name for o in model.outputs]
        self._jit = jit_compile

    def prepare(self, batch: dict) -> dict:
        return {k: self._tf.constant(v) for k, v in batch.items()}

    def run(self, prepared: dict) -> list[np.ndarray]:
        out = self._fn(**prepared)
        return [out[n].numpy() for n in self._out_names]

    def describe(self) -> dict:
        threading = self._tf.config.threading
        return {"jit_compile": self._jit, "intra_op_threads": threading.get_intra_op_parallelism_threads(),
                "inter_op_threads": threading.get_inter_op_parallelism_threads()}


def serving_module(saved: Any, model: ModelInfo) -> Any:
    """A ``tf.Module`` around a loaded SavedModel whose ``__call__`` runs its serving signature on the one
    input and returns the output (a dict of them if several): what MLflow's tensorflow flavor saves and
    its pyfunc calls.  The SavedModel (variables, engines) is tracked, so saving this re-saves it whole."""
    import tensorflow as tf

    fn = saved.signatures[model.signature_key]
    (inp,) = model.inputs
    spec = fn.structured_input_signature[1][inp.name]
    outs = [o.name for o in model.outputs]

    class Serving(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.saved = saved

        @tf.function(input_signature=[tf.TensorSpec(spec.shape, spec.dtype, name=inp.name)])
        def __call__(self, x):
            out = fn(**{inp.name: x})
            return out[outs[0]] if len(outs) == 1 else {k: out[k] for k in outs}

    return Serving()


def saved_model_args(saved: Any, model: ModelInfo) -> dict:
    """``mlflow.tensorflow.save_model`` arguments for a loaded SavedModel: the serving module, with the
    model's own serving signature kept under its key."""
    return {"model": serving_module(saved, model),
            "saved_model_kwargs": {"signatures": {model.signature_key: saved.signatures[model.signature_key]}}}


class TFEngine(Engine):
    name = "tf"
    precisions = ("fp32",)
    Params = TFParams
    thread_params = ("intra_op_threads", "inter_op_threads")
    mlflow_flavor = "tensorflow"

    @classmethod
    def unsupported(cls, precision: str, params: Any) -> str | None:
        if precision != "fp32":
            return (f"engine=tf runs the SavedModel as it is (fp32); precision={precision} needs a converting "
                    f"engine (tflite, onnx, tftrt)")
        return None

    @classmethod
    def process_env(cls, params: TFParams) -> dict[str, str]:
        """TensorFlow sizes its thread pools once, at start-up, to the CPUs the process may use: a
        count equal to that needs no variable, so the default budget reuses the sweep's warm worker."""
        from trtsweep.cores import allowed_cores

        tf_default = len(allowed_cores())
        env = {}
        if params.intra_op_threads and params.intra_op_threads != tf_default:
            env["TF_NUM_INTRAOP_THREADS"] = str(params.intra_op_threads)
        if params.inter_op_threads and params.inter_op_threads != tf_default:
            env["TF_NUM_INTEROP_THREADS"] = str(params.inter_op_threads)
        return env

    def convert(self, model: ModelInfo, precision: str, calibration: CalibrationData | None, out_dir: Path,
                batch_sizes: Iterable[int] = (1,)) -> ConversionResult:
        t0 = time.perf_counter()
        (out_dir / "SOURCE").write_text(model.path)  # nothing to convert: the artifact is the SavedModel
        return ConversionResult(artifact=model.path, convert_time_s=time.perf_counter() - t0,
                                report={"converted": "native TensorFlow, no conversion"},
                                metrics={"converted_fraction": 1.0})

    def load(self, artifact: Path, model: ModelInfo, precision: str, batch_size: int) -> LoadedModel:
        return TFModel(model, self.params.jit_compile)

    def mlflow_model_args(self, artifact: Path, model: ModelInfo, loaded: LoadedModel) -> dict:
        assert isinstance(loaded, TFModel)
        return saved_model_args(loaded._loaded, model)


ENGINE = TFEngine
