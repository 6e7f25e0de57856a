"""`iris-mlops bootstrap` against a real MLflow that requires credentials (its basic-auth app),
as compose and Kubernetes run them: each service user can do what its service needs and is
refused the rest, and the stack trains and serves its first model on its own."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from iris_devstack.processes import free_port, wait_until
from iris_shared.registry import CHALLENGER, LOGISTIC_REGRESSION, PRODUCTION, REGISTERED_MODELS
from tests.support.core import REPO_ROOT, run_cli
from tests.support.gateway import start_gateway
from tests.support.mlflow_auth import (
    ADMIN,
    SERVICE_USERS,
    Credentials,
    start_mlflow_with_auth,
)
from tests.support.predictor import start_predictor, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API = "/api/2.0/mlflow"
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    return Credentials.generate(tmp_path_factory.mktemp("bootstrap-secrets"))


@pytest.fixture(scope="module")
def auth_mlflow(
    logs_dir: Path, tmp_path_factory: pytest.TempPathFactory, credentials: Credentials
) -> Iterator[str]:
    """One MLflow server with basic auth for the whole module."""
    process, uri = start_mlflow_with_auth(
        logs_dir, tmp_path_factory.mktemp("mlflow-auth-store"), credentials.passwords[ADMIN]
    )
    yield uri
    process.stop()


def bootstrap(
    uri: str, secrets_dir: Path | None, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """`iris-mlops bootstrap` as the compose service runs it: secrets as files in SECRETS_DIR.

    Run from `cwd`, a folder without .env, so a developer's settings cannot change what it does.
    """
    settings = {"TRAINER_REPO_ROOT": str(REPO_ROOT), "TRAINER_BOOTSTRAP_WAIT_S": "30", **env}
    if secrets_dir is not None:
        settings["SECRETS_DIR"] = str(secrets_dir)
    return run_cli("bootstrap", tracking_uri=uri, cwd=cwd, check=False, env=settings)


@pytest.fixture(scope="module")
def first_bootstrap(
    auth_mlflow: str,
    credentials: Credentials,
    data_ready: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = bootstrap(auth_mlflow, credentials.secrets_dir, tmp_path_factory.mktemp("cwd"))
    return result, time.monotonic() - started


def registry_state(uri: str, credentials: Credentials) -> dict[str, Any]:
    """Users, their grants, the registered models (aliases, last update) and their versions,
    as MLflow's admin reads them."""
    with credentials.client(uri, ADMIN) as admin:
        users = admin.get(f"{API}/users/list").json()
        grants = {
            user: admin.get(
                "/api/3.0/mlflow/users/permissions/list", params={"username": user}
            ).json()
            for user in SERVICE_USERS
        }
        models = {
            name: admin.get(f"{API}/registered-models/get", params={"name": name}).json()
            for name in REGISTERED_MODELS
        }
        versions = {
            name: admin.get(
                f"{API}/model-versions/search", params={"filter": f"name='{name}'"}
            ).json()
            for name in REGISTERED_MODELS
        }
    return {"users": users, "grants": grants, "models": models, "versions": versions}


def direct_grants(uri: str, credentials: Credentials, user: str) -> dict[tuple[str, str], str]:
    with credentials.client(uri, ADMIN) as admin:
        rows = admin.get(
            "/api/3.0/mlflow/users/permissions/list", params={"username": user}
        ).json()["permissions"]
    return {(row["resource_type"], row["resource_pattern"]): row["permission"] for row in rows}


def production_version(client: httpx.Client, name: str = LOGISTIC_REGRESSION) -> dict[str, Any]:
    response = client.get(
        f"{API}/registered-models/alias", params={"name": name, "alias": PRODUCTION}
    )
    assert response.status_code == 200, response.text
    return dict(response.json()["model_version"])


