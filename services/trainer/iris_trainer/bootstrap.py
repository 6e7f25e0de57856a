"""`iris-mlops bootstrap`: make a registry ready to serve; safe to run on every start.

Compose runs it as a one-shot service and Kubernetes as a Job, `make up` after starting MLflow:

1. Wait, for `bootstrap_wait_s` at most, until MLflow answers /health.
2. When MLflow requires credentials (its basic-auth app), as its admin: create the service
   users `trainer`, `gateway` and `predictor` with the passwords given (or set a password that
   changed), and make their grants on this project's experiment and registered models exactly
   those of `planned_grants`. An open MLflow (`make up`) skips this step.
3. When a model of iris_shared.registry.REGISTERED_MODELS has no `production` version, train as
   the trainer user, which then owns the runs and the versions.

It ends once every registered model has a production version. Running it again changes nothing.

What each user may do, with the server's `default_permission = NO_PERMISSIONS`:
- trainer: EDIT on its experiment (create runs, log artefacts) and on the registered models
  (create versions, tag them, set `challenger` and a first `production`);
- gateway: MANAGE on the registered models, because moving `production` to the challenger also
  deletes the `challenger` alias, which MLflow counts as a delete; READ on the version tier,
  which withholds deleting versions or whole models; READ on every experiment (it reads a
  version's MLmodel through the artefact proxy);
- predictor: READ on the registered models and on every experiment (artefact downloads).
Nobody but the admin moves or grants anything else; a request without credentials gets 401.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from pydantic import SecretStr

from iris_shared.registry import NOT_FOUND_ERRORS, PRODUCTION, REGISTERED_MODELS
from iris_trainer.config import BootstrapSettings, TrainerSettings

TRAINER_USER: Final = "trainer"
GATEWAY_USER: Final = "gateway"
PREDICTOR_USER: Final = "predictor"

# MLflow's own REST routes (mlflow/server/auth/routes.py). Written out rather than imported:
# importing MLflow's auth package needs Flask-WTF, which only the server's image has.
_USERS = "/api/2.0/mlflow/users"
_PERMISSIONS = "/api/3.0/mlflow/users/permissions"
_EXPERIMENTS = "/api/2.0/mlflow/experiments"
_REGISTERED_MODELS = "/api/2.0/mlflow/registered-models"
# MLflow refuses shorter passwords.
MIN_PASSWORD_LENGTH: Final = 12
HTTP_TIMEOUT_S: Final = 30.0
ADMIN_REFUSED_HINT: Final = (
    ": the admin password must be the one MLflow created its admin user with (the server's "
    "MLFLOW_AUTH_ADMIN_PASSWORD, or admin_password in its auth ini, on its first start)"
)
HEALTH_POLL_S: Final = 1.0

# (resource type, resource id or "*") -> permission, as MLflow's grant API names them.
GrantKey = tuple[str, str]
Grants = dict[GrantKey, str]


class BootstrapFailed(Exception):
    """The registry is not ready; the message says why for a person. Exit code 1."""

    exit_code = 1


class ConfigurationError(BootstrapFailed):
    """Credentials are missing or wrong, or MLflow is not run as they say. Exit code 2."""

    exit_code = 2


class MlflowUnreachable(BootstrapFailed):
    """MLflow did not answer /health in time. Exit code 3."""

    exit_code = 3


@dataclass
class Outcome:
    """What one bootstrap did, for the summary it prints."""

    created_users: list[str] = field(default_factory=list)
    updated_passwords: list[str] = field(default_factory=list)
    changed_grants: list[str] = field(default_factory=list)
    trained: bool = False
    production: dict[str, str] = field(default_factory=dict)

    @property
    def changed_access(self) -> bool:
        return bool(self.created_users or self.updated_passwords or self.changed_grants)


def planned_grants(experiment_id: str) -> dict[str, Grants]:
    """Each service user's grants on this project's resources (see the module's docstring)."""
    models = REGISTERED_MODELS
    return {
        TRAINER_USER: {
            ("experiment", experiment_id): "EDIT",
            **{("registered_model", name): "EDIT" for name in models},
        },
        GATEWAY_USER: {
            ("experiment", "*"): "READ",
            **{("registered_model", name): "MANAGE" for name in models},
            ("registered_model_version", "*"): "READ",
        },
        PREDICTOR_USER: {
            ("experiment", "*"): "READ",
            **{("registered_model", name): "READ" for name in models},
        },
    }


def run(
    settings: TrainerSettings, secrets: BootstrapSettings, say: Callable[[str], None]
) -> Outcome:
    """Wait for MLflow, set up its users when it requires credentials, train when needed."""
    uri = settings.mlflow_tracking_uri.rstrip("/")
    admin = _given(secrets.mlflow_admin_password)
    passwords = _service_passwords(secrets) if admin else {}
    outcome = Outcome()
    wait_for_mlflow(uri, secrets.bootstrap_wait_s, say)
    trainer_auth: tuple[str, str] | None = None
    if _requires_credentials(uri):
        if admin is None:
            raise ConfigurationError(
                f"MLflow at {uri} requires credentials, but no admin password was given: put it "
                "in SECRETS_DIR/mlflow_admin_password (or MLFLOW_ADMIN_PASSWORD)"
            )
        trainer_auth = (TRAINER_USER, passwords[TRAINER_USER])
        with httpx.Client(
            base_url=uri, auth=(secrets.mlflow_admin_username, admin), timeout=HTTP_TIMEOUT_S
        ) as client:
            _set_up_access(
                MlflowAs(client, secrets.mlflow_admin_username, ADMIN_REFUSED_HINT),
                passwords,
                _experiment_name(settings),
                outcome,
            )
        say(_access_summary(outcome))
    elif admin is not None:
        raise ConfigurationError(
            f"MLflow at {uri} answers without credentials, but an admin password was given: "
            "start it with MLflow's basic-auth app (`mlflow server --app-name basic-auth`), or "
            "give no admin password to use it open"
        )
    missing = _models_without_production(uri, trainer_auth, outcome)
    if missing:
        as_whom = f" as MLflow user {TRAINER_USER}" if trainer_auth else ""
        say(
            f"registry has no {PRODUCTION} version of {', '.join(missing)}: "
            f"training the baseline{as_whom}"
        )
        _train(settings, trainer_auth, say)
        outcome.trained = True
        missing = _models_without_production(uri, trainer_auth, outcome)
        if missing:
            raise BootstrapFailed(
                f"training ended but {', '.join(missing)} still has no {PRODUCTION} version"
            )
    serving = ", ".join(f"{name}@{PRODUCTION} v{v}" for name, v in outcome.production.items())
    say(f"registry ready: {serving}" + ("" if outcome.trained else "; nothing to train"))
    return outcome


def wait_for_mlflow(uri: str, timeout_s: float, say: Callable[[str], None]) -> None:
    deadline = time.monotonic() + timeout_s
    announced = False
    last = "no answer yet"
    while True:
        try:
            response = httpx.get(f"{uri}/health", timeout=min(5.0, timeout_s))
            if response.status_code == 200:
                return
            last = f"/health answered {response.status_code}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise MlflowUnreachable(
                f"MLflow at {uri} did not answer /health within {timeout_s:g} s ({last}); "
                "is it running, and is MLFLOW_TRACKING_URI right?"
            )
        if not announced:
            say(f"waiting for MLflow at {uri} (up to {timeout_s:g} s)")
            announced = True
        time.sleep(HEALTH_POLL_S)


