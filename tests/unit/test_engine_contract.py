"""The contract every engine passes (like Optuna's storage/sampler contract tests): adding an engine
adds its module and config file, and this class tests it with no further edits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from trtsweep.calibration import calibration_data
from trtsweep.config import DataConfig
from trtsweep.data import batches, load
from trtsweep.engines.base import PRECISIONS, Engine, engine_names, get_engine, make_params
from trtsweep.entry import CONF_DIR
from trtsweep.errors import ConfigError

CONF = CONF_DIR / "engine"
ENGINES = engine_names()


@pytest.fixture(scope="module")
def digits_data(digits_model):
    return load(DataConfig(name="digits", calibration_samples=32, eval_samples=96), digits_model)


@pytest.fixture(scope="module")
def reference(digits_model, digits_data):
    from trtsweep.engines.tf import TFModel

    r = TFModel(digits_model, jit_compile=False)
    return np.concatenate([r.run(r.prepare(b))[0] for b in batches(digits_data.evaluation, 32)])[:96]


@pytest.mark.parametrize("name", ENGINES)
class TestEngineContract:
    def test_config_file_matches_params(self, name):
        eng = get_engine(name)
        values = yaml.safe_load((CONF / f"{name}.yaml").read_text())
        assert values["name"] == name == eng.name
        params = make_params(eng, values)
        fields = {f.name for f in dataclasses.fields(params)}
        assert set(values) - {"name"} == fields, "conf/engine/<name>.yaml must list every parameter"
        assert dataclasses.asdict(params) == dataclasses.asdict(eng.Params())  # yaml defaults == code defaults

    def test_declares_precisions_and_reasons(self, name):
        eng = get_engine(name)
        assert issubclass(eng, Engine) and set(eng.precisions) <= set(PRECISIONS) and eng.precisions
        params = eng.Params()
        for p in PRECISIONS:
            reason = eng.unsupported(p, params)
            if p not in eng.precisions:
                assert reason and p in reason
        av = eng.availability()
        assert av.available or (av.reason and "\n" not in av.reason)

    def test_names_an_mlflow_flavor_that_exists(self, name):
        """``pyfunc`` (trtsweep's wrapper around the engine's loaded model) or an MLflow flavor module
        whose ``save_model`` trtsweep.mlflow_models calls with the engine's ``mlflow_model_args``."""
        import importlib

        flavor = get_engine(name).mlflow_flavor
        assert flavor == "pyfunc" or callable(importlib.import_module(f"mlflow.{flavor}").save_model)

    def test_unknown_parameter_is_rejected(self, name):
        with pytest.raises(ConfigError, match=f"engine.no_such_param is not a parameter of engine={name}"):
            make_params(get_engine(name), {"no_such_param": 1})

    def test_converts_loads_and_agrees_with_tf(self, name, digits_model, digits_data, reference, tmp_path):
        eng_cls = get_engine(name)
        if not eng_cls.availability().available:
            pytest.skip(eng_cls.availability().reason)
        engine = eng_cls(eng_cls.Params())
        for precision in eng_cls.precisions:
            out_dir = tmp_path / precision
            out_dir.mkdir()
            calib = calibration_data(digits_data, eng_cls.calibration_batch_size(engine.params, [1, 3])) \
                if eng_cls.needs_calibration(precision, engine.params) else None
            res = engine.convert(digits_model, precision, calib, out_dir, [1, 3])
            assert res.convert_time_s >= 0 and Path(res.artifact).exists()
            for bs in (1, 3):
                loaded = engine.load(Path(res.artifact), digits_model, precision, bs)
                outs = []
                for b in batches(digits_data.evaluation, bs):
                    y = loaded.to_float(loaded.run(loaded.prepare(b)))
                    assert len(y) == len(digits_model.outputs) and y[0].shape == (bs, 10)
                    outs.append(y[0])
                loaded.close()
                agree = (np.concatenate(outs)[:96].argmax(1) == reference.argmax(1)).mean()
                assert agree >= (0.999 if precision == "fp32" else 0.95), (name, precision, bs, agree)
