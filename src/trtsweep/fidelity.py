"""Fidelity: a trial's outputs on the evaluation set against native TF FP32's.

``accuracy`` needs labels; without them, TF FP32's own predictions are the labels, so
``accuracy_drop`` is ``1 - top1_agreement`` (documented in the README).
"""

from __future__ import annotations

import numpy as np


def compare(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """Both arrays: the first model output over the whole evaluation set, shape [N, ...]."""
    out = outputs.astype(np.float64).reshape(len(outputs), -1)
    ref = reference.astype(np.float64).reshape(len(reference), -1)
    m: dict[str, float] = {
        "max_abs_error": float(np.abs(out - ref).max()) if out.size else 0.0,
        "mean_abs_error": float(np.abs(out - ref).mean()) if out.size else 0.0,
    }
    num = (out * ref).sum(1)
    den = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
    m["cosine_similarity"] = float(np.mean(np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)))
    if out.shape[1] > 1:
        pred, ref_pred = out.argmax(1), ref.argmax(1)
        m["top1_agreement"] = float((pred == ref_pred).mean())
        if labels is not None:
            m["accuracy"] = float((pred == labels).mean())
            m["reference_accuracy"] = float((ref_pred == labels).mean())
            m["accuracy_drop"] = m["reference_accuracy"] - m["accuracy"]
        else:
            m["accuracy_drop"] = 1.0 - m["top1_agreement"]
    return m
