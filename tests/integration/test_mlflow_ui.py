"""A sweep as it reads in the MLflow UI (issue 10): few params, unique names, the best run and the
parent's description, on a real grid logged to a real MLflow store."""

from __future__ import annotations

import pytest

from trtsweep.mlflow_view import INTERNAL_METRICS, MAX_PARAMS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def grid(module_sweep):
    res = module_sweep("-m", "engine=tf,tflite", "precision=fp32,int8", "engine.num_threads=1,2",
                       "confirm.rounds=2")
    assert res.returncode == 0, res.stderr[-3000:]
    parents, children = module_sweep.runs("trtsweep/digits_cnn")  # the experiment is named after the model
    assert len(parents) == 1
    return parents[0], children, res


def test_children_carry_the_key_axes_and_what_varies(grid):
    _, children, _ = grid
    assert len(children) == 6  # tf × {fp32, int8 (skipped)}, tflite × {fp32, int8} × num_threads {1, 2}
    for c in children:
        p = c.data.params
        assert len(p) <= MAX_PARAMS
        assert {"model", "engine", "precision", "batch_size", "threads"} <= set(p), p
        assert ("engine.num_threads" in p) == (p["engine"] == "tflite"), p
        assert not INTERNAL_METRICS & set(c.data.metrics)
    tflite = sorted(c.data.params["engine.num_threads"] for c in children if c.data.params["engine"] == "tflite")
    assert tflite == ["1", "1", "2", "2"]


def test_run_names_are_unique_and_show_a_non_ok_status(grid):
    _, children, _ = grid
    names = [c.info.run_name for c in children]
    assert len(set(names)) == len(names), names
    for c in children:
        p = c.data.params
        assert c.info.run_name.startswith(f"{p['engine']}-{p['precision']}-bs1-t{p['threads']}")
        if p["engine"] == "tflite":  # engine.num_threads is tflite's core budget: threads follows it
            assert p["threads"] == p["engine.num_threads"]
    (skipped,) = [c for c in children if c.data.tags["status"] == "skipped"]
    assert skipped.info.run_name.endswith("-SKIPPED") and skipped.info.status == "KILLED"
    assert all(c.info.status == "FINISHED" for c in children if c.data.tags["status"] == "ok")


def test_the_best_child_is_tagged_and_named_on_the_parent(grid):
    parent, children, _ = grid
    best = [c for c in children if c.data.tags.get("best") == "true"]
    assert len(best) == 1 and best[0].data.tags["status"] == "ok"
    assert parent.data.tags["best_run_id"] == best[0].info.run_id
    assert parent.data.tags["best_run_name"] == best[0].info.run_name


def test_the_parent_carries_axes_host_facts_and_a_description(grid, module_sweep):
    parent, children, _ = grid
    assert parent.data.params == {"engine": "tf,tflite", "precision": "fp32,int8", "threads": "1,2",
                                  "engine.num_threads": "1,2", "core_set": "0 | 0,1"}
    assert parent.data.tags["version.tensorflow"] and parent.data.tags["host.cpu_model"]
    assert all("version.tensorflow" not in c.data.tags and c.data.tags["host_id"] for c in children)
    note = parent.data.tags["mlflow.note.content"]
    assert f"**Winner**: `{parent.data.tags['best_run_name']}`" in note
    assert "skipped 1, failed 0" in note
    rows = [ln.split(" | ") for ln in note.splitlines() if ln[:3] in {f"| {i}" for i in range(1, 10)}]
    assert len(rows) == 5  # the measured ones, ranked by throughput
    assert [float(r[2]) for r in rows] == sorted((float(r[2]) for r in rows), reverse=True)
    assert [r[1] for r in rows if r[1].endswith(" ★")] == [parent.data.tags["best_run_name"] + " ★"]
    arts = [a.path for a in module_sweep.client().list_artifacts(parent.info.run_id)]
    assert "sweep_plot.png" in arts


def test_speedup_is_a_child_metric(grid):
    _, children, _ = grid
    measured = [c for c in children if c.data.tags["status"] == "ok"]
    tf = next(c for c in measured if c.data.params["engine"] == "tf")
    assert tf.data.metrics["speedup_vs_tf_fp32"] == pytest.approx(1.0)
    for c in measured:
        expected = c.data.metrics["throughput_ips"] / tf.data.metrics["throughput_ips"]
        assert c.data.metrics["speedup_vs_tf_fp32"] == pytest.approx(expected)


def test_data_is_logged_as_dataset_inputs_and_the_link_opens_the_sweep(grid):
    parent, children, res = grid
    by = {(c.data.params["engine"], c.data.params["precision"], c.data.params["threads"]): c for c in children}
    int8 = by[("tflite", "int8", "1")].inputs.dataset_inputs
    contexts = {i.tags[0].value: i.dataset for i in int8}
    assert set(contexts) == {"evaluation", "calibration"} and all(len(d.digest) == 12 for d in contexts.values())
    fp32 = by[("tflite", "fp32", "1")].inputs.dataset_inputs
    assert [i.tags[0].value for i in fp32] == ["evaluation"]
    assert fp32[0].dataset.digest == contexts["evaluation"].digest  # the same evaluation data
    assert not by[("tf", "int8", "2")].inputs.dataset_inputs  # skipped: nothing was read
    link = f"#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning"
    assert any(ln.startswith("MLflow: mlflow ui --backend-store-uri sqlite:///") and ln.endswith(link)
               for ln in res.stdout.splitlines()), res.stdout[-2000:]


def test_a_sweep_served_from_the_cache_marks_its_own_children(grid, sweep):
    """Cached results also name the child runs of the first sweep's store: the best tag, the speed-up and
    the parent's best run must go to this sweep's children."""
    res = sweep("-m", "engine=tf,tflite", "precision=fp32", "engine.num_threads=1,2", "confirm.rounds=2")
    assert res.returncode == 0, res.stderr[-3000:]
    (parent,), children = sweep.runs()
    assert all(c.data.tags["cached"] == "true" for c in children)
    ids = {c.info.run_id for c in children}
    assert parent.data.tags["best_run_id"] in ids
    assert [c.data.tags.get("best") for c in children].count("true") == 1
    assert all("speedup_vs_tf_fp32" in c.data.metrics for c in children)
