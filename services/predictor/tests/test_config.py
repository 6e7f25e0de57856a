"""Settings a user writes in .env, taken as they mean them."""

from __future__ import annotations

from pathlib import Path

import pytest

from iris_predictor.config import PredictorSettings


def test_relative_folders_are_anchored_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # .env.example ships relative folders; MLflow answers with absolute download paths.
    monkeypatch.chdir(tmp_path)
    settings = PredictorSettings(
        cache_dir=Path(".cache/predictor"), prediction_log_dir=Path("logs")
    )
    assert settings.cache_dir == tmp_path / ".cache" / "predictor"
    assert settings.prediction_log_dir == tmp_path / "logs"
