"""Run the stack in containers: `make compose-up`, `make compose-down`, `make compose-smoke`.

The engine, the compose command and the compose files are the ones `make images` chose
(scripts/images.sh: docker, else podman; compose.offline.yaml where no registry answers).

    up       write the secrets, start compose.yaml (PREDICTORS and WORKERS replicas), wait until
             the bootstrap has a production model and the gateway is ready; print the URLs
    down     stop and remove the containers; the volumes (registry, jobs, logs) stay
    secrets  write the secret files compose.yaml names (.state/compose/secrets/)
    smoke    the README's workflow against the containers only, on a project of its own

Secrets: the ones a person uses (API_TOKEN, COMPOSE_MLFLOW_ADMIN_PASSWORD, POSTGRES_PASSWORD,
GRAFANA_ADMIN_PASSWORD) live in .env, generated when missing as `make up` does; the services'
own passwords (Redis and MLflow users) are made in the secrets folder and never leave it. The
Redis ACL file and MLflow's auth configuration are derived from them on every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml
from dotenv import dotenv_values, set_key, unset_key

from iris_shared.redis_acl import USERS as REDIS_USERS
from iris_shared.redis_acl import acl_file

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = ROOT / ".env"
SECRETS_DIR = ROOT / ".state" / "compose" / "secrets"
# compose.yaml's JOBS_NAMESPACE (infra/env/*.env): one deployment per Redis in containers.
NAMESPACE = "iris"
MLFLOW_USERS = ("trainer", "gateway", "predictor")
PROJECT = "iris-mlops"
DEFAULT_PORTS = {
    "gateway": 8002,
    "prometheus": 9090,
    "flower": 5555,
    "alertmanager": 9093,
    "grafana": 3000,
}
# What .env holds for people: the gateway's token and the passwords of what they log in to.
# The MLflow admin's is compose's own: under MLFLOW_ADMIN_PASSWORD, `make up`'s bootstrap would
# read it too and require an MLflow with logins, which the local stack's is not.
PERSON_SECRETS = (
    "API_TOKEN",
    "COMPOSE_MLFLOW_ADMIN_PASSWORD",
    "POSTGRES_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
)
# Where earlier versions kept COMPOSE_MLFLOW_ADMIN_PASSWORD in .env: moved on the next run.
FORMER_NAMES = {"MLFLOW_ADMIN_PASSWORD": "COMPOSE_MLFLOW_ADMIN_PASSWORD"}


def say(message: str) -> None:
    print(f"[compose] {message}", flush=True)


# --- secrets -----------------------------------------------------------------------------------


def person_secrets() -> dict[str, str]:
    """The secrets people use, from .env (readable by its owner only), made when missing."""
    ENV_FILE.touch(mode=0o600)
    ENV_FILE.chmod(0o600)
    present = dotenv_values(ENV_FILE)
    for former, name in FORMER_NAMES.items():
        if present.get(former) and not present.get(name):
            set_key(ENV_FILE, name, str(present[former]), quote_mode="never")
            unset_key(ENV_FILE, former)
            say(f"moved {former} to {name} in {ENV_FILE.name} (make up reads the former)")
            present = dotenv_values(ENV_FILE)
    values = {}
    for name in PERSON_SECRETS:
        value = (os.environ.get(name) or present.get(name) or "").strip()
        if not value:
            value = secrets.token_urlsafe(32)
            set_key(ENV_FILE, name, value, quote_mode="never")
            say(f"wrote a new {name} to {ENV_FILE.name}")
        values[name] = value
    return values


def _password(folder: Path, name: str) -> str:
    path = folder / name
    if not path.exists():
        _write(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def _write(path: Path, content: str) -> None:
    # Readable inside the containers, whose users are not this one: the folder is what keeps
    # other users of this machine out.
    path.write_text(content)
    path.chmod(0o644)


def mlflow_auth_config(admin_password: str) -> str:
    """MLflow's basic-auth configuration: nothing for a user without a grant, the admin made on
    the first start, the user store on its own volume."""
    return (
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        "database_uri = sqlite:////mlflow/auth/basic_auth.db\n"
        "admin_username = admin\n"
        f"admin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # A minute's cache of checked credentials: each check is a deliberately slow hash.
        "auth_cache_ttl_seconds = 60\n"
    )


def write_secrets(folder: Path, people: Mapping[str, str]) -> None:
    """Every secret file compose.yaml names, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    _write(folder / "api_token", people["API_TOKEN"])
    _write(folder / "postgres_password", people["POSTGRES_PASSWORD"])
    _write(folder / "grafana_admin_password", people["GRAFANA_ADMIN_PASSWORD"])
    admin_password = people["COMPOSE_MLFLOW_ADMIN_PASSWORD"]
    _write(folder / "mlflow_admin_password", admin_password)
    _write(folder / "mlflow_auth_config", mlflow_auth_config(admin_password))
    for user in MLFLOW_USERS:
        _password(folder, f"mlflow_{user}_password")
    # Signs the MLflow UI's sessions (its Flask app); the server refuses to start without it.
    _password(folder, "mlflow_flask_secret_key")
    redis_passwords = {user: _password(folder, f"redis_{user}_password") for user in REDIS_USERS}
    _write(folder / "redis_acl", acl_file(NAMESPACE, redis_passwords))
    # redis_exporter's password file: the address it scrapes -> the password.
    exporter = {"redis://redis:6379": redis_passwords["exporter"]}
    _write(folder / "redis_exporter_passwords", json.dumps(exporter))


