"""Bad input stops a sweep before its first trial: one ``trtsweep: error:`` line naming the value, exit
code 2, no traceback (issue 11).  Each case runs the real ``sweep.py`` (grid, or the Optuna sweeper
where the value is its own); a check that fails at plan time costs only the process start, those that
need the model (its signature, a data file against it) also the worker's TensorFlow import.

Also here: the exit code of a sweep in which no trial succeeded (1), the plan's own time limit for
resolving models, and TensorFlow's CUDA probing lines (silenced on a host without a GPU)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trtsweep.urls import MLFLOW_SCHEMES, storage_url_problem, tracking_uri_problem

ROOT = Path(__file__).resolve().parents[2]
ERROR = "trtsweep: error:"
NOISE = ("Could not find cuda drivers", "failed call to cuInit", "absl::InitializeLog")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Bad user files, made without TensorFlow."""
    d = tmp_path_factory.mktemp("bad_files")
    np.save(d / "strings.npy", np.array([["a"] * 64] * 10))
    np.save(d / "wrong_shape.npy", np.zeros((10, 7, 7, 1), np.float32))
    np.save(d / "complex.npy", np.zeros((10, 8, 8, 1), np.complex64))
    np.save(d / "empty.npy", np.zeros((0, 8, 8, 1), np.float32))
    np.save(d / "objects.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    (d / "garbage.npy").write_bytes(b"not numpy at all")
    np.savez(d / "wrong_name.npz", pixels=np.zeros((10, 8, 8, 1), np.float32))
    np.savez(d / "wrong_shape.npz", image=np.zeros((10, 8, 8), np.float32))
    (d / "corrupt").mkdir()
    (d / "corrupt" / "saved_model.pb").write_bytes(b"\x00not a protocol buffer" * 10)
    (d / "not_a_saved_model").mkdir()
    return d


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory, cache_dir) -> Path:
    """A truncated copy of the digits model, one without variables, and a model with an unknown dimension."""
    import tensorflow as tf

    from trtsweep import models
    from trtsweep.config import ModelConfig

    d = tmp_path_factory.mktemp("bad_models")
    digits = Path(models.resolve(ModelConfig(name="digits_cnn", source="digits_cnn"), cache_dir).path)
    shutil.copytree(digits, d / "truncated")
    pb = d / "truncated" / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[: pb.stat().st_size // 2])
    shutil.copytree(digits, d / "no_variables")
    shutil.rmtree(d / "no_variables" / "variables")

    class Dynamic(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones([16, 4]))

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="features")])
        def serve(self, features):
            return {"scores": tf.matmul(features, self.w)}

    m = Dynamic()
    tf.saved_model.save(m, str(d / "dynamic"), signatures={"serving_default": m.serve})
    return d


OPTUNA = ["hydra/sweeper=optuna", "engine=choice(tf,tflite)", "hydra.sweeper.n_trials=1"]
MODEL = pytest.mark.slow  # the worker imports TensorFlow and resolves the model first (~20-40 s)