def _given(secret: SecretStr | None) -> str | None:
    value = secret.get_secret_value() if secret is not None else ""
    return value or None


def _service_passwords(secrets: BootstrapSettings) -> dict[str, str]:
    """The service users' passwords, all required once an admin password is given."""
    given = {
        TRAINER_USER: ("mlflow_trainer_password", _given(secrets.mlflow_trainer_password)),
        GATEWAY_USER: ("mlflow_gateway_password", _given(secrets.mlflow_gateway_password)),
        PREDICTOR_USER: ("mlflow_predictor_password", _given(secrets.mlflow_predictor_password)),
    }
    missing = [file for file, password in given.values() if password is None]
    if missing:
        raise ConfigurationError(
            "an admin password was given, so MLflow's service users are set up, but these "
            f"passwords are missing: {', '.join(missing)} (files in SECRETS_DIR, or the "
            "upper-case variables)"
        )
    short = [file for file, password in given.values() if len(password or "") < MIN_PASSWORD_LENGTH]
    if short:
        raise ConfigurationError(
            f"MLflow refuses passwords shorter than {MIN_PASSWORD_LENGTH} characters: "
            f"{', '.join(short)}"
        )
    return {user: password for user, (_, password) in given.items() if password is not None}


def _requires_credentials(uri: str) -> bool:
    """Whether MLflow refuses an anonymous read of the registry (its basic-auth app does)."""
    response = _request(
        httpx.Client(base_url=uri, timeout=HTTP_TIMEOUT_S),
        "GET",
        f"{_REGISTERED_MODELS}/alias",
        params={"name": REGISTERED_MODELS[0], "alias": PRODUCTION},
    )
    return response.status_code == 401


