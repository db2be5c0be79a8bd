"""Config composition (Hydra's compose API, as the app composes it) and validation into TrialSpecs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from trtsweep.app import job_config
from trtsweep.config import mlflow_params, plan_trial
from trtsweep.engines.base import engine_names
from trtsweep.entry import CONF_DIR
from trtsweep.errors import ConfigError

CONF = str(CONF_DIR)


def cfg(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return job_config(compose("config", overrides=list(overrides)))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


@pytest.mark.parametrize("model", [m for m in options("model") if m != "saved_model"])
def test_every_model_option_composes_and_validates(model):
    spec = plan_trial(cfg(f"model={model}"))
    assert spec.model.name == model
    assert spec.data.name in ("digits", "sample_images", "random")  # data=auto → the model's default


@pytest.mark.parametrize("engine", options("engine"))
def test_every_engine_option_has_a_module_and_valid_defaults(engine):
    assert engine in engine_names()
    spec = plan_trial(cfg(f"engine={engine}"))
    assert spec.engine == engine


@pytest.mark.parametrize("precision", options("precision"))
def test_every_precision_is_planned_or_skipped_with_reason(precision):
    for engine in options("engine"):
        spec = plan_trial(cfg(f"engine={engine}", f"precision={precision}"))
        assert spec.skip_reason is None or engine in spec.skip_reason or "TensorRT" in spec.skip_reason


def test_unsupported_combination_is_a_skip_not_an_error():
    spec = plan_trial(cfg("engine=tf", "precision=int8"))
    assert spec.skip_reason and "engine=tf" in spec.skip_reason and "int8" in spec.skip_reason


@pytest.mark.parametrize("override,needle", [
    ("batch_size=0", "batch_size=0"),
    ("batch_size=-3", "batch_size=-3"),
    ("measure.repeats=0", "measure.repeats=0"),
    ("measure.trim=0.7", "measure.trim=0.7"),
    ("fidelity.max_accuracy_drop=2", "fidelity.max_accuracy_drop=2"),
    ("trial.timeout_s=0", "trial.timeout_s=0"),
    ("+trial.fault=crash", "trial.fault is not a known setting"),  # test-only faults: TRTSWEEP_TEST_FAULT
    ("engine.num_threads=-2", "engine.num_threads=-2"),  # 0 (or -1) means "follow threads"
    ("threads=0", "threads=0"),
    ("measure.max_repeats=1", "measure.max_repeats=1"),
    ("confirm.rounds=1", "confirm.rounds=1"),
    ("engine.num_threads=two", "engine.num_threads='two'"),
    ("data.eval_samples=0", "data.eval_samples=0"),
    ("model=saved_model", "model.path"),
    ("data=file", "data.path"),
])
def test_invalid_values_fail_with_the_value_named(override, needle):
    with pytest.raises(ConfigError) as e:
        plan_trial(cfg(override))
    msg = str(e.value)
    assert needle in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("override,message", [
    ("measure.repeats=three", "measure.repeats='three' must be an integer; fix: measure.repeats=3"),
    ("fidelity.max_accuracy_drop=high", "fidelity.max_accuracy_drop='high' must be a number; "
                                        "fix: fidelity.max_accuracy_drop=0.01"),
    ("measure.min_iters=null", "measure.min_iters must be set (got null); fix: measure.min_iters=50"),
    ("engine.use_xnnpack=maybe", "engine.use_xnnpack='maybe' must be true or false (engine=tflite); "
                                 "fix: engine.use_xnnpack=true"),
    ("+measure.bogus=1", "measure.bogus is not a known setting; fix: use one of max_cv, max_repeats, min_iters"),
])
def test_one_validator_for_every_section_names_the_key_the_value_and_the_fix(override, message):
    with pytest.raises(ConfigError) as e:
        plan_trial(cfg("engine=tflite", override))
    assert message in str(e.value), str(e.value)


def test_unknown_engine_parameter_names_the_valid_ones():
    c = cfg()
    c["engine"]["bogus"] = 1
    with pytest.raises(ConfigError, match=r"engine.bogus .*fix: use one of .*num_threads"):
        plan_trial(c)


def test_int8_without_calibration_samples_fails_up_front():
    with pytest.raises(ConfigError, match="calibration"):
        plan_trial(cfg("engine=tflite", "precision=int8", "data.calibration_samples=0"))


def test_missing_saved_model_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        plan_trial(cfg("model=saved_model", f"model.path={tmp_path / 'missing'}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a SavedModel"):
        plan_trial(cfg("model=saved_model", f"model.path={tmp_path / 'empty'}"))


def test_mlflow_params_have_plain_keys():
    c = cfg("engine=tflite", "precision=int8", "batch_size=8", "engine.num_threads=2")
    spec = plan_trial(c)
    p = mlflow_params(spec, c)
    assert p["model"] == "digits_cnn" and p["engine"] == "tflite" and p["precision"] == "int8"
    assert p["batch_size"] == "8" and p["engine.num_threads"] == "2" and p["data"] == "digits"
    assert "engine.name" not in p and "precision.name" not in p
    assert p["measure.min_iters"] == "50"


def test_keys_separate_conversion_from_measurement():
    a = plan_trial(cfg("engine=tflite", "engine.num_threads=1"))
    b = plan_trial(cfg("engine=tflite", "engine.num_threads=2"))
    c = plan_trial(cfg("engine=tflite", "engine.num_threads=2", "batch_size=8"))
    d = plan_trial(cfg("engine=tflite", "precision=fp16"))
    assert a.conversion_key() == b.conversion_key() == c.conversion_key()  # runtime-only params reuse it
    assert a.conversion_key() != d.conversion_key()
    assert len({a.trial_key(), b.trial_key(), c.trial_key()}) == 3


def test_presets_select_a_grid():
    c = cfg("+sweep=precision_grid")
    assert c["name"] == "precision_grid"


def hydra_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("overrides,sweeper", [
    ((), "trtsweep"),
    (("+sweep=default",), "trtsweep"),
    (("+sweep=precision_grid",), "trtsweep"),
    (("+sweep=cpu_engines",), "trtsweep"),
    (("+sweep=tune_cpu",), "optuna"),                          # the preset picks the Optuna sweeper
    (("+sweep=tune_tftrt",), "optuna"),
    (("hydra/sweeper=optuna", "+sweep=tune_cpu"), "optuna"),   # the old spelling still works
    (("hydra/sweeper=optuna",), "optuna"),                     # the command line picks it, no preset
])
def test_a_preset_picks_its_sweeper(overrides, sweeper):
    c = hydra_cfg(*overrides)
    assert c.hydra.runtime.choices["hydra/sweeper"] == sweeper
    target = {"trtsweep": "grid.TrtsweepGridSweeper", "optuna": "optuna.OptunaSweeper"}[sweeper]
    assert c.hydra.sweeper._target_ == f"hydra_plugins.trtsweep_sweepers.{target}"
    if sweeper == "optuna" and any(o.startswith("+sweep=") for o in overrides):
        assert c.hydra.sweeper.n_trials > 0 and c.hydra.sweeper.params


def test_a_config_dir_of_your_own_adds_models_and_presets(tmp_path):
    """``--config-dir /my/conf`` or ``hydra.searchpath=[file:///my/conf]``: /my/conf/model/*.yaml are
    models and /my/conf/sweep/*.yaml presets, next to the ones that ship with trtsweep."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my_model.yaml").write_text(
        "name: my_model\nsource: digits_cnn   # an existing source, other settings\nseed: 3\nepochs: 2\n"
        "default_data: digits\n")
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "mine.yaml").write_text(
        "# @package _global_\nname: mine\nhydra:\n  mode: MULTIRUN\n  sweeper:\n    params:\n"
        "      engine: tflite,onnx\n")
    c = hydra_cfg(f"hydra.searchpath=[file://{tmp_path}]", "model=my_model", "+sweep=mine", "precision=int8")
    assert c.hydra.sweeper.params.engine == "tflite,onnx" and c.hydra.runtime.choices["hydra/sweeper"] == "trtsweep"
    spec = plan_trial(job_config(c))
    assert (spec.model.name, spec.model.source, spec.model.seed, spec.model.epochs) == ("my_model", "digits_cnn", 3, 2)
    assert spec.precision == "int8" and spec.skip_reason is None and spec.data.name == "digits"
    assert plan_trial(cfg("model=digits_cnn")).model.seed == 0  # the shipped ones are untouched

