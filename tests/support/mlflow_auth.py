"""An MLflow server that requires credentials (its basic-auth app), as compose runs it, and the
credentials `iris-mlops bootstrap` sets it up with."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import httpx

from iris_devstack.processes import ManagedProcess, free_port
from tests.support.core import start_mlflow

ADMIN = "admin"
SERVICE_USERS = ("trainer", "gateway", "predictor")


def auth_ini(database_uri: str) -> str:
    """The auth configuration compose gives the server (MLFLOW_AUTH_CONFIG_PATH)."""
    return (
        "[mlflow]\n"
        # Deny by default: every user reads and writes only what the bootstrap granted it.
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = {database_uri}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Each request otherwise verifies a scrypt hash; with several agents sharing the
        # machine, that cost a second per request.
        "auth_cache_ttl_seconds = 60\n"
    )


@dataclass(frozen=True)
class Credentials:
    """The admin's and each service user's password, and the folder of secret files that
    holds them as the bootstrap container gets them."""

    passwords: dict[str, str]
    secrets_dir: Path

    @classmethod
    def generate(cls, secrets_dir: Path) -> Credentials:
        return cls.write(
            {user: secrets.token_urlsafe(18) for user in (ADMIN, *SERVICE_USERS)}, secrets_dir
        )

    @classmethod
    def write(cls, passwords: dict[str, str], secrets_dir: Path) -> Credentials:
        secrets_dir.mkdir(parents=True, exist_ok=True)
        for user, password in passwords.items():
            # Trailing newline as `echo ... > file` leaves it: the settings must strip it.
            (secrets_dir / f"mlflow_{user}_password").write_text(f"{password}\n")
        return cls(dict(passwords), secrets_dir)

    def client(self, uri: str, user: str | None) -> httpx.Client:
        """An HTTP client of MLflow's REST API as `user` (None: anonymous)."""
        auth = (user, self.passwords[user]) if user is not None else None
        return httpx.Client(base_url=uri, auth=auth, timeout=30)


def start_mlflow_with_auth(
    log_dir: Path, store_dir: Path, admin_password: str
) -> tuple[ManagedProcess, str]:
    """`mlflow server --app-name basic-auth` on a free port, SQLite stores in `store_dir`."""
    port = free_port()
    store_dir.mkdir(parents=True, exist_ok=True)
    config = store_dir / "basic_auth.ini"
    config.write_text(auth_ini(f"sqlite:///{store_dir / 'basic_auth.db'}"))
    return start_mlflow(
        log_dir,
        store_dir,
        env={
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            # Read on the first start only, to create the admin user.
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
        },
        options=("--app-name", "basic-auth"),
        name=f"mlflow-auth-{port}",
        port=port,
    )
