"""``trtsweep nightly``'s judgement on recorded MLflow runs: nights of four real configurations (TrialSpecs
composed from the shipped config) logged by the real Tracker with the tags a nightly gives them, with
measured-looking numbers; then each night judged as ``trtsweep nightly`` judges it.

* a 30% drop in one configuration, noise-level changes in the others: exactly that one is flagged, exit 1;
* the same without the drop: exit 0; an empty history: 'no baseline yet', exit 0;
* a pinned baseline (another experiment, not a nightly) is compared too; pinning another run replaces it;
* a configuration that newly fails, one that disappeared, a new one; accuracy past its bound; nothing
  measured at all (exit 2).
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from trtsweep import baseline, nightly
from trtsweep.app import job_config
from trtsweep.config import TrackingConfig, plan_trial
from trtsweep.entry import CONF_DIR
from trtsweep.identity import machine_id
from trtsweep.nightly_verdict import judge
from trtsweep.regression import Rule
from trtsweep.results import TrialResult, TrialStatus
from trtsweep.run_tags import CONFIG_TAG, LABEL_TAG, MACHINE_TAG
from trtsweep.tracking import Tracker

pytest.importorskip("mlflow")

CONFIGS = {"tflite-fp32": ("tflite", "fp32", 5200.0), "tflite-fp16": ("tflite", "fp16", 4900.0),
           "onnx-fp32": ("onnx", "fp32", 7400.0), "tf-fp32": ("tf", "fp32", 1900.0)}
DAY = 86400.0


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    """name → (TrialSpec, resolved job config) of each configuration, as a sweep plans them."""
    cache = tmp_path_factory.mktemp("cache")
    out = {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name, (engine, precision, _) in CONFIGS.items():
            cfg = job_config(compose("config", [f"engine={engine}", f"precision={precision}", "threads=1",
                                                f"cache_dir={cache}", "name=nightly"]))
            out[name] = (plan_trial(cfg), cfg)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    before = mlflow.get_tracking_uri()
    baseline.connect(uri)
    yield uri
    mlflow.set_tracking_uri(before)


class Nights:
    """Nightly runs of one experiment (its own history), one call per night."""

    def __init__(self, uri: str, specs: dict, suite: str = "suite-a"):
        self.uri, self.specs, self.suite = uri, specs, suite
        self.experiment = f"trtsweep/nightly-{uuid.uuid4().hex[:8]}"
        self.rng = np.random.default_rng(7)

    def night(self, days_ago: float, factor: dict[str, float] | None = None, noise: float = 0.02,
              status: dict[str, str] | None = None, only: list[str] | None = None,
              accuracy_drop: dict[str, float] | None = None, tags: dict | None = None, nightly_run: bool = True):
        """Log one nightly (every configuration, or ``only``) measured ``days_ago``; throughput = base ×
        ``factor`` × (1 + noise·N(0,1)), p99 alike.  Returns the parent run, tagged as trtsweep nightly does."""
        stamp = uuid.uuid4().hex[:12]
        run_tags = {baseline.NIGHTLY_TAG: "true", baseline.RUN_TAG: stamp, baseline.SUITE_TAG: self.suite,
                    baseline.DATE_TAG: time.strftime("%Y-%m-%d", time.localtime(time.time() - days_ago * DAY))}
        tracker = Tracker(TrackingConfig(uri=self.uri, experiment=self.experiment, log_models=False,
                                         tags={**(run_tags if nightly_run else {}), **(tags or {})}))
        parent = tracker.parent_run(stamp, f"nightly {stamp}")
        for name in only or list(self.specs):
            spec, cfg = self.specs[name]
            tput = CONFIGS[name][2] * (factor or {}).get(name, 1.0) * (1 + noise * self.rng.standard_normal())
            st = TrialStatus((status or {}).get(name, "ok"))
            metrics = {} if st == TrialStatus.FAILED else {
                "throughput_ips": tput, "latency_mean_ms": 1000 / tput,
                "latency_p99_ms": 1300 / tput * (1 + noise * self.rng.standard_normal()),
                "latency_cv": abs(0.02 + 0.005 * self.rng.standard_normal()),
                "accuracy_drop": (accuracy_drop or {}).get(name, 0.0)}
            started = time.time() - days_ago * DAY if days_ago else time.time()
            result = TrialResult(spec.trial_key(), st, spec.to_dict(), metrics=metrics, started_at=started,
                                 ended_at=started + 5, reason="worker crashed (signal 11)" if metrics == {} else None)
            tracker.log_trial(parent, result, spec, cfg)
        tracker.finish_parent(parent)
        return nightly.parent_run(tracker, stamp) if nightly_run else tracker.client.get_run(parent)

    def history(self, nights: int = 7) -> None:
        for i in range(nights, 0, -1):
            self.night(days_ago=i)


def test_recorded_runs_carry_the_history_tags(store, specs):
    n = Nights(store, specs)
    parent = n.night(days_ago=1)
    assert parent.data.tags[MACHINE_TAG] == machine_id() and parent.data.tags["version.mlflow"]
    kids = baseline.children(parent)
    assert len(kids) == 4
    for run in kids:
        t = run.data.tags
        assert t[baseline.NIGHTLY_TAG] == "true" and t[MACHINE_TAG] == machine_id() and t[CONFIG_TAG]
        assert t[LABEL_TAG].startswith("digits_cnn ")
    assert len({r.data.tags[CONFIG_TAG] for r in kids}) == 4  # four configurations, four ids


def test_empty_history_says_no_baseline_yet_and_exits_0(store, specs):
    tonight = Nights(store, specs).night(days_ago=0)
    verdict = judge(tonight)
    assert [c.kind for c in verdict.configs] == ["new"] * 4
    assert verdict.exit_code == 0
    assert "no baseline yet" in verdict.text()


def test_a_30_percent_drop_is_the_only_one_flagged_and_quiet_nights_pass(store, specs):
    n = Nights(store, specs)
    n.history(7)
    quiet = n.night(days_ago=0.5, factor={"onnx-fp32": 1.03, "tf-fp32": 0.97})  # noise-level changes
    v = judge(quiet)
    assert v.exit_code == 0, v.text()
    assert [c.kind for c in v.configs] == ["ok"] * 4 and all(c.history_runs == 7 for c in v.configs)
    dropped = n.night(days_ago=0, factor={"tflite-fp16": 0.70, "onnx-fp32": 0.97, "tf-fp32": 1.02})
    v = judge(dropped)
    assert v.exit_code == 1
    flagged = v.of("regressed")
    assert [c.label for c in flagged] == [specs["tflite-fp16"][0].label()], v.text()
    assert flagged[0].history_runs == 7  # the quiet night and six before it
    text = v.text()
    assert "REGRESSED" in text and "throughput" in text and "vs the median of 7 nightly run(s)" in text
    assert "(-3" in text  # by how much: about −30%
    child = baseline.search(f"attributes.run_id = '{flagged[0].run_id}'", max_results=1)[0]
    assert child.data.tags[CONFIG_TAG] == flagged[0].config_id
    # the HTML report's history: the 7 reference nights and tonight per configuration, tonight's band;
    # only the injected configuration is below it tonight
    hist = v.history_frame()
    assert len(hist) == 4 * 8 and hist.groupby("config_id").size().tolist() == [8] * 4
    below = hist[(hist.throughput_ips < hist.band_low)]
    assert below.config_id.tolist() == [flagged[0].label]


def test_a_pinned_baseline_is_compared_and_pinning_again_replaces_it(store, specs):
    # a regular sweep (no nightly tags) in another experiment, pinned as the baseline
    regular = Nights(store, specs)
    old = regular.night(days_ago=30, only=["tflite-fp32"], nightly_run=False)
    first = baseline.pin(old.info.run_id)
    assert len(first.runs) == 1 and not first.replaced
    sweep = regular.night(days_ago=20, only=["tflite-fp32", "onnx-fp32"], nightly_run=False)
    second = baseline.pin(sweep.info.run_id)  # a parent run: its trials
    assert len(second.runs) == 2
    assert [r.info.run_id for r in second.replaced] == [first.runs[0].info.run_id]
    assert {r.data.tags[LABEL_TAG] for r in baseline.pinned_runs(machine_id())} >= {
        specs["tflite-fp32"][0].label(), specs["onnx-fp32"][0].label()}
    # a nightly with no history of its own: tflite fp32 is 30% below its pin
    tonight = Nights(store, specs).night(days_ago=0, factor={"tflite-fp32": 0.7}, only=["tflite-fp32", "onnx-fp32"])
    v = judge(tonight)
    assert v.exit_code == 1
    assert [c.label for c in v.of("regressed")] == [specs["tflite-fp32"][0].label()]
    assert "vs the pinned baseline" in v.text()
    pinned_onnx = next(r.info.run_id for r in second.runs if r.data.tags[LABEL_TAG] == specs["onnx-fp32"][0].label())
    assert [c.pinned_run for c in v.of("ok")] == [pinned_onnx]
    assert len(baseline.unpin(sweep.info.run_id).runs) == 2
    assert [c.kind for c in judge(tonight).configs] == ["new", "new"]  # nothing pinned, no history


@pytest.fixture(autouse=True)
def _no_pin_left(store):
    """Pins are found in every experiment: none outlives its test."""
    yield
    from mlflow.tracking import MlflowClient

    for r in baseline.pinned_runs():
        MlflowClient().set_tag(r.info.run_id, baseline.PINNED_TAG, "false")


def test_newly_failing_disappeared_new_and_accuracy(store, specs):
    n = Nights(store, specs)
    for i in (3, 2):
        n.night(days_ago=i, only=["tflite-fp32", "tflite-fp16", "onnx-fp32"])
    tonight = n.night(days_ago=0, only=["tflite-fp32", "onnx-fp32", "tf-fp32"],
                      status={"tflite-fp32": "failed", "onnx-fp32": "accuracy_violation"},
                      accuracy_drop={"onnx-fp32": 0.03})
    v = judge(tonight)
    kinds = {c.label.split()[1] + "-" + c.label.split()[2]: c.kind for c in v.configs}
    assert kinds == {"tflite-fp32": "newly_failing", "onnx-fp32": "regressed", "tf-fp32": "new"}
    assert v.disappeared == [specs["tflite-fp16"][0].label()]
    text = v.text()
    assert "NEWLY FAILING" in text and "worker crashed" in text and "DISAPPEARED" in text
    assert "past fidelity.max_accuracy_drop=0.01" in text
    assert v.exit_code == 1
    # nothing measured at all: an infrastructure problem, not a regression
    broken = n.night(days_ago=0, status={k: "failed" for k in CONFIGS})
    assert judge(broken).exit_code == 2


def test_the_rule_needs_both_the_floor_and_the_noise(store, specs):
    n = Nights(store, specs)
    for i in (3, 2, 1):
        n.night(days_ago=i, noise=0.01)
    slower = n.night(days_ago=0, factor={"tflite-fp32": 0.85}, noise=0.0)  # 15% slower, noise ≈ 9%
    assert judge(slower, rule=Rule(floor=0.05, sigmas=3)).exit_code == 1  # past both
    assert judge(slower, rule=Rule(floor=0.20, sigmas=3)).exit_code == 0  # within the floor
    assert judge(slower, rule=Rule(floor=0.05, sigmas=10)).exit_code == 0  # within the noise


def test_baseline_command_pins_a_sweep_directory_lists_and_refuses_unknown_runs(store, specs, tmp_path, capsys):
    from trtsweep.cli import main

    sweep_dir = tmp_path / "outputs" / "multirun" / "2026-11-01" / "02-00-00"
    sweep_dir.mkdir(parents=True)
    Nights(store, specs).night(days_ago=3, only=["tflite-fp32"], nightly_run=False,
                               tags={"sweep_dir": str(sweep_dir.resolve())})
    assert main(["baseline", "pin", str(sweep_dir), "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    assert "pinned 1 configuration(s)" in out and specs["tflite-fp32"][0].label() in out
    assert main(["baseline", "ls", "--tracking-uri", store]) == 0
    assert "1 pinned baseline(s)" in capsys.readouterr().out
    assert main(["baseline", "pin", "0" * 32, "--tracking-uri", store]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no MLflow run" in err and "fix:" in err
    assert main(["baseline", "pin", "--tracking-uri", store]) == 2
    assert "needs a run id or a sweep directory" in capsys.readouterr().err