#: (id, overrides ({f}: the bad files, {m}: the bad models), what the error line must name)
CASES = [
    # models
    pytest.param("{m}/truncated", ["model=saved_model", "model.path={m}/truncated", "engine=tf"],
                 "cannot load SavedModel", id="truncated-saved-model", marks=MODEL),
    pytest.param("", ["model=saved_model", "model.path={m}/no_variables", "engine=tf"],
                 "cannot load SavedModel", id="saved-model-without-variables", marks=MODEL),
    pytest.param("", ["model=saved_model", "model.path={f}/corrupt", "engine=tf"], "cannot load SavedModel",
                 id="corrupt-saved-model", marks=MODEL),
    pytest.param("", ["model=saved_model", "model.path={f}/not_a_saved_model"], "no saved_model.pb",
                 id="directory-without-saved-model"),
    pytest.param("", ["+model.signature_key=nope"], "no signature 'nope'", id="missing-signature", marks=MODEL),
    pytest.param("", ["model.signature_key=nope"], "+model.signature_key=nope", id="signature-key-not-in-config"),
    pytest.param("", ["model=saved_model", "model.path={m}/dynamic", "engine=tf"],
                 "+model.input_shapes.features=", id="unknown-dimension-no-override", marks=MODEL),
    # data files
    pytest.param("", ["data=file", "data.path={f}/strings.npy"], "dtype <U1", id="npy-of-strings"),
    pytest.param("", ["data=file", "data.path={f}/complex.npy"], "dtype complex64", id="npy-wrong-dtype"),
    pytest.param("", ["data=file", "data.path={f}/objects.npy"], "objects.npy cannot be read", id="npy-pickled"),
    pytest.param("", ["data=file", "data.path={f}/garbage.npy"], "garbage.npy cannot be read", id="npy-garbage"),
    pytest.param("", ["data=file", "data.path={f}/empty.npy"], "holds no samples", id="npy-empty"),
    pytest.param("", ["data=file", "data.path={f}/wrong_shape.npy"], "sample shape (7, 7, 1)",
                 id="npy-wrong-shape", marks=MODEL),
    pytest.param("", ["data=file", "data.path={f}/wrong_shape.npz"], "sample shape (8, 8)",
                 id="npz-wrong-shape", marks=MODEL),
    pytest.param("", [*OPTUNA, "data=file", "data.path={f}/strings.npy"], "dtype <U1", id="search-npy-of-strings"),
    pytest.param("", [*OPTUNA, "data=file", "data.path={f}/wrong_shape.npy"], "sample shape (7, 7, 1)",
                 id="search-npy-wrong-shape", marks=MODEL),
    pytest.param("", ["data=file", "data.path={f}/wrong_name.npz"], "lacks arrays for inputs ['image']",
                 id="npz-wrong-names", marks=MODEL),
    pytest.param("", ["data=file", "data.path={f}/missing.npy"], "data.path=", id="data-file-missing"),
    # calibration
    pytest.param("", ["precision=int8", "data.calibration_samples=0"], "data.calibration_samples=128",
                 id="empty-calibration-set"),
    pytest.param("", ["engine=tftrt", "precision=int8", "batch_size=8", "data.calibration_samples=4"],
                 "data.calibration_samples=4 is smaller than one calibration batch", id="calibration-below-batch"),
    # unknown keys and values
    pytest.param("", ["bogus=1"], "Could not override 'bogus'", id="unknown-key"),
    pytest.param("", ["+bogus=1"], "bogus is not a setting", id="unknown-key-appended"),
    pytest.param("", ["+measure.bogus=1"], "measure.bogus is not a known setting", id="unknown-measure-key"),
    pytest.param("", ["+precision.bogus=1"], "precision.bogus is not a setting", id="unknown-precision-key"),
    pytest.param("", ["+engine.bogus=1"], "engine.bogus", id="unknown-engine-param"),
    pytest.param("", ["engine=bogus"], "Could not find 'engine/bogus'", id="unknown-engine"),
    pytest.param("", ["precision=int3"], "Could not find 'precision/int3'", id="unknown-precision"),
    pytest.param("", ["batch_size=abc"], "batch_size='abc'", id="batch-size-not-a-number"),
    pytest.param("", ["measure.repeats=many"], "measure.repeats='many'", id="repeats-not-a-number"),
    pytest.param("", ["batch_size=[1,2"], "batch_size=[1,2", id="override-syntax"),
    # zero and negative sizes, thread counts, timeouts
    pytest.param("", ["batch_size=0"], "batch_size=0", id="batch-size-zero"),
    pytest.param("", ["batch_size=-4"], "batch_size=-4", id="batch-size-negative"),
    pytest.param("", ["data.eval_samples=0"], "data.eval_samples=0", id="eval-samples-zero"),
    pytest.param("", ["data.calibration_samples=-1"], "data.calibration_samples=-1", id="calibration-negative"),
    pytest.param("", ["measure.repeats=0"], "measure.repeats=0", id="repeats-zero"),
    pytest.param("", ["measure.min_iters=-1"], "measure.min_iters=-1", id="iters-negative"),
    pytest.param("", ["threads=0"], "threads=0", id="threads-zero"),
    pytest.param("", ["threads=-1"], "threads=-1", id="threads-negative"),
    pytest.param("", ["engine.num_threads=-2"], "engine.num_threads=-2", id="engine-threads-negative"),
    pytest.param("", ["trial.timeout_s=0"], "trial.timeout_s=0", id="timeout-zero"),
    pytest.param("", ["trial.timeout_s=-5"], "trial.timeout_s=-5", id="timeout-negative"),
    pytest.param("", ["trial.max_memory_mb=0"], "trial.max_memory_mb=0", id="memory-cap-zero"),
    pytest.param("", ["trial.max_memory_mb=-1"], "trial.max_memory_mb=-1", id="memory-cap-negative"),
    pytest.param("", ["model=mobilenet_v2", "model.input_size=0"], "model.input_size=0", id="input-size-zero"),
    # tracking URI and Optuna storage
    pytest.param("", ["tracking=sqlite", "tracking.uri=ftp://nowhere"], "tracking.uri=ftp://nowhere",
                 id="tracking-unsupported-scheme"),
    pytest.param("", ["tracking=sqlite", "tracking.uri=http://"], "tracking.uri=http:// names no host",
                 id="tracking-no-host"),
    pytest.param("", ["tracking=sqlite", "tracking.uri=http://localhost:port"], "invalid port",
                 id="tracking-bad-port"),
    pytest.param("", ["tracking=sqlite", "tracking.uri='postgresql://u:secret@h:xx/db'"],
                 "tracking.uri=postgresql://***@h:xx/db", id="tracking-malformed-database-url"),
    pytest.param("", [*OPTUNA, "hydra.sweeper.storage=ftp://x"], "hydra.sweeper.storage=ftp://x",
                 id="optuna-storage-unsupported"),
    pytest.param("", [*OPTUNA, "hydra.sweeper.storage=sqlite//bad"], "hydra.sweeper.storage=sqlite//bad",
                 id="optuna-storage-malformed"),
    # presets
    pytest.param("", ["+sweep=nope"], "Could not find 'sweep/nope'", id="preset-missing"),
]


