"""A packaged MLflow model's input example (trtsweep.mlflow_models.add_input_example): written as MLflow's
``save_model(input_example=...)`` writes it, and made once per example in a process."""

from __future__ import annotations

import numpy as np


def test_an_input_example_is_the_one_mlflow_writes_and_is_made_once(tmp_path, monkeypatch):
    import mlflow.models.utils
    import mlflow.pyfunc
    from mlflow.models import Model

    from trtsweep import mlflow_models

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    x = np.random.default_rng(0).random((2, 4, 4, 3), dtype=np.float32)
    mlflow.pyfunc.save_model(str(tmp_path / "theirs"), python_model=Echo(), input_example=x, pip_requirements=[])
    made = []
    real = mlflow.models.utils._Example
    monkeypatch.setattr(mlflow.models.utils, "_Example", lambda example: made.append(1) or real(example))
    monkeypatch.setattr(mlflow_models, "_EXAMPLES", {})
    for name in ("ours", "ours-again"):
        mlflow.pyfunc.save_model(str(tmp_path / name), python_model=Echo(), pip_requirements=[])
        meta = Model.load(str(tmp_path / name))
        mlflow_models.add_input_example(meta, x, tmp_path / name)
        meta.save(str(tmp_path / name / "MLmodel"))
    assert len(made) == 1  # the second model of the same example reuses its JSON
    theirs = Model.load(str(tmp_path / "theirs"))
    for name in ("ours", "ours-again"):
        ours = Model.load(str(tmp_path / name))
        assert ours.saved_input_example_info == theirs.saved_input_example_info
        for f in theirs.saved_input_example_info.values():
            if f.endswith(".json"):
                assert (tmp_path / name / f).read_text() == (tmp_path / "theirs" / f).read_text()
        loaded = mlflow.pyfunc.load_model(str(tmp_path / name))
        np.testing.assert_array_equal(loaded.input_example, x)
    other = x + 1  # another example: made anew
    mlflow_models.add_input_example(Model(), other, tmp_path / "ours")
    assert len(made) == 2
