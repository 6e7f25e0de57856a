"""A second local stack, the benchmark's: `python -m iris_devstack up` with its own state
folder, free ports, a private Redis and a random API token, so a stack from `make up` is left
alone.

The process that prepares it carries the stack's environment (`PrivateStack.prepare`): then
`up`, run as a child, and the supervisorctl calls made from here see exactly the settings the
services were started with.

Its predictor runs from a venv of the predictor's own dependencies, as the predictor's image
installs them (`predictor_only_venv`): in the project's dev venv, scikit-learn and skops also
import the optional packages they find there (pandas, pytest, ...), and the benchmark would
measure a heavier process than the one users deploy.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import SecretStr

from iris_devstack.processes import (
    REPO_ROOT,
    ManagedProcess,
    free_port,
    log_tail,
    start_process,
    wait_until,
)
from iris_devstack.redis import redis_answers, redis_server_args, write_private_file
from iris_devstack.stack import Stack, say
from iris_shared.registry import LOGISTIC_REGRESSION as MODEL
from iris_shared.settings import with_password

UP = [sys.executable, "-m", "iris_devstack"]


class StackError(RuntimeError):
    pass


def predictor_only_venv(target: Path) -> Path:
    """`target` made a venv of the locked dependencies of iris-predictor only (no dev group),
    the project's own packages installed editable, as `uv sync` makes them."""
    uv = shutil.which("uv")
    if uv is None:
        raise StackError("uv is not on PATH (make install puts it there)")
    completed = subprocess.run(
        [uv, "sync", "--frozen", "--no-dev", "--package", "iris-predictor", "--compile-bytecode"],
        cwd=REPO_ROOT,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(target)},
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise StackError(f"the predictor's venv could not be made:\n{completed.stderr[-2000:]}")
    return target


