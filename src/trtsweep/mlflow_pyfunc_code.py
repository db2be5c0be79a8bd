"""The model-from-code file of trtsweep's pyfunc models (``trtsweep.mlflow_pyfunc.CODE_FILE``): MLflow
runs it, when the model is saved and when it is loaded, to get the model object."""

from mlflow.models import set_model

from trtsweep.mlflow_pyfunc import EngineModel

set_model(EngineModel())
