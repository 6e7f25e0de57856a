"""`python -m iris_predictor`: serve the predictor (settings from PREDICTOR_* and .env)."""

import os

from iris_predictor.config import get_settings
from iris_shared.servable import forbid_unpickling
from iris_shared.server import run

if __name__ == "__main__":
    # The predictor loads models with iris_shared.model_files only; with this, no MLflow loader
    # would deserialize one either (nothing above imports MLflow).
    forbid_unpickling()
    # MLflow's settings (read by iris_predictor.mlflow_rest as by MLflow's client) wait 120 s
    # per request and retry for minutes by default; the alias watcher must notice a dead
    # MLflow within seconds. The environment can say otherwise.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    # Its logs are JSON lines: no download progress bars in them.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    run("predictor", "iris_predictor.app:create_app", get_settings())
