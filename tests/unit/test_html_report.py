"""report.html / report.md (trtsweep.html_report) from a results table: every trial, speed-ups over TF FP32
at the same model and batch size, the Pareto set, the recommendation and its command, what failed."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from trtsweep import html_report
from trtsweep.report_content import reproduce_command
from trtsweep.report_source import ReportData


def _row(key, engine, precision, bs, status, tput=None, drop=0.0, model="m", **extra):
    r = {"trial_key": key, "model": model, "engine": engine, "precision": precision, "batch_size": bs,
         "status": status, "data": "digits", "threads": 2, "reason": extra.pop("reason", "")}
    if tput is not None:
        r.update(throughput_ips=tput, throughput_ci_low=tput * 0.9, throughput_ci_high=tput * 1.1,
                 latency_p50_ms=bs * 1000 / tput, latency_p99_ms=bs * 1200 / tput, accuracy_drop=drop,
                 top1_agreement=1 - drop, model_size_mb=1.0, convert_time_s=0.5)
    return {**r, **extra}


TABLE = pd.DataFrame([
    _row("tf1", "tf", "fp32", 1, "ok", 100),
    _row("lite1", "tflite", "fp32", 1, "ok", 300, **{"engine.num_threads": 2, "engine.use_xnnpack": True}),
    _row("int81", "tflite", "int8", 1, "ok", 500, 0.005, **{"engine.num_threads": 2, "engine.use_xnnpack": True}),
    _row("fast1", "onnx", "int8", 1, "infeasible", 900, 0.001, violates="latency_p99_ms",
         reason="latency_p99_ms=20 > constraints.max_latency_p99_ms=10 (+100%)"),
    _row("acc1", "onnx", "fp16", 1, "accuracy_violation", 1000, 0.2,
         reason="accuracy_drop=0.2000 > fidelity.max_accuracy_drop=0.01"),
    _row("tf4", "tf", "fp32", 4, "ok", 200),
    _row("lite4", "tflite", "fp32", 4, "ok", 800),
    _row("fail1", "onnx", "fp32", 1, "failed", reason="RuntimeError: <boom> & more"),
    _row("skip1", "tf", "int8", 1, "skipped", reason="engine=tf runs the SavedModel as it is (fp32)"),
    _row("m2bad", "tflite", "int8", 1, "accuracy_violation", 100, 0.5, model="m2", reason="accuracy_drop=0.5"),
])


def _tables(html: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The trials table (by trial key) and the Pareto table of a report page."""
    trials = pd.read_html(io.StringIO(html), attrs={"id": "T_trials"}, converters={"trial": str})[0]
    pareto = pd.read_html(io.StringIO(html), attrs={"class": "pareto"}, converters={"trial": str})[0]
    return trials.set_index("trial"), pareto


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    best = [{"trial_key": "int81", "overrides": ["model=m", "engine=tflite", "threads=2", "cache_dir=/x/cache",
                                                 "hydra.run.dir=y", "measure.repeats=2"]}]
    paths = html_report.write_report(ReportData(TABLE, "a test table", out, best=best), out)
    return paths, paths[0].read_text(), paths[1].read_text()


def test_every_trial_with_its_speedup_over_tf_fp32_at_the_same_batch_size(written):
    paths, html, _ = written
    assert [p.name for p in paths] == ["report.html", "report.md"]
    trials, _ = _tables(html)
    assert sorted(trials.index) == sorted(TABLE.trial_key)
    speedup = trials["speed-up vs TF FP32"]
    assert speedup.to_dict() == {"lite1": "3.00×", "int81": "5.00×", "fast1": "9.00×", "acc1": "10.00×",
                                 "tf1": "1.00×", "tf4": "1.00×", "lite4": "4.00×", "fail1": "–", "skip1": "–",
                                 "m2bad": "–"}  # m2 has no TF FP32 trial
    assert trials.loc["fail1", "reason"] == "RuntimeError: <boom> & more"  # escaped in the page, read back whole
    assert "<boom>" not in html


def test_the_pareto_set_leaves_out_what_is_over_another_bound(written):
    _, html, _ = written
    trials, pareto = _tables(html)
    # m: lite4 (drop 0, 800/s) beats every other trial but acc1 (1000/s at drop 0.2); fast1 (900/s) is
    # infeasible; m2: its only measured trial
    assert set(pareto.trial) == {"lite4", "acc1", "m2bad"}
    marked = {k for k, m in trials.marks.fillna("").items() if "Pareto" in m}
    assert marked == {"lite4", "acc1", "m2bad"}


