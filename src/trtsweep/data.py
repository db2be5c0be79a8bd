"""Data sources for calibration and evaluation, shaped from the model's signature.

Each source yields a :class:`Dataset`: calibration inputs, evaluation inputs and (where the data has
them and they match the model's classes) labels.  Everything ships with packages or is generated:
nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trtsweep.config import DataConfig
from trtsweep.errors import ConfigError
from trtsweep.types import Batch, ModelInfo, TensorSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
DIGITS_TEST_FRACTION = 0.3


def digits_split(seed: int = 0):
    """scikit-learn's 8x8 digits, scaled to [0, 1], with a fixed held-out split (the digits_cnn model
    trains on the first part; data=digits evaluates on the second)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=DIGITS_TEST_FRACTION, random_state=seed, stratify=y)


@dataclass
class Dataset:
    calibration: dict[str, np.ndarray]
    evaluation: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    @property
    def eval_count(self) -> int:
        return len(next(iter(self.evaluation.values())))


def load(cfg: DataConfig, model: ModelInfo) -> Dataset:
    loader = {"digits": _digits, "sample_images": _sample_images, "random": _random, "file": _file}[cfg.name]
    ds = loader(cfg, model)
    for spec in model.inputs:
        for part in (ds.calibration, ds.evaluation):
            if spec.name in part:
                part[spec.name] = part[spec.name].astype(spec.dtype, copy=False)
    return ds


def _image_input(model: ModelInfo, source: str) -> TensorSpec:
    images = [t for t in model.inputs if len(t.shape) == 4]
    if len(model.inputs) != 1 or not images:
        raise ConfigError(
            f"data={source} feeds one image input (NHWC), model={model.name} has inputs "
            f"{[(t.name, list(t.shape)) for t in model.inputs]}; fix: data=random or data=file"
        )
    return images[0]


def _scale(x01: np.ndarray, model: ModelInfo) -> np.ndarray:
    lo, hi = model.input_range or (0.0, 1.0)
    return (x01 * (hi - lo) + lo).astype(np.float32)


def _resize(images: np.ndarray, h: int, w: int, c: int) -> np.ndarray:
    """Resize NHWC float images in [0, 1] with PIL (bilinear) and match the channel count."""
    from PIL import Image

    if images.shape[1:3] != (h, w):
        out = []
        for img in images:
            chans = [np.asarray(Image.fromarray(img[..., k]).resize((w, h), Image.BILINEAR))
                     for k in range(img.shape[-1])]
            out.append(np.stack(chans, -1))
        images = np.stack(out).astype(np.float32)
    if images.shape[-1] != c:
        images = images.mean(-1, keepdims=True) if c == 1 else np.repeat(images[..., :1], c, axis=-1)
    return images


