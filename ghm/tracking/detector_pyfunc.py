"""The logged detector's model code (MLflow's "models from code"): loading the model runs this file."""

import mlflow

from ghm.tracking.model import DetectorModel

mlflow.models.set_model(DetectorModel())