def test_the_recommendation_passes_every_bound_and_says_how_to_reproduce_it(written):
    _, html, md = written
    trials, _ = _tables(html)
    recommended = {k for k, m in trials.marks.fillna("").items() if "recommended" in m}
    assert recommended == {"int81", "lite4"}  # not fast1 (infeasible) nor acc1 (accuracy), nothing for m2
    command = ("python sweep.py model=m engine=tflite precision=int8 batch_size=1 threads=2 data=digits "
               "measure.repeats=2")  # default engine params left out; not cache_dir/hydra.*; threads once
    assert f'<pre class="command">{command}</pre>' in html and command in md
    assert 'data-trial="lite4"' in html and "4.00× TF FP32" in html
    assert "m · batch size 1</h3>\n    <p>No configuration passed" in html.replace("m2 · ", "m · ")
    assert "no configuration passed every constraint" in md


def test_failed_skipped_and_over_bound_trials_are_listed_with_their_reasons(written):
    _, html, md = written
    # (model m is none of the shipped ones: its data is said)
    assert "failed</span> m onnx fp32 bs=1 threads=2 data=digits — RuntimeError: &lt;boom&gt; &amp; more" in html
    assert "- skipped: m tf int8 bs=1 threads=2 data=digits — engine=tf runs the SavedModel as it is (fp32)" in md
    assert ("- infeasible: m onnx int8 bs=1 threads=2 data=digits — latency_p99_ms=20 > "
            "constraints.max_latency_p99_ms=10") in md


def test_the_page_is_self_contained(written):
    _, html, _ = written
    assert html.count('<img src="data:image/png;base64,') == 4  # throughput, latency, Pareto, parameters
    assert "http://" not in html and "https://" not in html and "<script" not in html


def test_nightly_history_is_drawn_with_its_band_and_a_wrong_one_is_named(tmp_path):
    hist = pd.DataFrame({"config_id": ["a", "a", "a", "b", "b", "b"],
                         "date": ["2026-11-01", "2026-11-02", "2026-11-03"] * 2,
                         "throughput_ips": [100, 101, 80, 50, 51, 50], "band_low": [90] * 3 + [45] * 3,
                         "band_high": [110] * 3 + [55] * 3})
    html_path, _ = html_report.write_report(TABLE.iloc[:2], tmp_path, history=hist)
    assert 'id="plot-history"' in html_path.read_text()
    with pytest.raises(ValueError, match="history lacks column.s. band_high; fix: .*config_id, date"):
        html_report.write_report(TABLE.iloc[:2], tmp_path, history=hist.drop(columns="band_high"))


@pytest.mark.parametrize("row,command", [
    ({"model": "digits_cnn", "engine": "tflite", "precision": "fp32", "batch_size": 8, "threads": 2.0,
      "data": "digits", "engine.num_threads": 2.0, "engine.use_xnnpack": False, "engine.allow_tf_ops": True},
     "python sweep.py model=digits_cnn engine=tflite precision=fp32 batch_size=8 threads=2 "
     "engine.use_xnnpack=false"),
    ({"model": "digits_cnn", "engine": "onnx", "precision": "int8", "batch_size": 1, "threads": 2, "data": "random",
      "engine.intra_op_num_threads": 2, "engine.inter_op_num_threads": 1, "engine.opset": 13,
      "engine.quant_format": "qdq", "engine.per_channel": "False"},  # a param as MLflow gives it: text
     "python sweep.py model=digits_cnn engine=onnx precision=int8 batch_size=1 threads=2 data=random "
     "engine.inter_op_num_threads=1 engine.opset=13 engine.per_channel=false"),
    ({"model": "digits_cnn", "engine": "tf", "precision": "fp32", "batch_size": 1, "threads": float("nan"),
      "engine.jit_compile": float("nan")},  # an old table without threads; a param this row lacks
     "python sweep.py model=digits_cnn engine=tf precision=fp32 batch_size=1"),
    (pd.DataFrame({"model": ["digits_cnn"], "engine": ["tflite"], "precision": ["int8"], "batch_size": [1],
                   "threads": [1], "engine.use_xnnpack": [True], "engine.int8_io": [True]}).iloc[0],
     # a row of a table: numpy values (a default bool left out, another written as Hydra does)
     "python sweep.py model=digits_cnn engine=tflite precision=int8 batch_size=1 threads=1 engine.int8_io=true"),
])
def test_reproduce_command_writes_only_what_differs_from_the_defaults(row, command):
    assert reproduce_command(row) == command
