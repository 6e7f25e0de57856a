"""App tests: a real scikit-learn model trained here, served by a real uvicorn in a thread.

Starlette's TestClient is not used: with httpx (not httpx2) installed it raises a deprecation
warning at import, which this suite turns into an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
import pytest
from fastapi import FastAPI
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from iris_devstack.servers import serve_in_thread
from iris_predictor.app import create_app
from iris_predictor.config import PredictorSettings
from iris_predictor.serving import LoadedModel
from iris_shared.schemas import FEATURE_NAMES, SPECIES, ServedModel


@pytest.fixture(scope="session")
def iris_pipeline() -> Pipeline:
    data = load_iris()
    features = pd.DataFrame(data.data, columns=list(FEATURE_NAMES))
    labels = pd.Series([SPECIES[i] for i in data.target])
    pipeline = Pipeline([("scaler", StandardScaler()), ("classifier", LogisticRegression())])
    return pipeline.fit(features, labels)


@pytest.fixture
def loaded_model(iris_pipeline: Pipeline) -> LoadedModel:
    return LoadedModel(
        model=iris_pipeline,
        info=ServedModel(
            name="Iris-LogisticRegression",
            version="7",
            alias="production",
            run_id="abc123",
            metrics={"accuracy": 0.97},
            data_md5="d41d8cd98f00b204e9800998ecf8427e",
            loaded_at=datetime.now(UTC),
        ),
    )


@pytest.fixture
def settings(tmp_path: Path) -> PredictorSettings:
    return PredictorSettings(
        mlflow_tracking_uri="http://127.0.0.1:1",
        cache_dir=tmp_path / "cache",
        prediction_log_dir=tmp_path / "prediction-logs",
        max_batch_rows=50,
        max_body_bytes=64 * 1024,
        poll_interval_s=0.2,
        webhook_secret="s3cret",
    )


@contextmanager
def running(app: FastAPI) -> Iterator[httpx.Client]:
    """Serve `app` with uvicorn on a free port (lifespan included) and give a client for it."""
    with serve_in_thread(app) as base_url, httpx.Client(base_url=base_url, timeout=10) as client:
        yield client


@pytest.fixture
def serve() -> Callable[[FastAPI], AbstractContextManager[httpx.Client]]:
    return running


@pytest.fixture
def client(settings: PredictorSettings, loaded_model: LoadedModel) -> Iterator[httpx.Client]:
    with running(create_app(settings, model_source=loaded_model)) as test_client:
        yield test_client