@dataclass
class PrivateStack:
    work: Path
    token: str
    mlflow_url: str
    predictor_url: str
    gateway_url: str
    redis_port: int
    stack: Stack
    redis: ManagedProcess | None = None
    redis_command: list[str] | None = None

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    @property
    def state(self) -> Path:
        return self.work / "state"

    @property
    def redis_url(self) -> str:
        """The private Redis's URL, password included (for this process's own clients)."""
        return with_password(
            f"redis://127.0.0.1:{self.redis_port}/0", SecretStr(os.environ["REDIS_PASSWORD"])
        )

    @classmethod
    def prepare(cls, work: Path) -> PrivateStack:
        """Choose ports and a token, and put them in this process's environment."""
        names = ("mlflow", "predictor", "gateway", "prometheus", "flower", "alertmanager")
        ports = {name: free_port() for name in (*names, "redis_exporter")}
        redis_port = free_port()
        token = secrets.token_urlsafe(32)
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        state = work / "state"
        os.environ.update(
            {f"STACK_{name.upper()}_PORT": str(port) for name, port in ports.items()},
            STACK_STATE_DIR=str(state),
            REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
            # Set outright, as make up's own Redis has one: a user's .env may hold theirs.
            REDIS_PASSWORD=secrets.token_urlsafe(32),
            API_TOKEN=token,
            # Set outright: a user's .env may point these at their own stack.
            MLFLOW_TRACKING_URI=urls["mlflow"],
            GATEWAY_PREDICTOR_URL=urls["predictor"],
            PREDICTOR_CACHE_DIR=str(state / "predictor" / "model-cache"),
            PREDICTOR_PREDICTION_LOG_DIR=str(state / "predictor" / "prediction-logs"),
            TRAINER_REPORTS_DIR=str(work / "reports"),
            MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
            STACK_PREDICTOR_VENV=str(predictor_only_venv(work / "predictor-venv")),
            # mlflow models serve looks uvicorn up on PATH.
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        return cls(
            work=work,
            token=token,
            mlflow_url=urls["mlflow"],
            predictor_url=urls["predictor"],
            gateway_url=urls["gateway"],
            redis_port=redis_port,
            stack=Stack.from_env(),
        )

    def stack_env(self) -> dict[str, str]:
        """The environment the stack gives supervisord: defaults, .env, then ours."""
        return self.stack.env()

    def start_redis(self, durable: bool = False) -> None:
        """Start the private Redis; `durable` as supervisord's (every write appended to a file
        synced once a second), so that a restart keeps the jobs. Otherwise nothing saved,
        nothing appended: the benchmark's data is throwaway."""
        folder = self.work / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "redis.conf"
        # Capped without eviction, as make up's own Redis is (Stack.write_redis_config).
        write_private_file(
            config,
            f"requirepass {os.environ['REDIS_PASSWORD']}\n"
            "maxmemory 512mb\nmaxmemory-policy noeviction\n",
        )
        try:
            self.redis_command = redis_server_args(
                self.redis_port, folder, durable=durable, config=config
            )
        except RuntimeError as exc:
            raise StackError(str(exc)) from None
        self._launch_redis()

    def restart_redis(self) -> dict[str, float | int | None]:
        """SIGTERM Redis, wait for it to exit, start it again on the same data folder; the
        seconds each step took and the exit code of the stopped server."""
        assert self.redis is not None
        started = time.monotonic()
        self.redis.stop()
        stopped = time.monotonic()
        exit_code = self.redis.popen.returncode
        self._launch_redis()
        answering = time.monotonic()
        return {
            "stop_s": round(stopped - started, 3),
            "start_s": round(answering - stopped, 3),
            "down_s": round(answering - started, 3),
            "exit_code": exit_code,
        }

    def _launch_redis(self) -> None:
        assert self.redis_command is not None
        self.redis = start_process("redis", self.redis_command, dict(os.environ), self.logs)
        try:
            wait_until(lambda: redis_answers(self.redis_url), 15, "redis", self.redis)
        except (TimeoutError, RuntimeError) as exc:
            raise StackError(f"Redis did not start: {exc}") from None

    def up(self, attempts: int = 2) -> None:
        """`python -m iris_devstack up`; once more if it gives up waiting, which a busy machine
        can make it do while the services are still starting (up is idempotent)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / "stack-up.log"
        for attempt in range(1, attempts + 1):
            with log.open("ab") as out:
                completed = subprocess.run(
                    [*UP, "up"], cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, check=False
                )
            if completed.returncode == 0:
                return
            tail = log_tail(log)
            failed = f"python -m iris_devstack up failed (exit {completed.returncode})"
            if attempt == attempts:
                raise StackError(f"{failed}:\n{tail}")
            say(f"{failed}; trying again")

    def down(self) -> None:
        try:
            subprocess.run(
                [*UP, "down"], cwd=REPO_ROOT, capture_output=True, check=False, timeout=180
            )
        finally:
            if self.redis is not None:
                self.redis.stop()

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.stack.supervisorctl(self.stack_env(), *args, check=False)

    def pid(self, program: str) -> int | None:
        """The program's pid; for a program run as replicas (numprocs, the predictor), the
        first replica's, which is the one the benchmark drives directly."""
        for name in (program, f"{program}:{program}-0"):
            answer = self.supervisorctl("pid", name).stdout.strip()
            if answer.isdigit() and answer != "0":
                return int(answer)
        return None

    def production_version(self) -> str:
        response = httpx.get(
            f"{self.mlflow_url}/api/2.0/mlflow/registered-models/alias",
            params={"name": MODEL, "alias": "production"},
            timeout=10,
        )
        response.raise_for_status()
        return str(response.json()["model_version"]["version"])

    def latest_version(self) -> str:
        response = httpx.get(
            f"{self.mlflow_url}/api/2.0/mlflow/model-versions/search",
            params={"filter": f"name='{MODEL}'"},
            timeout=10,
        )
        response.raise_for_status()
        return str(max(int(v["version"]) for v in response.json()["model_versions"]))

    def move_production_alias(self, version: str) -> None:
        response = httpx.post(
            f"{self.mlflow_url}/api/2.0/mlflow/registered-models/alias",
            json={"name": MODEL, "alias": "production", "version": version},
            timeout=10,
        )
        response.raise_for_status()
