"""Secret settings come from files (compose secrets, Kubernetes Secret volumes) or the env."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from iris_shared.settings import (
    SECRETS_DIR_ENV,
    ServiceSettings,
    redis_password_field,
    with_password,
)


class RedisUser(ServiceSettings):
    redis_password: SecretStr | None = redis_password_field("TEST_")


@pytest.fixture
def secrets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path))
    return tmp_path


def test_a_secret_is_read_from_the_file_named_after_its_variable(secrets_dir: Path) -> None:
    (secrets_dir / "redis_password").write_text("from-a-file\n")

    settings = RedisUser(_env_file=None)

    assert settings.redis_password is not None
    assert settings.redis_password.get_secret_value() == "from-a-file"


def test_the_environment_wins_over_the_file(
    secrets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (secrets_dir / "redis_password").write_text("from-a-file")
    monkeypatch.setenv("REDIS_PASSWORD", "from-the-environment")

    settings = RedisUser(_env_file=None)

    assert settings.redis_password is not None
    assert settings.redis_password.get_secret_value() == "from-the-environment"


def test_without_secrets_dir_no_file_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRETS_DIR_ENV, raising=False)
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "redis_password").write_text("must-not-be-read")

    assert RedisUser(_env_file=None).redis_password is None


@pytest.mark.parametrize(
    ("url", "password", "expected"),
    [
        ("redis://predictor@redis:6379/0", "p/w:@x", "redis://predictor:p%2Fw%3A%40x@redis:6379/0"),
        ("redis://127.0.0.1:6379/0", "pw", "redis://:pw@127.0.0.1:6379/0"),
        ("redis://u:given@redis:6379/0", "other", "redis://u:given@redis:6379/0"),
        ("redis://127.0.0.1:6379/0", None, "redis://127.0.0.1:6379/0"),
    ],
)
def test_with_password_puts_the_password_in_the_url_once(
    url: str, password: str | None, expected: str
) -> None:
    secret = SecretStr(password) if password is not None else None

    assert with_password(url, secret) == expected
