"""The first model and MLflow's users: what the bootstrap Job does, safe to run again and again.

Runs in the trainer's image, in the checkout that prepare_workspace.py made, with MLflow's
basic-auth app (`mlflow server --app-name basic-auth`) in front of the registry:

1. as MLflow's admin, make the users of the stack exist with the passwords of the Secret
   (trainer, gateway, predictor; an existing user gets the Secret's password again, so
   rotating one is: change the Secret, run the Job);
2. unless the served model (PREDICTOR_MODEL_NAME, default Iris-LogisticRegression) already has
   a `production` version, run `iris-mlops train` as the trainer: the first version of each
   model passes the gate as `first_version` and becomes `production`;
3. as the admin, let the gateway move aliases: EDIT on every registered model of the project
   that exists (MLflow gives the trainer, their creator, MANAGE; every user may READ).

Settings: MLFLOW_TRACKING_URI, and MLFLOW_USERS_DIR, a folder with one file per MLflow user
(admin, trainer, gateway, predictor) holding its password.

    python bootstrap.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException
from mlflow.server.auth.client import AuthServiceClient

from iris_shared.registry import DEFAULT_MODEL, NOT_FOUND_ERRORS, PRODUCTION, REGISTERED_MODELS

ADMIN = "admin"
SERVICE_USERS = ("trainer", "gateway", "predictor")
ALIAS_MOVER = "gateway"
REGISTERED_MODEL = "registered_model"
EDIT = "EDIT"
ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"
# Where MLflow's clients read their credentials (user name, password).
CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def log(message: str) -> None:
    print(f"bootstrap: {message}", file=sys.stderr, flush=True)


def password(users_dir: Path, user: str) -> str:
    return (users_dir / user).read_text().strip()


@contextmanager
def signed_in_as(user: str, secret: str) -> Iterator[None]:
    """MLflow's clients take their credentials from these two variables, in this process."""
    saved = {name: os.environ.get(name) for name in CREDENTIAL_VARIABLES}
    os.environ.update(zip(CREDENTIAL_VARIABLES, (user, secret), strict=True))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def missing(exc: MlflowException) -> bool:
    return exc.error_code in NOT_FOUND_ERRORS


def ensure_users(auth: AuthServiceClient, users_dir: Path) -> None:
    for user in SERVICE_USERS:
        secret = password(users_dir, user)
        try:
            auth.get_user(user)
        except RestException as exc:
            if not missing(exc):
                raise
            auth.create_user(user, secret)
            log(f"MLflow user {user} created")
        else:
            auth.update_user_password(user, secret)
            log(f"MLflow user {user} exists; password set from the Secret")


def has_production(client: MlflowClient, model: str) -> bool:
    try:
        version = client.get_model_version_by_alias(model, PRODUCTION)
    except MlflowException as exc:
        if missing(exc):
            return False
        raise
    log(f"{model} has a production version ({version.version})")
    return True


def grant_alias_mover(auth: AuthServiceClient, client: MlflowClient) -> None:
    for model in REGISTERED_MODELS:
        try:
            client.get_registered_model(model)
        except MlflowException as exc:
            if missing(exc):
                continue
            raise
        try:
            auth.grant_user_permission(ALIAS_MOVER, REGISTERED_MODEL, model, EDIT)
        except RestException as exc:
            if exc.error_code != ALREADY_EXISTS:
                raise
            held = auth.get_user_permission(ALIAS_MOVER, REGISTERED_MODEL, model).permission
            if held != EDIT:
                # Someone changed it by hand: back to what the stack needs.
                auth.revoke_user_permission(ALIAS_MOVER, REGISTERED_MODEL, model)
                auth.grant_user_permission(ALIAS_MOVER, REGISTERED_MODEL, model, EDIT)
        log(f"{ALIAS_MOVER} may move the aliases of {model}")


def main() -> int:
    tracking_uri = os.environ["MLFLOW_TRACKING_URI"]
    users_dir = Path(os.environ.get("MLFLOW_USERS_DIR", "/run/secrets/mlflow-users"))
    served_model = os.environ.get("PREDICTOR_MODEL_NAME", DEFAULT_MODEL)
    # `iris-mlops train` runs with the environment as the Job gives it: the trainer's user.
    trainer_environment = dict(os.environ)

    with signed_in_as(ADMIN, password(users_dir, ADMIN)):
        auth, client = AuthServiceClient(tracking_uri), MlflowClient(tracking_uri)
        ensure_users(auth, users_dir)
        trained_already = has_production(client, served_model)
    if not trained_already:
        log(f"{served_model} has no production version: training the first models")
        subprocess.run(["iris-mlops", "train"], env=trainer_environment, check=True)
    with signed_in_as(ADMIN, password(users_dir, ADMIN)):
        grant_alias_mover(auth, client)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        log(f"training failed (exit status {exc.returncode}); the Job tries again")
        sys.exit(1)