def mlmodel_path(client: httpx.Client, version: dict[str, Any]) -> str:
    """Where the version's MLmodel file is served through the tracking server's proxy."""
    model_id = version["source"].removeprefix("models:/")
    logged = client.get(f"{API}/logged-models/{model_id}")
    assert logged.status_code == 200, logged.text
    artifact_uri = logged.json()["model"]["info"]["artifact_uri"]
    folder = artifact_uri.removeprefix("mlflow-artifacts:/")
    return f"/api/2.0/mlflow-artifacts/artifacts/{folder}/MLmodel"


def service_secrets(directory: Path, password: str) -> Path:
    """A service container's secrets: its own MLflow password under the contract's name."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mlflow_tracking_password").write_text(password)
    return directory


def test_bootstrap_creates_the_users_and_a_first_production_version_the_trainer_owns(
    auth_mlflow: str, credentials: Credentials, first_bootstrap: tuple[Any, float]
) -> None:
    result, seconds = first_bootstrap
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "training the baseline" in result.stdout
    assert "created users trainer, gateway, predictor" in result.stdout
    for password in credentials.passwords.values():
        assert password not in output
    for user in SERVICE_USERS:
        with credentials.client(auth_mlflow, user) as client:
            me = client.get(f"{API}/users/current")
        assert me.status_code == 200, (user, me.text)
        assert me.json()["user"]["is_admin"] is False
    with credentials.client(auth_mlflow, "trainer") as trainer:
        for name in REGISTERED_MODELS:
            version = production_version(trainer, name)
            assert version["version"] == "1"
            run = trainer.get(f"{API}/runs/get", params={"run_id": version["run_id"]}).json()
            assert run["run"]["info"]["user_id"] == "trainer"
    # The trainer created the experiment and the models, and keeps only what training needs:
    # MLflow's MANAGE for a creator is set down to EDIT.
    trainer_grants = direct_grants(auth_mlflow, credentials, "trainer")
    experiment = run["run"]["info"]["experiment_id"]
    assert trainer_grants == {
        ("experiment", experiment): "EDIT",
        **{("registered_model", name): "EDIT" for name in REGISTERED_MODELS},
    }
    print(f"first bootstrap (users, grants, training): {seconds:.1f} s")


def test_bootstrap_again_changes_nothing(
    auth_mlflow: str,
    credentials: Credentials,
    first_bootstrap: tuple[Any, float],
    tmp_path: Path,
) -> None:
    before = registry_state(auth_mlflow, credentials)
    started = time.monotonic()
    again = bootstrap(auth_mlflow, credentials.secrets_dir, tmp_path)
    seconds = time.monotonic() - started
    assert again.returncode == 0, again.stdout + again.stderr
    assert "training the baseline" not in again.stdout
    assert "nothing changed" in again.stdout
    assert "nothing to train" in again.stdout
    assert registry_state(auth_mlflow, credentials) == before
    print(f"bootstrap again: {seconds:.1f} s")


def test_a_request_without_credentials_gets_401(
    auth_mlflow: str, credentials: Credentials, first_bootstrap: tuple[Any, float]
) -> None:
    with credentials.client(auth_mlflow, None) as anonymous:
        alias = {"name": LOGISTIC_REGRESSION, "alias": PRODUCTION}
        assert anonymous.get(f"{API}/registered-models/alias", params=alias).status_code == 401
        moved = anonymous.post(f"{API}/registered-models/alias", json={**alias, "version": "1"})
        assert moved.status_code == 401
        assert anonymous.get(f"{API}/experiments/search").status_code == 401


def test_the_predictor_user_reads_the_model_and_cannot_change_the_registry(
    auth_mlflow: str, credentials: Credentials, first_bootstrap: tuple[Any, float]
) -> None:
    with credentials.client(auth_mlflow, "predictor") as predictor:
        version = production_version(predictor)
        mlmodel = predictor.get(mlmodel_path(predictor, version))
        assert mlmodel.status_code == 200
        assert b"skops" in mlmodel.content
        experiment = predictor.get(f"{API}/runs/get", params={"run_id": version["run_id"]})
        experiment_id = experiment.json()["run"]["info"]["experiment_id"]
        refused = {
            "move production": predictor.post(
                f"{API}/registered-models/alias",
                json={"name": LOGISTIC_REGRESSION, "alias": PRODUCTION, "version": "1"},
            ),
            "drop production": predictor.request(
                "DELETE",
                f"{API}/registered-models/alias",
                json={"name": LOGISTIC_REGRESSION, "alias": PRODUCTION},
            ),
            "register a version": predictor.post(
                f"{API}/model-versions/create",
                json={
                    "name": LOGISTIC_REGRESSION,
                    "source": version["source"],
                    "run_id": version["run_id"],
                },
            ),
            "tag a version": predictor.post(
                f"{API}/model-versions/set-tag",
                json={"name": LOGISTIC_REGRESSION, "version": "1", "key": "k", "value": "v"},
            ),
            "start a run": predictor.post(
                f"{API}/runs/create", json={"experiment_id": experiment_id}
            ),
        }
    assert {what: r.status_code for what, r in refused.items()} == dict.fromkeys(refused, 403)


def test_the_gateway_user_moves_production_and_a_predictor_user_serves_it(
    auth_mlflow: str,
    credentials: Credentials,
    first_bootstrap: tuple[Any, float],
    logs_dir: Path,
    redis_url: str,
    api_token: str,
    tmp_path: Path,
) -> None:
    # A second version waits as challenger, as a retrain that passed the gate leaves it; the
    # trainer user registers it and gives it the alias.
    with credentials.client(auth_mlflow, "trainer") as trainer:
        first = production_version(trainer)
        created = trainer.post(
            f"{API}/model-versions/create",
            json={
                "name": LOGISTIC_REGRESSION,
                "source": first["source"],
                "run_id": first["run_id"],
                "model_id": first["source"].removeprefix("models:/"),
            },
        )
        assert created.status_code == 200, created.text
        second = created.json()["model_version"]["version"]
        made_challenger = trainer.post(
            f"{API}/registered-models/alias",
            json={"name": LOGISTIC_REGRESSION, "alias": CHALLENGER, "version": second},
        )
        assert made_challenger.status_code == 200, made_challenger.text

    predictor, predictor_url = start_predictor(
        logs_dir,
        auth_mlflow,
        MLFLOW_TRACKING_USERNAME="predictor",
        SECRETS_DIR=str(
            service_secrets(tmp_path / "predictor", credentials.passwords["predictor"])
        ),
    )
    gateway = None
    try:
        gateway, gateway_url = start_gateway(
            logs_dir,
            predictor_url,
            redis_url,
            auth_mlflow,
            api_token,
            MLFLOW_TRACKING_USERNAME="gateway",
            SECRETS_DIR=str(
                service_secrets(tmp_path / "gateway", credentials.passwords["gateway"])
            ),
        )
        wait_ready(predictor, predictor_url)
        served = httpx.post(f"{predictor_url}/predict", json=SETOSA, timeout=10)
        assert served.status_code == 200, served.text
        assert served.json()["model_version"] == "1"

        promoted = httpx.post(
            f"{gateway_url}/promote",
            json={"model_name": LOGISTIC_REGRESSION, "model_version": second},
            headers={"Authorization": f"Bearer {api_token}"},
            timeout=30,
        )
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["previous_version"] == "1"

        def serves_second() -> bool:
            answer = httpx.post(f"{predictor_url}/predict", json=SETOSA, timeout=5)
            return bool(answer.json()["model_version"] == second)

        wait_until(serves_second, 15, "the predictor serving the promoted version", predictor)
    finally:
        if gateway is not None:
            gateway.stop()
        predictor.stop()

    with credentials.client(auth_mlflow, "gateway") as gateway_user:
        assert production_version(gateway_user)["version"] == second
        # The promotion took `challenger` off the version it made production.
        challenger = gateway_user.get(
            f"{API}/registered-models/alias",
            params={"name": LOGISTIC_REGRESSION, "alias": CHALLENGER},
        )
        assert challenger.status_code == 400, challenger.text
        experiment_id = gateway_user.get(
            f"{API}/runs/get", params={"run_id": first["run_id"]}
        ).json()["run"]["info"]["experiment_id"]
        refused = {
            "start a run": gateway_user.post(
                f"{API}/runs/create", json={"experiment_id": experiment_id}
            ),
            "delete a version": gateway_user.request(
                "DELETE",
                f"{API}/model-versions/delete",
                json={"name": LOGISTIC_REGRESSION, "version": "1"},
            ),
            "delete the model": gateway_user.request(
                "DELETE", f"{API}/registered-models/delete", json={"name": LOGISTIC_REGRESSION}
            ),
            "tag a version": gateway_user.post(
                f"{API}/model-versions/set-tag",
                json={"name": LOGISTIC_REGRESSION, "version": "1", "key": "k", "value": "v"},
            ),
        }
    assert {what: r.status_code for what, r in refused.items()} == dict.fromkeys(refused, 403)


@pytest.mark.parametrize(
    ("case", "exit_code", "says"),
    [
        ("no admin password", 2, "requires credentials"),
        ("wrong admin password", 2, "refused the password of user 'admin'"),
        ("a service password missing", 2, "mlflow_gateway_password"),
        ("mlflow not answering", 3, "did not answer /health within 2 s"),
    ],
)
def test_bootstrap_says_what_is_wrong_and_exits_non_zero(
    auth_mlflow: str,
    credentials: Credentials,
    first_bootstrap: tuple[Any, float],
    tmp_path: Path,
    case: str,
    exit_code: int,
    says: str,
) -> None:
    uri, secrets_dir = auth_mlflow, tmp_path / "secrets"
    shutil.copytree(credentials.secrets_dir, secrets_dir)
    if case == "no admin password":
        (secrets_dir / "mlflow_admin_password").unlink()
    elif case == "wrong admin password":
        (secrets_dir / "mlflow_admin_password").write_text("not-the-admin-password")
    elif case == "a service password missing":
        (secrets_dir / "mlflow_gateway_password").unlink()
    else:
        uri = f"http://127.0.0.1:{free_port()}"
    result = bootstrap(uri, secrets_dir, tmp_path, TRAINER_BOOTSTRAP_WAIT_S="2")
    assert result.returncode == exit_code, result.stdout + result.stderr
    assert says in result.stderr


def test_an_admin_password_with_an_open_mlflow_is_refused(
    mlflow_server: str, tmp_path: Path
) -> None:
    """Compose gives the bootstrap an admin password: an MLflow that answers anyone then runs
    without its basic-auth app, and the stack must not start as if it were protected."""
    secrets_dir = Credentials.generate(tmp_path / "secrets").secrets_dir
    result = bootstrap(mlflow_server, secrets_dir, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--app-name basic-auth" in result.stderr


def test_a_changed_password_is_set_and_the_old_one_refused(
    auth_mlflow: str, credentials: Credentials, first_bootstrap: tuple[Any, float], tmp_path: Path
) -> None:
    rotated = Credentials.write(
        {**credentials.passwords, "predictor": "a-new-predictor-password"}, tmp_path / "secrets"
    )
    result = bootstrap(auth_mlflow, rotated.secrets_dir, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "set new passwords of predictor" in result.stdout
    assert "training the baseline" not in result.stdout
    with credentials.client(auth_mlflow, "predictor") as old:
        assert old.get(f"{API}/users/current").status_code == 401
    with rotated.client(auth_mlflow, "predictor") as new:
        assert new.get(f"{API}/users/current").status_code == 200
    for user in ("trainer", "gateway"):
        with credentials.client(auth_mlflow, user) as unchanged:
            assert unchanged.get(f"{API}/users/current").status_code == 200
