"""Measurement method, fidelity metrics and the pandas report, on real timings and real tables."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from trtsweep import report
from trtsweep.config import MeasureConfig
from trtsweep.fidelity import compare
from trtsweep.measure import measure


def test_measure_honours_warmup_min_iters_min_time_and_repeats():
    calls = []

    def run(x):
        calls.append(x)
        time.sleep(0.002)

    cfg = MeasureConfig(warmup_iters=5, min_iters=10, min_time_s=0.05, repeats=3, max_cv=10.0)  # no extra repeats
    m = measure(run, "batch", batch_size=4, cfg=cfg)
    assert len(m.repeat_means_ms) == 3
    per_repeat = (len(calls) - 5) / 3
    assert per_repeat >= 10 and len(m.latencies_ms) == len(calls) - 5
    assert m.latencies_ms.sum() / 1000 >= 3 * 0.05 * 0.9  # each repeat lasted ≥ min_time_s
    met = m.metrics()
    assert 2.0 <= met["latency_p50_ms"] < 20
    assert met["latency_p50_ms"] <= met["latency_p90_ms"] <= met["latency_p99_ms"]
    # throughput is batch-aware: 4 items per call
    assert met["throughput_ips"] == pytest.approx(4 / (met["latency_mean_ms"] / 1000), rel=0.25)


def test_spread_between_repeats_is_reported():
    delays = iter([0.001] * 12 + [0.004] * 12 + [0.001] * 12)

    def run(_):
        time.sleep(next(delays, 0.001))

    m = measure(run, None, 1, MeasureConfig(warmup_iters=0, min_iters=12, min_time_s=0, repeats=3))
    assert m.metrics()["latency_cv"] > 0.3


def test_fidelity_with_and_without_labels():
    rng = np.random.default_rng(0)
    ref = rng.random((100, 10))
    labels = ref.argmax(1)
    same = compare(ref.copy(), ref, labels)
    assert same["top1_agreement"] == 1 and same["max_abs_error"] == 0 and same["accuracy_drop"] == 0
    assert same["cosine_similarity"] == pytest.approx(1.0)
    noisy = ref.copy()
    noisy[:10] = noisy[:10, ::-1]  # 10 rows get a different argmax
    m = compare(noisy, ref, labels)
    assert m["top1_agreement"] == pytest.approx(0.9, abs=0.02)
    assert m["accuracy_drop"] == pytest.approx(1 - m["accuracy"])
    unlabeled = compare(noisy, ref, None)
    assert "accuracy" not in unlabeled and unlabeled["accuracy_drop"] == pytest.approx(1 - unlabeled["top1_agreement"])


def _result(engine, precision, bs, status, tput, drop=0.0, model="m"):
    return {"trial_key": f"{engine}{precision}{bs}{model}", "status": status, "reason": None,
            "spec": {"model": {"name": model}, "engine": engine, "precision": precision, "batch_size": bs,
                     "data": {"name": "digits"}, "engine_params": {}},
            "metrics": {"throughput_ips": tput, "latency_p50_ms": 1000 / tput, "accuracy_drop": drop,
                        "top1_agreement": 1 - drop}}


def test_speedup_best_and_pareto():
    rows = [
        _result("tf", "fp32", 1, "ok", 100), _result("tflite", "fp32", 1, "ok", 300),
        _result("tflite", "int8", 1, "accuracy_violation", 900, drop=0.05),
        _result("tflite", "fp16", 1, "ok", 250, drop=0.0), _result("tf", "fp32", 8, "ok", 400),
        _result("tflite", "fp32", 8, "ok", 1200), _result("tf", "int8", 1, "skipped", float("nan")),
    ]
    df = report.table(rows)
    sp = df.set_index(["engine", "precision", "batch_size"])["speedup_vs_tf_fp32"]
    assert sp[("tflite", "fp32", 1)] == pytest.approx(3.0) and sp[("tflite", "fp32", 8)] == pytest.approx(3.0)
    best = report.best_per_model(df)
    best_configs = set(zip(best.engine, best.precision, best.batch_size, strict=True))
    assert best_configs == {("tflite", "fp32", 1), ("tflite", "fp32", 8)}
    front = report.pareto_front(df[df.batch_size == 1])
    assert set(front.precision) == {"fp32", "int8"}  # fp16 is dominated by fp32 (same drop, slower)
    text = report.summary_text(df)
    assert "3.00x vs tf fp32" in text and "skipped" in text


def test_write_is_atomic_and_complete(tmp_path):
    df = report.table([_result("tf", "fp32", 1, "ok", 100)])
    paths = report.write(df, tmp_path)
    assert [p.name for p in paths] == ["results.csv", "results.parquet"]
    assert pd.read_csv(paths[0]).throughput_ips.iloc[0] == 100
    assert pd.read_parquet(paths[1]).engine.iloc[0] == "tf"
    assert not list(tmp_path.glob("*.tmp"))