# --- the engine --------------------------------------------------------------------------------

# SIGKILL's exit status: the engine gave up waiting for a container to stop.
KILLED = 137
# compose's stop_grace_period when a service sets none.
DEFAULT_GRACE_S = 10


def grace_seconds(spec: Mapping[str, Any]) -> int:
    """A service's stop_grace_period in whole seconds (compose durations: 30s, 1m30s, 500ms)."""
    period = str(spec.get("stop_grace_period", f"{DEFAULT_GRACE_S}s"))
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", period)
    if not parts or "".join(number + unit for number, unit in parts) != period:
        raise ValueError(f"not a compose duration: {period!r}")
    return math.ceil(sum(float(number) * units[unit] for number, unit in parts))


def stop_order(services: Mapping[str, Any]) -> list[list[str]]:
    """compose.yaml's services in the order to stop them, a layer at a time: each layer is the
    services none of those left depends on (the gateway before the predictor, every user of
    Redis, MLflow and PostgreSQL before them)."""
    needs = {name: set(spec.get("depends_on") or ()) for name, spec in services.items()}
    layers, left = [], set(needs)
    while left:
        layer = sorted(left - set().union(*(needs[name] for name in left)))
        if not layer:
            raise ValueError(f"compose.yaml's depends_on has a cycle among {sorted(left)}")
        layers.append(layer)
        left -= set(layer)
    return layers