def _request(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    with client:
        try:
            return client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise BootstrapFailed(f"MLflow at {client.base_url} cannot be reached: {exc}") from exc


class MlflowAs:
    """MLflow's REST API as one user; the bootstrap's calls as the admin, and the few it makes
    as the trainer."""

    def __init__(self, client: httpx.Client, username: str, refused_hint: str = "") -> None:
        self.client = client
        self.username = username
        self.refused_hint = refused_hint

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Mapping[str, Any] | None = None,
        tolerate: frozenset[str] = frozenset(),
    ) -> dict[str, Any] | None:
        """The JSON answer; None when MLflow answered an error code in `tolerate`."""
        try:
            response = self.client.request(method, path, params=params, json=json)
        except httpx.HTTPError as exc:
            raise BootstrapFailed(
                f"MLflow at {self.client.base_url} cannot be reached: {exc}"
            ) from exc
        if response.status_code == 401:
            raise ConfigurationError(
                f"MLflow refused the password of user {self.username!r}{self.refused_hint}"
            )
        if response.status_code == 200:
            body = response.json() if response.content else {}
            return body if isinstance(body, dict) else {}
        error_code, message = _error(response)
        if error_code in tolerate:
            return None
        raise BootstrapFailed(
            f"MLflow answered {response.status_code} {error_code} to {method} {path}: {message}"
        )

    def check_is_admin(self) -> None:
        current = self.call("GET", f"{_USERS}/current") or {}
        if not current.get("user", {}).get("is_admin"):
            raise ConfigurationError(
                f"MLflow user {self.username!r} is not an admin: it cannot create users"
            )

    def user(self, username: str) -> dict[str, Any] | None:
        found = self.call(
            "GET", f"{_USERS}/get", params={"username": username}, tolerate=NOT_FOUND_ERRORS
        )
        return None if found is None else dict(found["user"])

    def create_user(self, username: str, password: str) -> bool:
        """Create the user; False when another bootstrap created it first."""
        created = self.call(
            "POST",
            f"{_USERS}/create",
            json={"username": username, "password": password},
            tolerate=frozenset({"RESOURCE_ALREADY_EXISTS"}),
        )
        return created is not None

    def set_password(self, username: str, password: str) -> None:
        self.call(
            "PATCH", f"{_USERS}/update-password", json={"username": username, "password": password}
        )

    def revoke_admin(self, username: str) -> None:
        self.call("PATCH", f"{_USERS}/update-admin", json={"username": username, "is_admin": False})

    def direct_grants(self, username: str, user_id: int) -> Grants:
        """The user's own grants (those the grant API writes), not those of roles it holds."""
        listing = self.call("GET", f"{_PERMISSIONS}/list", params={"username": username}) or {}
        own_role = f"__user_{user_id}__"
        return {
            (row["resource_type"], row["resource_pattern"]): row["permission"]
            for row in listing.get("permissions", [])
            if row.get("role_name") == own_role
        }

    def grant(self, username: str, key: GrantKey, permission: str) -> None:
        self.call(
            "POST",
            f"{_PERMISSIONS}/grant",
            json={
                "username": username,
                "resource_type": key[0],
                "resource_id": key[1],
                "permission": permission,
            },
        )

    def revoke(self, username: str, key: GrantKey) -> None:
        self.call(
            "POST",
            f"{_PERMISSIONS}/revoke",
            json={"username": username, "resource_type": key[0], "resource_id": key[1]},
            tolerate=NOT_FOUND_ERRORS,
        )

    def experiment_id(self, name: str) -> str | None:
        found = self.call(
            "GET",
            f"{_EXPERIMENTS}/get-by-name",
            params={"experiment_name": name},
            tolerate=NOT_FOUND_ERRORS,
        )
        return None if found is None else str(found["experiment"]["experiment_id"])

    def registered_model_exists(self, name: str) -> bool:
        found = self.call(
            "GET", f"{_REGISTERED_MODELS}/get", params={"name": name}, tolerate=NOT_FOUND_ERRORS
        )
        return found is not None