def _take(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n rows, cycling (shuffled) if the source has fewer."""
    idx = rng.permutation(len(x))
    if n > len(idx):
        idx = np.concatenate([idx] * (n // len(idx) + 1))
    return x[idx[:n]]


def _digits(cfg: DataConfig, model: ModelInfo) -> Dataset:
    spec = _image_input(model, "digits")
    x_train, x_test, y_train, y_test = digits_split(cfg.seed)
    _, h, w, c = spec.shape
    rng = np.random.default_rng(cfg.seed)
    calib = (_scale(_resize(_take(x_train, cfg.calibration_samples, rng), h, w, c), model)
             if cfg.calibration_samples else x_train[:0])
    n = min(cfg.eval_samples, len(x_test))
    evaluation = _scale(_resize(x_test[:n], h, w, c), model)
    labels = y_test[:n] if model.num_classes == 10 else None
    return Dataset({spec.name: calib}, {spec.name: evaluation}, labels)


def _sample_images(cfg: DataConfig, model: ModelInfo) -> Dataset:
    """Random crops of scikit-learn's two sample photos, resized to the model's input (no labels)."""
    from sklearn.datasets import load_sample_images

    spec = _image_input(model, "sample_images")
    _, h, w, c = spec.shape
    photos = [img.astype(np.float32) / 255.0 for img in load_sample_images().images]
    rng = np.random.default_rng(cfg.seed)

    def crops(n: int) -> np.ndarray:
        out = []
        for _ in range(n):
            p = photos[rng.integers(len(photos))]
            side = int(rng.uniform(0.3, 1.0) * min(p.shape[:2]))
            y0 = rng.integers(0, p.shape[0] - side + 1)
            x0 = rng.integers(0, p.shape[1] - side + 1)
            crop = p[y0:y0 + side, x0:x0 + side]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            out.append(_resize(np.ascontiguousarray(crop[None]), h, w, c)[0])
        return np.stack(out) if out else np.zeros((0, h, w, c), np.float32)

    return Dataset({spec.name: _scale(crops(cfg.calibration_samples), model)},
                   {spec.name: _scale(crops(cfg.eval_samples), model)})


def _random_for(spec: TensorSpec, n: int, rng: np.random.Generator, model: ModelInfo) -> np.ndarray:
    shape = (n,) + spec.concrete(1)[1:]
    if np.issubdtype(np.dtype(spec.dtype), np.integer):
        return rng.integers(0, 10, size=shape).astype(spec.dtype)
    if spec.dtype == "bool":
        return rng.random(shape) < 0.5
    return _scale(rng.random(shape, dtype=np.float32), model)


def _random(cfg: DataConfig, model: ModelInfo) -> Dataset:
    rng = np.random.default_rng(cfg.seed)
    calib = {t.name: _random_for(t, cfg.calibration_samples, rng, model) for t in model.inputs}
    evaluation = {t.name: _random_for(t, cfg.eval_samples, rng, model) for t in model.inputs}
    return Dataset(calib, evaluation)


def _file(cfg: DataConfig, model: ModelInfo) -> Dataset:
    """A user .npy (one input), .npz (arrays named like the inputs, optional 'labels') or image folder."""
    arrays, labels = _file_arrays(cfg, model)
    rng = np.random.default_rng(cfg.seed)
    n = len(next(iter(arrays.values())))
    calib_idx = _take(np.arange(n), cfg.calibration_samples, rng)
    n_eval = min(cfg.eval_samples, n)
    return Dataset({k: v[calib_idx] for k, v in arrays.items()}, {k: v[:n_eval] for k, v in arrays.items()},
                   labels[:n_eval] if labels is not None else None)


#: array kinds a model input can be fed from: bool, signed and unsigned integers, floats
NUMERIC_KINDS = "biuf"


def read_file(cfg: DataConfig, mmap: bool = False) -> dict[str, np.ndarray]:
    """The arrays of a user .npy (as ``""``) or .npz, checked for what any model needs: it loads (no
    pickled objects), numbers, at least one sample.  ConfigError (one line) otherwise.  An image
    directory: ``{}`` (checked against the model by :func:`check_file`)."""
    path = Path(cfg.path or "").expanduser()
    if path.is_dir():
        return {}
    if path.suffix not in (".npy", ".npz"):
        raise ConfigError(f"data.path={cfg.path}: expected .npy, .npz or an image directory")
    try:
        if path.suffix == ".npy":
            arrays = {"": np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - not numpy's format, truncated, pickled objects...
        from trtsweep.errors import one_line

        raise ConfigError(f"data.path={cfg.path} cannot be read as {path.suffix} ({one_line(e, 200)}); "
                          "fix: save numeric arrays with numpy.save / numpy.savez") from None
    for name, a in arrays.items():
        what = f"data.path={cfg.path}" + (f": array '{name}'" if name else "")
        if a.dtype.kind not in NUMERIC_KINDS:
            raise ConfigError(f"{what} has dtype {a.dtype} (not numbers); fix: an array of floats or integers "
                              "shaped like the model's input, with the samples first")
        if a.ndim == 0 or len(a) == 0:
            raise ConfigError(f"{what} holds no samples (shape {list(a.shape)}); fix: an array with the samples "
                              "first, shaped like the model's input")
    return arrays


def check_file(cfg: DataConfig, model: ModelInfo) -> None:
    """Plan time, in the sweep's process: ``data=file`` fits ``model``'s signature (a ConfigError otherwise)."""
    _file_arrays(cfg, model, mmap=True)


def _file_arrays(cfg: DataConfig, model: ModelInfo, mmap: bool = False) -> tuple[dict, np.ndarray | None]:
    path = Path(cfg.path or "").expanduser()
    labels = None
    if path.is_dir():
        spec = _image_input(model, "file")
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"data.path={cfg.path} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if mmap:  # the check: images exist for the one image input
            return {}, None
        from PIL import Image

        _, h, w, c = spec.shape
        imgs = np.stack([
            _resize(np.asarray(Image.open(f).convert("RGB"), np.float32)[None] / 255.0, h, w, c)[0] for f in files
        ])
        return {spec.name: _scale(imgs, model)}, None
    found = read_file(cfg, mmap=mmap)
    if path.suffix == ".npy":
        if len(model.inputs) != 1:
            raise ConfigError(f"data.path={cfg.path}: a .npy feeds one input, model={model.name} has "
                              f"{len(model.inputs)}; fix: an .npz named by input")
        arrays = {model.inputs[0].name: found[""]}
    else:
        missing = [t.name for t in model.inputs if t.name not in found]
        if missing:
            raise ConfigError(f"data.path={cfg.path} lacks arrays for inputs {missing} (has {sorted(found)}); "
                              "fix: name arrays after the inputs")
        arrays = {t.name: found[t.name] for t in model.inputs}
        labels = found.get("labels")
    for t in model.inputs:
        a = arrays[t.name]
        want = t.concrete(1)[1:]
        if tuple(a.shape[1:]) != want:
            raise ConfigError(f"data.path={cfg.path}: array '{t.name}' has sample shape {tuple(a.shape[1:])}, "
                              f"model={model.name} wants {tuple(want)} (input '{t.name}', {t.dtype}); fix: an array "
                              f"shaped [n, {', '.join(map(str, want))}]")
        if t.dtype != "bool" and np.dtype(t.dtype).kind in "iu" and a.dtype.kind == "f":
            raise ConfigError(f"data.path={cfg.path}: array '{t.name}' holds floats ({a.dtype}), model={model.name}'s "
                              f"input '{t.name}' takes {t.dtype}; fix: save the array as {t.dtype}")
    lens = {len(a) for a in arrays.values()} | ({len(labels)} if labels is not None else set())
    if len(lens) > 1:
        raise ConfigError(f"data.path={cfg.path}: the arrays hold different numbers of samples {sorted(lens)}; "
                          "fix: one sample per row in every array (and in 'labels')")
    return arrays, labels


# ---- batching ----
def batches(arrays: dict[str, np.ndarray], batch_size: int) -> list[Batch]:
    """Split into batches of exactly ``batch_size`` (the last one padded by wrapping around)."""
    n = len(next(iter(arrays.values())))
    out = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size) % n
        out.append({k: np.ascontiguousarray(v[idx]) for k, v in arrays.items()})
    return out

