"""Model sources (signatures, errors) and data sources (shapes, labels, calibration counts)."""

from __future__ import annotations

import numpy as np
import pytest

from trtsweep import models
from trtsweep.calibration import calibration_data
from trtsweep.config import DataConfig, ModelConfig
from trtsweep.data import batches, load
from trtsweep.errors import ConfigError, ModelError


@pytest.fixture(scope="module")
def dynamic_saved_model(tmp_path_factory):
    """A user SavedModel with two signatures and an input whose spatial dims are unknown."""
    import tensorflow as tf

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="pixels")])
        def serve(self, pixels):
            return {"mean": tf.reduce_mean(pixels, axis=[1, 2])}

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def other(self, x):
            return {"y": x * 2.0}

    path = tmp_path_factory.mktemp("sm") / "model"
    m = M()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve, "other": m.other})
    return path


def test_digits_cnn_is_trained_and_cached(digits_model, cache_dir):
    assert digits_model.inputs[0].shape == (None, 8, 8, 1) and digits_model.num_classes == 10
    again = models.resolve(ModelConfig(name="digits_cnn", source="digits_cnn"), cache_dir)
    assert again.path == digits_model.path and again.fingerprint == digits_model.fingerprint


def test_saved_model_signature_is_read_and_overridden(dynamic_saved_model, tmp_path):
    cfg = ModelConfig(name="user", source="saved_model", path=str(dynamic_saved_model),
                      input_shapes={"pixels": [-1, 32, 32, 3]})
    info = models.resolve(cfg, tmp_path)
    assert [(t.name, t.shape, t.dtype) for t in info.inputs] == [("pixels", (None, 32, 32, 3), "float32")]
    assert [t.name for t in info.outputs] == ["mean"]
    other = models.resolve(ModelConfig(name="user", source="saved_model", path=str(dynamic_saved_model),
                                       signature_key="other"), tmp_path)
    assert other.inputs[0].shape == (None, 4)


def test_a_signature_is_read_once_per_model_content_then_without_tensorflow(dynamic_saved_model, tmp_path,
                                                                             monkeypatch):
    cfg = ModelConfig(name="user", source="saved_model", path=str(dynamic_saved_model),
                      input_shapes={"pixels": [-1, 32, 32, 3]})
    assert models.resolve_cached(cfg, tmp_path) is None  # never read: the worker must load the model
    first = models.resolve(cfg, tmp_path)

    def no_loading(*args, **kwargs):
        raise AssertionError("the SavedModel was loaded again")

    monkeypatch.setattr(models, "read_signature", no_loading)
    assert models.resolve(cfg, tmp_path) == first
    assert models.resolve_cached(cfg, tmp_path) == first
    # another override, another signature key, a model not built yet: not this signature
    other_shape = ModelConfig(name="user", source="saved_model", path=str(dynamic_saved_model),
                              input_shapes={"pixels": [-1, 64, 64, 3]})
    assert models.resolve_cached(other_shape, tmp_path) is None
    assert models.resolve_cached(ModelConfig(name="user", source="saved_model", path=str(dynamic_saved_model),
                                             signature_key="other"), tmp_path) is None
    assert models.resolve_cached(ModelConfig(name="digits_cnn", source="digits_cnn"), tmp_path / "empty") is None
    assert models.resolve_cached(ModelConfig(name="user", source="saved_model", path=str(tmp_path / "nowhere")),
                                 tmp_path) is None


def test_a_saved_model_replaced_at_the_same_path_is_read_again(tmp_path):
    import tensorflow as tf

    def save(width: int) -> None:
        class M(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([None, width], tf.float32, name="x")])
            def serve(self, x):
                return {"y": x * 2.0}

        m = M()
        tf.saved_model.save(m, str(tmp_path / "model"), signatures={"serving_default": m.serve})

    cfg = ModelConfig(name="user", source="saved_model", path=str(tmp_path / "model"))
    save(4)
    assert models.resolve(cfg, tmp_path / "cache").inputs[0].shape == (None, 4)
    save(6)  # new content, same path: the cached signature is not this model's
    assert models.resolve_cached(cfg, tmp_path / "cache") is None
    assert models.resolve(cfg, tmp_path / "cache").inputs[0].shape == (None, 6)


def test_unknown_dimension_without_override_fails_clearly(dynamic_saved_model, tmp_path):
    with pytest.raises(ModelError, match=r"input 'pixels' has unknown dimension.*fix: \+model.input_shapes.pixels="):
        models.resolve(ModelConfig(name="user", source="saved_model", path=str(dynamic_saved_model)), tmp_path)


def test_missing_signature_lists_the_available_ones(dynamic_saved_model, tmp_path):
    with pytest.raises(ModelError, match=r"no signature 'predict' \(available: other, serving_default\)"):
        models.resolve(ModelConfig(name="user", source="saved_model", path=str(dynamic_saved_model),
                                   signature_key="predict"), tmp_path)


def test_digits_data_has_labels_and_exact_counts(digits_model):
    ds = load(DataConfig(name="digits", calibration_samples=40, eval_samples=100), digits_model)
    assert ds.evaluation["image"].shape == (100, 8, 8, 1) and ds.labels.shape == (100,)
    assert ds.calibration["image"].shape == (40, 8, 8, 1)
    assert ds.evaluation["image"].min() >= 0 and ds.evaluation["image"].max() <= 1
    calib = calibration_data(ds, batch_size=1)
    assert len(calib) == 40 and calib.batches[0]["image"].shape == (1, 8, 8, 1)
    assert calib.batches[0]["image"].dtype == np.float32


def test_sample_images_are_resized_and_scaled(tmp_path):
    from trtsweep.types import ModelInfo, TensorSpec

    info = ModelInfo("m", "", "serving_default", [TensorSpec("img", (None, 64, 48, 3), "float32")],
                     [TensorSpec("o", (None, 5), "float32")], "x", input_range=(-1.0, 1.0))
    ds = load(DataConfig(name="sample_images", calibration_samples=5, eval_samples=7), info)
    x = ds.evaluation["img"]
    assert x.shape == (7, 64, 48, 3) and x.min() >= -1 and x.max() <= 1 and x.std() > 0.05
    assert ds.labels is None


def test_file_data_npz_and_shape_check(tmp_path, digits_model):
    x = np.random.default_rng(0).random((20, 8, 8, 1), dtype=np.float32)
    np.savez(tmp_path / "d.npz", image=x, labels=np.arange(20) % 10)
    ds = load(DataConfig(name="file", path=str(tmp_path / "d.npz"), calibration_samples=8, eval_samples=50),
              digits_model)
    assert ds.evaluation["image"].shape == (20, 8, 8, 1) and list(ds.labels[:3]) == [0, 1, 2]
    np.save(tmp_path / "bad.npy", np.zeros((4, 9, 9, 1), np.float32))
    with pytest.raises(ConfigError, match=r"sample shape \(9, 9, 1\)"):
        load(DataConfig(name="file", path=str(tmp_path / "bad.npy")), digits_model)


def test_batches_pad_last_batch_by_wrapping():
    b = batches({"x": np.arange(5)}, 2)
    assert [list(v["x"]) for v in b] == [[0, 1], [2, 3], [4, 0]]