class Compose:
    """compose and the engine, as `make images` chose them, for one compose project."""

    def __init__(self, project: str, env: Mapping[str, str] | None = None) -> None:
        self.project = project
        chosen = subprocess.run(
            ["bash", "scripts/images.sh", "env"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        self.env = {**os.environ, **_exports(chosen), **(env or {})}
        self.engine = self.env["ENGINE"]

    def run(self, *args: str, check: bool = True, capture: bool = False) -> str:
        command = [*shlex.split(self.env["COMPOSE"]), "-p", self.project, *args]
        result = subprocess.run(
            command, cwd=ROOT, env=self.env, capture_output=capture, text=True, check=False
        )
        if check and result.returncode != 0:
            detail = f"\n{result.stdout}\n{result.stderr}" if capture else ""
            raise SystemExit(
                f"[compose] `{' '.join(command)}` failed ({result.returncode}){detail}"
            )
        return result.stdout if capture else ""

    def engine_run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.engine, *args], cwd=ROOT, env=self.env, capture_output=True, text=True
        )
        if check and result.returncode != 0:
            raise SystemExit(f"[compose] `{self.engine} {' '.join(args)}` failed: {result.stderr}")
        return result

    def containers(self, service: str, all_states: bool = False) -> list[str]:
        """The names of `service`'s containers in this project."""
        listing = self.engine_run(
            "ps",
            *(["-a"] if all_states else []),
            "--filter",
            f"label=com.docker.compose.project={self.project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
            "--format",
            "{{.Names}}",
        ).stdout
        return sorted(name for name in listing.split() if name)

    def exit_code(self, container: str) -> int | None:
        state = self.engine_run(
            "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", container
        ).stdout.split()
        return int(state[1]) if state and state[0] == "exited" else None

    def stop_in_order(self) -> dict[str, int | None]:
        """Stop the project's containers a layer of `stop_order` at a time, a layer's together,
        each with its own grace period (stop_grace_period); how each exited.

        docker compose does both itself. podman-compose 1.0.3 stops one container at a time in
        no such order, and without stop_grace_period (podman's default, 10 s, is the worker's
        whole soft shutdown): a worker stopped after Redis spends its grace period resolving a
        name that is gone, and one stopped in time is SIGKILLed as it hands its job back.
        """
        services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
        exits: dict[str, int | None] = {}
        for layer in stop_order(services):
            by_grace: dict[int, list[str]] = {}
            for service in layer:
                grace = grace_seconds(services[service])
                by_grace.setdefault(grace, []).extend(self.containers(service))
            # Each grace period's containers in one `stop`, every stop of the layer at once.
            stops = [
                subprocess.Popen(
                    [self.engine, "stop", "--time", str(grace), *names],
                    cwd=ROOT,
                    env=self.env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for grace, names in by_grace.items()
                if names
            ]
            for stop in stops:
                stop.communicate()
            stopped = [name for names in by_grace.values() for name in names]
            exits |= {name: self.exit_code(name) for name in stopped}
        return exits

    def down(self) -> dict[str, int | None]:
        """Stop in dependency order (`stop_in_order`), then remove the containers; the volumes
        stay."""
        exits = self.stop_in_order()
        self.run("down")
        return exits

    def exec(self, container: str, *command: str) -> str:
        return self.engine_run("exec", container, *command).stdout

    def remove_everything(self) -> None:
        """`down --volumes`, then whatever an engine's compose left of the project behind it
        (podman-compose's pod, a container a failed `up` never attached, volumes, networks)."""
        self.stop_in_order()
        self.run("down", "--volumes", "--remove-orphans", check=False, capture=True)
        label = f"label=com.docker.compose.project={self.project}"
        for kind in ("container", "volume", "network"):
            listing = self.engine_run(
                kind,
                "ls",
                "-q",
                *(["-a"] if kind == "container" else []),
                "--filter",
                label,
                check=False,
            ).stdout.split()
            if listing:
                force = ["-f"] if kind != "network" else []
                self.engine_run(kind, "rm", *force, *listing, check=False)
        if self.engine == "podman":
            self.engine_run("pod", "rm", "-f", "--ignore", f"pod_{self.project}", check=False)


def _exports(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            found[name] = value
    return found


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `check()` held; exits when it does not within `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if check():
                return time.monotonic() - started
        except (httpx.HTTPError, OSError, ValueError):
            pass
        time.sleep(1)
    raise SystemExit(f"[compose] {what}: not within {timeout:.0f} s")


def http_ok(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=3).status_code == 200


# --- up and down ------------------------------------------------------------------------------


def ports() -> dict[str, int]:
    configured = {**dotenv_values(ENV_FILE), **os.environ} if ENV_FILE.exists() else os.environ
    return {
        name: int(configured.get(f"COMPOSE_{name.upper()}_PORT") or default)
        for name, default in DEFAULT_PORTS.items()
    }


def start(compose: Compose, predictors: int, workers: int, timeout: float = 600) -> None:
    """compose up with the replicas asked for; returns once a production model is served."""
    # compose.yaml's deploy.replicas read these (podman-compose takes one --scale only).
    compose.env.update(PREDICTORS=str(predictors), WORKERS=str(workers))
    compose.run("up", "-d")
    gateway = f"http://127.0.0.1:{compose.env.get('COMPOSE_GATEWAY_PORT', '8002')}"

    def bootstrapped() -> bool:
        [container] = compose.containers("bootstrap", all_states=True) or [""]
        code = compose.exit_code(container) if container else None
        if code not in (None, 0):
            logs = compose.engine_run("logs", "--tail", "30", container, check=False)
            raise SystemExit(f"[compose] bootstrap failed ({code}):\n{logs.stdout}{logs.stderr}")
        return code == 0

    took = wait_for(bootstrapped, timeout, "the bootstrap (first model trained and promoted)")
    say(f"registry ready ({took:.0f} s)")
    wait_for(http_ok(f"{gateway}/readyz"), timeout, "the gateway's /readyz")


def up(predictors: int, workers: int) -> None:
    write_secrets(SECRETS_DIR, person_secrets())
    subprocess.run(
        [str(Path(sys.executable).parent / "iris-mlops"), "data", "bootstrap"], cwd=ROOT, check=True
    )
    chosen = ports()
    compose = Compose(
        PROJECT,
        {
            "COMPOSE_SECRETS_DIR": str(SECRETS_DIR),
            **{f"COMPOSE_{name.upper()}_PORT": str(port) for name, port in chosen.items()},
        },
    )
    start(compose, predictors, workers)
    grafana = (
        "not run: it has no image without a registry (Prometheus has every metric)"
        if compose.env.get("IMAGES_OFFLINE") == "yes"
        else f"http://127.0.0.1:{chosen['grafana']} (admin / GRAFANA_ADMIN_PASSWORD in .env)"
    )
    print(
        f"""
The stack is up in containers: {compose.engine}, {predictors} predictor(s), {workers} worker(s).
  gateway       http://localhost:{chosen["gateway"]}  (API docs: /docs; API_TOKEN in .env)
  Prometheus    http://127.0.0.1:{chosen["prometheus"]}
  Alertmanager  http://127.0.0.1:{chosen["alertmanager"]}
  Flower        http://127.0.0.1:{chosen["flower"]}
  Grafana       {grafana}
  MLflow        not published (one door to production)
                admin / COMPOSE_MLFLOW_ADMIN_PASSWORD in .env
  logs          bash scripts/images.sh compose -p {PROJECT} logs -f
"""
    )


def down() -> None:
    Compose(PROJECT, {"COMPOSE_SECRETS_DIR": str(SECRETS_DIR)}).down()
    say("stopped; the volumes (registry, jobs, prediction logs) are kept")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "secrets", "smoke"])
    arguments = parser.parse_args()
    predictors = int(os.environ.get("PREDICTORS") or 1)
    workers = int(os.environ.get("WORKERS") or 1)
    if arguments.command == "up":
        up(predictors, workers)
    elif arguments.command == "down":
        down()
    elif arguments.command == "secrets":
        write_secrets(SECRETS_DIR, person_secrets())
        say(f"secrets written to {SECRETS_DIR}")
    else:
        from compose_smoke import smoke

        sys.exit(smoke())


if __name__ == "__main__":
    main()
