"""Model sources: each yields a SavedModel on disk plus its serving signature (a ModelInfo).

Runs inside the trial worker (imports TensorFlow).  Generated models (``digits_cnn``, Keras
applications with ``weights=None``, ``unsupported_op``) are built once, deterministically, and cached
under ``<cache_dir>/models/<name>-<config hash>`` behind a file lock, so concurrent workers share them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from trtsweep.atomic import atomic_write_json, build_once
from trtsweep.config import DataConfig, ModelConfig, model_identity
from trtsweep.data import digits_split, load
from trtsweep.errors import ModelError, one_line
from trtsweep.identity import digest, model_fingerprint
from trtsweep.safe_names import inside
from trtsweep.types import ModelInfo, TensorSpec

log = logging.getLogger(__name__)


def resolve(cfg: ModelConfig, cache_dir: str | Path) -> ModelInfo:
    """Build (or find in the cache) the model and read its signature (once per SavedModel content:
    later calls read it from ``<cache_dir>/models/signatures``, without loading the model)."""
    if cfg.source == "saved_model":
        path = _user_saved_model(cfg)
        fingerprint = model_fingerprint(path)
    else:
        path = _build_cached(cfg, Path(cache_dir))
        fingerprint = digest(model_identity(cfg))
    sig_file = _signature_file(cfg, path, fingerprint, Path(cache_dir))
    cached = _read_signature_file(sig_file)
    if cached is not None:
        return _info(cfg, path, fingerprint, *cached)
    inputs, outputs = read_signature(path, cfg.signature_key, cfg.input_shapes, cfg.name)
    atomic_write_json(sig_file, {"inputs": [t.to_dict() for t in inputs], "outputs": [t.to_dict() for t in outputs]})
    return _info(cfg, path, fingerprint, inputs, outputs)


def resolve_cached(cfg: ModelConfig, cache_dir: str | Path) -> ModelInfo | None:
    """:func:`resolve` from the caches alone, without TensorFlow (so a sweep can plan while its worker
    is still importing it): None when the model is not built yet, its signature was never read, or
    anything else needs the worker (which then reports it)."""
    try:
        if cfg.source == "saved_model":
            path = _user_saved_model(cfg)
            fingerprint = model_fingerprint(path)
        else:
            path = _generated_dir(cfg, Path(cache_dir))
            if not (path / "saved_model.pb").exists():
                return None
            fingerprint = digest(model_identity(cfg))
        cached = _read_signature_file(_signature_file(cfg, path, fingerprint, Path(cache_dir)))
    except Exception:  # noqa: BLE001 - the worker resolves it and names the problem
        return None
    return None if cached is None else _info(cfg, path, fingerprint, *cached)


def _user_saved_model(cfg: ModelConfig) -> Path:
    path = Path(cfg.path or "").expanduser().resolve()
    if not path.is_dir():
        raise ModelError(f"model.path={cfg.path} does not exist; fix: point model.path to a SavedModel directory")
    return path


def _signature_file(cfg: ModelConfig, path: Path, fingerprint: str, cache_dir: Path) -> Path:
    """Where the signature read from this SavedModel content is kept: keyed by the content itself
    (:func:`model_fingerprint`, whatever the source), the signature key and the input shape overrides."""
    content = fingerprint if cfg.source == "saved_model" else model_fingerprint(path)  # a user model's is it
    key = digest([content, _files_stamp(path), cfg.signature_key, cfg.input_shapes or {}])
    return cache_dir / "models" / "signatures" / f"{key}.json"


def _files_stamp(path: Path) -> list:
    """The SavedModel's files and their sizes: a copy whose ``fingerprint.pb`` is intact but whose graph was
    truncated or whose variables are missing is not the content the fingerprint names (it is loaded, and
    fails at plan time, instead of planning from a signature kept for the intact one)."""
    files = [path / "saved_model.pb", path / "saved_model.pbtxt", *sorted((path / "variables").glob("*"))]
    return [[f.relative_to(path).as_posix(), f.stat().st_size] for f in files if f.is_file()]


def _read_signature_file(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]] | None:
    try:
        d = json.loads(path.read_text())
        return [TensorSpec.from_dict(t) for t in d["inputs"]], [TensorSpec.from_dict(t) for t in d["outputs"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _info(cfg: ModelConfig, path: Path, fingerprint: str, inputs: list[TensorSpec],
          outputs: list[TensorSpec]) -> ModelInfo:
    num_classes = cfg.num_classes
    if num_classes is None and outputs and len(outputs[0].shape) == 2 and outputs[0].shape[1]:
        num_classes = int(outputs[0].shape[1])
    return ModelInfo(
        name=cfg.name, path=str(path), signature_key=cfg.signature_key, inputs=inputs, outputs=outputs,
        fingerprint=fingerprint, input_range=tuple(cfg.input_range) if cfg.input_range else None,
        num_classes=num_classes,
    )


def read_signature(path: Path, key: str, overrides: dict, name: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:
        raise ModelError(f"model={name}: cannot load SavedModel at {path}: {one_line(e, with_type=False)}") from e
    sigs = getattr(loaded, "signatures", {})
    if key not in sigs:
        avail = ", ".join(sorted(sigs)) or "none"
        raise ModelError(
            f"model={name}: SavedModel at {path} has no signature '{key}' (available: {avail}); "
            f"fix: model.signature_key=<one of those>"
        )
    fn = sigs[key]
    in_specs = fn.structured_input_signature[1]
    out_specs = fn.structured_outputs
    inputs = []
    for iname in sorted(in_specs):
        spec = in_specs[iname]
        shape = (tuple(None if d is None else int(d) for d in spec.shape.as_list())
                 if spec.shape.rank is not None else None)
        if iname in (overrides or {}):
            ov = [None if (d is None or d < 0) else int(d) for d in overrides[iname]]
            if shape is not None and len(ov) != len(shape):
                raise ModelError(f"model.input_shapes.{iname}={overrides[iname]} has rank {len(ov)}, the signature "
                                 f"has {shape}")
            shape = tuple(ov)
        if shape is None:
            raise ModelError(f"model={name}: input '{iname}' has unknown rank; "
                             f"fix: +model.input_shapes.{iname}=[-1, ...]")
        unknown = [i for i, d in enumerate(shape) if d is None and i > 0]
        if unknown:
            raise ModelError(
                f"model={name}: input '{iname}' has unknown dimension(s) {unknown} in shape {list(shape)}; "
                f"fix: +model.input_shapes.{iname}=[-1, ...] with every non-batch dimension set"
            )
        inputs.append(TensorSpec(iname, shape, spec.dtype.name))
    for iname in overrides or {}:
        if iname not in in_specs:
            raise ModelError(f"model.input_shapes.{iname}: no such input (inputs: {', '.join(sorted(in_specs))})")
    outputs = [
        TensorSpec(oname, tuple(s.shape.as_list()) if s.shape.rank is not None else (), s.dtype.name)
        for oname, s in sorted(out_specs.items())
    ]
    return inputs, outputs


def _generated_dir(cfg: ModelConfig, cache_dir: Path) -> Path:
    return inside(cache_dir / "models", f"{cfg.name}-{digest(model_identity(cfg), 12)}", what="model.name")


def _build_cached(cfg: ModelConfig, cache_dir: Path) -> Path:
    target = _generated_dir(cfg, cache_dir)
    with build_once(target, lambda t: (t / "saved_model.pb").exists()) as work:
        if work is not None:
            builder = {"digits_cnn": build_digits_cnn, "keras": build_keras_application,
                       "unsupported_op": build_unsupported_op}[cfg.source]
            log.info("building model %s (once; cached in %s)", cfg.name, target)
            builder(cfg, work)
    return target


def _seed(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)


def build_digits_cnn(cfg: ModelConfig, out: Path) -> None:
    """A small CNN trained on scikit-learn's digits (seconds on a CPU, deterministic seed)."""
    import keras

    _seed(cfg.seed)
    x_train, _x_test, y_train, _y_test = digits_split(cfg.seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax", name="probs"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=cfg.epochs, batch_size=32, verbose=0, shuffle=True)
    model.export(str(out), verbose=False)


def build_keras_application(cfg: ModelConfig, out: Path) -> None:
    """A keras.applications architecture with random weights (``weights=None``: nothing is downloaded)."""
    import keras

    _seed(cfg.seed)
    cls = getattr(keras.applications, cfg.application or "", None)
    if cls is None:
        raise ModelError(f"model.application={cfg.application} is not in keras.applications; fix: e.g. MobileNetV2, "
                         "ResNet50")
    size = cfg.input_size or 224
    model = cls(weights=None, input_shape=(size, size, 3), classes=cfg.num_classes or 1000,
                classifier_activation=cfg.classifier_activation)
    _reestimate_batchnorm(model, size, cfg)
    model.export(str(out), verbose=False)


def _reestimate_batchnorm(model, size: int, cfg: ModelConfig, n: int = 32) -> None:
    """Data-dependent init of BatchNorm statistics (no weights learned): with random weights and the default
    moving statistics, activations shrink layer after layer and every output is ≈ 0, so any precision's
    top-1 is decided by rounding noise.  One training-mode pass over real image crops (scikit-learn's
    sample photos) with momentum 0 sets each layer's moving mean/variance to that batch's statistics, so
    outputs depend on the input again and the fidelity metrics mean something."""
    import keras

    info = ModelInfo(cfg.name, "", "", [TensorSpec("x", (None, size, size, 3), "float32")], [], "",
                     input_range=tuple(cfg.input_range) if cfg.input_range else None)
    x = load(DataConfig(name="sample_images", calibration_samples=0, eval_samples=n, seed=cfg.seed + 1), info)
    bns = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model(x.evaluation["x"], training=True)
    for bn, m in zip(bns, saved, strict=True):
        bn.momentum = m


def build_unsupported_op(cfg: ModelConfig, out: Path) -> None:
    """A small conv net with an op no converter here takes natively (``MatrixInverse``) in the middle.

    TF-TRT leaves it in TensorFlow between two TensorRT segments; TFLite can keep it only as a
    SELECT_TF_OPS (Flex) op; tf2onnx has no ONNX mapping for it.  The engines' reports say what
    fraction of the model was converted and which op types were left behind.
    """
    import tensorflow as tf

    _seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    class M(tf.Module):
        def __init__(self):
            super().__init__()
            self.w1 = tf.Variable(rng.normal(0, 0.3, (3, 3, 1, 8)).astype(np.float32))
            self.w2 = tf.Variable(rng.normal(0, 0.3, (3, 3, 1, 8)).astype(np.float32))
            self.wd = tf.Variable(rng.normal(0, 0.1, (8 * 8 * 8, 10)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32, name="image")])
        def serve(self, image):
            h = tf.nn.relu(tf.nn.conv2d(image, self.w1, 1, "SAME"))
            m = tf.reduce_mean(h, axis=-1) + 8.0 * tf.eye(8)  # well conditioned
            inv = tf.linalg.inv(m)[..., None]  # MatrixInverse: the unsupported op
            h = tf.nn.relu(tf.nn.conv2d(inv * 8.0, self.w2, 1, "SAME"))
            logits = tf.matmul(tf.reshape(h, [-1, 8 * 8 * 8]), self.wd)
            return {"probs": tf.nn.softmax(logits)}

    m = M()
    tf.saved_model.save(m, str(out), signatures={"serving_default": m.serve})