def _in_process(sweep, args: list[str], monkeypatch, capfd) -> subprocess.CompletedProcess:
    """``sweep.py <args>`` run in this process (as ``trtsweep nightly`` runs it): the same entry, checks
    and exit code as a subprocess, without a process start and imports per case."""
    from trtsweep import entry, runner

    monkeypatch.chdir(sweep.cwd)
    if "absl.logging" in sys.modules:  # TensorFlow imported by another test module: Hydra's logging setup
        # closes every handler, and absl's closes its stream unless it is sys.stderr *now* (pytest's capture
        # of an earlier moment, whose closing breaks pytest's own output)
        sys.modules["absl.logging"].get_absl_handler().python_handler.stream = sys.__stderr__
    capfd.readouterr()
    try:
        entry.run(sweep.args(*args)[2:], prog="sweep.py")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        runner.stop_pool()
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


@pytest.mark.parametrize("_unused,overrides,needle", CASES)
def test_bad_input_stops_before_any_trial(request, sweep, files, _unused, overrides, needle, monkeypatch, capfd):
    models = request.getfixturevalue("saved_models") if any("{m}" in o for o in overrides) else None
    values = [o.format(f=files, m=models) for o in overrides]
    res = _in_process(sweep, ["-m", "tracking=none", *values], monkeypatch, capfd)
    assert res.returncode == 2, (res.stdout[-2000:], res.stderr[-3000:])
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith(ERROR)]
    assert len(errors) == 1, res.stderr[-3000:]
    assert needle.format(f=files, m=models) in errors[0], errors[0]
    assert "Traceback" not in res.stderr and "HYDRA_FULL_ERROR" not in res.stderr, res.stderr[-3000:]
    assert not list((sweep.cwd / "outputs").rglob("trials/*.json")), "a trial ran before the check"
    assert "[1/" not in res.stdout


def test_single_run_checks_the_same(sweep, files):
    """Without -m (a single run, no sweeper of ours) the same checks run before the trial."""
    res = sweep("tracking=sqlite", "tracking.uri=ftp://nowhere")
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith(f"{ERROR} tracking.uri=ftp")
    res = sweep("data=file", f"data.path={files}/strings.npy")
    assert res.returncode == 2 and "dtype <U1" in res.stderr.strip().splitlines()[-1]


# ---- URLs, without a process ------------------------------------------------------------------------
def test_mlflow_scheme_list_matches_the_installed_mlflow():
    from mlflow.tracking._tracking_service import utils

    assert set(MLFLOW_SCHEMES) == set(utils._tracking_store_registry._registry)


@pytest.mark.parametrize("uri", ["sqlite:///mlflow.db", "/tmp/mlruns", "file:///tmp/mlruns", "http://localhost:5000",
                                 "https://mlflow.example.com", "postgresql://u:p@db:5432/mlflow",
                                 "mysql+pymysql://u@db/mlflow", "databricks", None])