def _set_up_access(
    admin: MlflowAs, passwords: Mapping[str, str], experiment: str, outcome: Outcome
) -> None:
    admin.check_is_admin()
    user_ids: dict[str, int] = {}
    for username, password in passwords.items():
        user_ids[username] = _ensure_user(admin, username, password, outcome)
    experiment_id = _ensure_owned_by_trainer(admin, passwords[TRAINER_USER], experiment)
    plan = planned_grants(experiment_id)
    # Every key any user is planned to hold: on these, each user holds exactly its plan, so a
    # grant that MLflow gave a creator (MANAGE) or that was made by hand is set right too.
    managed = {key for grants in plan.values() for key in grants}
    for username, wanted in plan.items():
        held = admin.direct_grants(username, user_ids[username])
        for key in sorted(managed):
            want, have = wanted.get(key), held.get(key)
            if want == have:
                continue
            if have is not None:
                admin.revoke(username, key)
            if want is not None:
                admin.grant(username, key, want)
            outcome.changed_grants.append(f"{username} {key[0]} {key[1]}: {have} -> {want}")


def _ensure_user(admin: MlflowAs, username: str, password: str, outcome: Outcome) -> int:
    user = admin.user(username)
    if user is None and admin.create_user(username, password):
        outcome.created_users.append(username)
    else:
        if not _authenticates(admin.client.base_url, username, password):
            admin.set_password(username, password)
            outcome.updated_passwords.append(username)
    user = admin.user(username)
    if user is None:
        raise BootstrapFailed(f"MLflow user {username!r} vanished while it was being set up")
    if user.get("is_admin"):
        # A service user must hold only its grants; an admin bypasses every check.
        admin.revoke_admin(username)
        outcome.changed_grants.append(f"{username}: admin -> not admin")
    return int(user["id"])


def _authenticates(base_url: httpx.URL, username: str, password: str) -> bool:
    response = _request(
        httpx.Client(base_url=base_url, auth=(username, password), timeout=HTTP_TIMEOUT_S),
        "GET",
        f"{_USERS}/current",
    )
    return response.status_code == 200


