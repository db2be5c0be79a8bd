"""The work a sweep measures is timed where it happens (benchmarks/sweep_overhead.py counts it): a
conversion from the SavedModel to the written artifact, a trial's fidelity evaluation, and the TF FP32
reference outputs in the trial that computed them."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from trtsweep.config import DataConfig, FidelityConfig, MeasureConfig, ModelConfig, TrialConfig, TrialSpec


def test_a_tflite_conversion_is_timed_from_loading_the_saved_model(digits_model, tmp_path, monkeypatch):
    import tensorflow as tf

    from trtsweep.engines.tflite import TFLiteEngine, TFLiteParams

    original = tf.lite.TFLiteConverter.from_saved_model

    def slow_load(*args, **kwargs):  # loading the model into the converter: part of converting it
        time.sleep(0.5)
        return original(*args, **kwargs)

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", staticmethod(slow_load))
    res = TFLiteEngine(TFLiteParams(num_threads=1)).convert(digits_model, "fp32", None, tmp_path)
    assert res.convert_time_s >= 0.5 and Path(res.artifact).stat().st_size > 0


def _spec(cache: Path, batch_size: int) -> TrialSpec:
    return TrialSpec(
        model=ModelConfig(name="digits_cnn", source="digits_cnn"), engine="tflite",
        engine_params={"num_threads": 1, "use_xnnpack": True, "allow_tf_ops": True, "int8_io": False},
        precision="fp32", batch_size=batch_size, data=DataConfig(name="digits", calibration_samples=8, eval_samples=64),
        measure=MeasureConfig(warmup_iters=1, min_iters=5, min_time_s=0.0, repeats=1), fidelity=FidelityConfig(),
        trial=TrialConfig(), sweep_batch_sizes=[1, 4], cache_dir=str(cache))


def test_a_trial_times_its_fidelity_and_the_reference_only_where_it_computed_them(digits_model, tmp_path,
                                                                                  monkeypatch):
    from trtsweep import worker

    monkeypatch.setattr(worker, "_refs", {})  # no reference outputs in memory from other tests
    cache = tmp_path / "cache"
    shutil.copytree(digits_model.path, cache / "models" / Path(digits_model.path).name)  # the built model only
    first = worker.run_trial({"spec": _spec(cache, 1).to_dict()})["metrics"]
    second = worker.run_trial({"spec": _spec(cache, 4).to_dict()})["metrics"]  # same conversion, batch 4
    assert first["conversion_reused"] == 0 and second["conversion_reused"] == 1
    assert first["reference_time_s"] > 0 and first["fidelity_time_s"] > 0
    # the reference comes from memory and the fidelity of this conversion from its cache: not computed again
    assert second["reference_time_s"] < first["reference_time_s"] / 10
    assert second["fidelity_time_s"] < first["fidelity_time_s"]
    assert second["top1_agreement"] == first["top1_agreement"]