def test_tracking_uris_that_can_work_pass(uri, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri_problem(uri) is None


def test_tracking_uri_from_the_environment_is_named(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "gopher://x")
    assert tracking_uri_problem(None).startswith("MLFLOW_TRACKING_URI=gopher://x: MLflow has no tracking store")


@pytest.mark.parametrize("url,ok", [("sqlite:///outputs/optuna.db", True), ("journal:./optuna.log", True),
                                    ("postgresql+psycopg2://u:p@h/db", True), ("journal:", False),
                                    ("", False), ("ftp://x", False), ("mysql://u@h:port/db", False)])
def test_storage_urls(url, ok):
    problem = storage_url_problem(url)
    assert (problem is None) == ok, problem
    if problem:
        assert problem.startswith("hydra.sweeper.storage=") and "fix:" in problem and "\n" not in problem


# ---- exit code: no trial succeeded ------------------------------------------------------------------------
def test_exit_code_follows_the_trials():
    from trtsweep import outcome

    outcome.reset()
    assert outcome.exit_code() == 0  # nothing ran (e.g. every result told from a study): nothing failed
    for status in ("failed", "skipped", "pruned"):
        outcome.note(status)
    assert outcome.exit_code() == 1 and outcome.summary() == "1 failed, 1 pruned, 1 skipped"
    outcome.note("accuracy_violation")  # measured: the engine ran
    assert outcome.exit_code() == 0
    outcome.reset()


@pytest.mark.slow
def test_grid_in_which_every_trial_fails_exits_1_without_cuda_noise(sweep):
    res = sweep("-m", "tracking=none", "engine=tflite", "precision=fp32,fp16", "confirm.enabled=false",
                env={"TRTSWEEP_TEST_FAULT": "raise"})
    assert res.returncode == 1, res.stderr[-3000:]
    assert "trtsweep: no trial succeeded (2 failed); exit code 1" in res.stderr
    assert len(list((sweep.cwd / "outputs").rglob("trials/*.json"))) == 2
    for line in NOISE:  # this host has no GPU driver: TensorFlow's CUDA probing is not shown
        assert line in res.stderr if _gpu_driver() else line not in res.stderr, line


@pytest.mark.slow
def test_search_in_which_every_trial_fails_exits_1(sweep):
    res = sweep("-m", "tracking=none", "hydra/sweeper=optuna", "engine=tflite", "precision=choice(fp32,fp16)",
                "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage=sqlite:///{sweep.cwd}/optuna.db",
                "confirm.enabled=false", env={"TRTSWEEP_TEST_FAULT": "raise"})
    assert res.returncode == 1, res.stderr[-3000:]
    assert "trtsweep: no trial succeeded" in res.stderr


# ---- the plan's own time limit for models -------------------------------------------------------------
def test_model_resolution_has_its_own_time_limit(monkeypatch, tmp_path):
    """Building a generated model at plan time is not bounded by ``trial.timeout_s`` (a test sets it to
    20 s to catch a hanging trial; a busy machine builds digits_cnn slower than that)."""
    from trtsweep import app, runner
    from trtsweep.config import plan_trial
    from trtsweep.plan_checks import MODEL_TIMEOUT_S

    calls = []

    class Pool:
        def call(self, kind, payload, env, timeout_s, max_memory_mb):
            calls.append((kind, timeout_s))
            return {"name": "digits_cnn"}

    monkeypatch.setattr(runner, "pool", lambda: Pool())
    cfg = {"model": {"name": "digits_cnn", "source": "digits_cnn"}, "engine": {"name": "tflite"},
           "precision": {"name": "fp32"}, "data": {"name": "digits"}, "batch_size": 1, "threads": 1,
           "trial": {"timeout_s": 20}, "tracking": {"uri": None, "enabled": False}, "cache_dir": str(tmp_path)}
    app.resolve_specs_models([plan_trial(cfg)])
    assert calls == [("resolve", MODEL_TIMEOUT_S)] and MODEL_TIMEOUT_S >= 600


# ---- TensorFlow's CUDA probing lines -------------------------------------------------------------------------
def _gpu_driver() -> bool:
    from trtsweep.tflog import gpu_driver_present

    return gpu_driver_present()


def _import_tf(verbose: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TRTSWEEP_VERBOSE", None)
    if verbose:
        env["TRTSWEEP_VERBOSE"] = "1"
    code = ("import sys; from trtsweep import tflog; tflog.import_tensorflow(); "
            "print('after import', file=sys.stderr)")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cuda_probing_lines_are_silenced_and_come_back_with_verbose():
    if _gpu_driver():
        pytest.skip("a GPU driver is present: the lines are kept (they mean something here)")
    quiet, loud = _import_tf(verbose=False), _import_tf(verbose=True)
    assert quiet.returncode == 0 and loud.returncode == 0, (quiet.stderr, loud.stderr)
    assert "after import" in quiet.stderr
    for line in NOISE:
        assert line not in quiet.stderr, quiet.stderr
    assert "Could not find cuda drivers" in loud.stderr  # what TensorFlow prints here, kept with the flag


def test_filter_keeps_every_other_line_and_everything_on_error(capfd):
    from trtsweep.tflog import native_stderr_without

    with native_stderr_without():
        os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine\nkeep me\n")
    assert capfd.readouterr().err == "keep me\n"
    with pytest.raises(RuntimeError), native_stderr_without():
        os.write(2, b"E0000 failed call to cuInit: UNKNOWN ERROR (303)\n")
        raise RuntimeError("import failed")
    assert "cuInit" in capfd.readouterr().err  # an import that fails shows all it printed