def _ensure_owned_by_trainer(admin: MlflowAs, trainer_password: str, experiment: str) -> str:
    """The experiment's id, after making it and the registered models exist; what is missing
    is created as the trainer, so that the trainer owns it."""
    with httpx.Client(
        base_url=admin.client.base_url,
        auth=(TRAINER_USER, trainer_password),
        timeout=HTTP_TIMEOUT_S,
    ) as client:
        trainer = MlflowAs(client, TRAINER_USER)
        if admin.experiment_id(experiment) is None:
            trainer.call(
                "POST",
                f"{_EXPERIMENTS}/create",
                json={"name": experiment},
                tolerate=frozenset({"RESOURCE_ALREADY_EXISTS"}),
            )
        for name in REGISTERED_MODELS:
            if not admin.registered_model_exists(name):
                trainer.call(
                    "POST",
                    f"{_REGISTERED_MODELS}/create",
                    json={"name": name},
                    tolerate=frozenset({"RESOURCE_ALREADY_EXISTS"}),
                )
    experiment_id = admin.experiment_id(experiment)
    if experiment_id is None:
        raise BootstrapFailed(f"MLflow experiment {experiment!r} could not be created")
    return experiment_id


def _experiment_name(settings: TrainerSettings) -> str:
    from iris_trainer.pipeline.params import InvalidParamsError, load_params

    try:
        return load_params(settings.path(settings.params_file)).mlflow.experiment
    except InvalidParamsError as exc:
        raise ConfigurationError(str(exc)) from exc


def _models_without_production(
    uri: str, auth: tuple[str, str] | None, outcome: Outcome
) -> list[str]:
    missing = []
    with httpx.Client(base_url=uri, auth=auth, timeout=HTTP_TIMEOUT_S) as client:
        for name in REGISTERED_MODELS:
            try:
                response = client.get(
                    f"{_REGISTERED_MODELS}/alias", params={"name": name, "alias": PRODUCTION}
                )
            except httpx.HTTPError as exc:
                raise BootstrapFailed(f"MLflow at {uri} cannot be reached: {exc}") from exc
            if response.status_code == 200:
                outcome.production[name] = str(response.json()["model_version"]["version"])
                continue
            error_code, message = _error(response)
            if error_code not in NOT_FOUND_ERRORS:
                raise BootstrapFailed(
                    f"MLflow answered {response.status_code} {error_code} when asked for "
                    f"{name}@{PRODUCTION}: {message}"
                )
            missing.append(name)
    return missing


def _train(
    settings: TrainerSettings, auth: tuple[str, str] | None, say: Callable[[str], None]
) -> None:
    from mlflow.exceptions import MlflowException

    from iris_trainer.pipeline.run import TrainingRefused, train_from_settings

    if auth is not None:
        # MLflow's client takes credentials from these variables only; this process trains
        # as the trainer whatever the environment said.
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = auth
    try:
        result = train_from_settings(
            settings,
            on_progress=lambda p: say(
                f"[{p.step}/{p.total_steps}] {p.stage.value}"
                + (f" {p.model_name}" if p.model_name else "")
            ),
        )
    except TrainingRefused as exc:
        raise BootstrapFailed(f"the baseline could not be trained: {exc}") from exc
    except MlflowException as exc:
        raise BootstrapFailed(
            f"MLflow at {settings.mlflow_tracking_uri} refused a training request: {exc}"
        ) from exc
    except OSError as exc:
        raise BootstrapFailed(
            f"cannot reach MLflow at {settings.mlflow_tracking_uri}: {exc}"
        ) from exc
    for name, model in result.models.items():
        say(f"{name} v{model.version}: gate {model.gate} ({', '.join(model.aliases_set) or '-'})")


def _error(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "UNKNOWN", response.text[:200]
    if not isinstance(body, dict):
        return "UNKNOWN", response.text[:200]
    return str(body.get("error_code", "UNKNOWN")), str(body.get("message", ""))[:300]


def _access_summary(outcome: Outcome) -> str:
    if not outcome.changed_access:
        return "MLflow requires credentials: users and grants already as planned, nothing changed"
    parts = []
    if outcome.created_users:
        parts.append(f"created users {', '.join(outcome.created_users)}")
    if outcome.updated_passwords:
        parts.append(f"set new passwords of {', '.join(outcome.updated_passwords)}")
    if outcome.changed_grants:
        parts.append(f"{len(outcome.changed_grants)} grants set")
    return "MLflow requires credentials: " + "; ".join(parts)
