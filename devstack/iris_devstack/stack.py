"""Run the whole stack locally as plain processes: `make up`, `make down`, `make status`.

supervisord (infra/local/supervisord.conf) keeps MLflow, the trainer worker, the predictor,
the gateway and, when needed, Redis and Prometheus alive; this decides what to start,
bootstraps data and the baseline model, and waits until every service is ready. State and logs
live in .state/ (git-ignored), or in STACK_STATE_DIR when set (an absolute path, or one relative
to the repository), so a second stack such as `make bench`'s can run beside the first. Running
`up` twice changes nothing; `down` stops only what `up` started, so a Redis that was already
answering keeps running.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
from dotenv import dotenv_values, set_key

from iris_devstack.processes import REPO_ROOT, http_ok, log_tail, wait_until
from iris_devstack.redis import redis_answers, redis_server_binary, write_private_file

# A first start on a busy two-core machine (MLflow creating its tables, every service importing
# scikit-learn at once) has taken close to two minutes; a broken one still fails in minutes.
STARTUP_TIMEOUT_S = 300

DEFAULTS = {
    # The stack's own Redis (password, memory limit, append-only file), unless REDIS_URL names
    # another; see GENERATED_SETTINGS.
    "STACK_REDIS_PORT": "6380",
    "STACK_REDIS_MAXMEMORY": "512mb",
    "STACK_MLFLOW_PORT": "5002",
    "STACK_MLFLOW_WORKERS": "1",
    "STACK_PREDICTOR_PORT": "8001",
    # Predictor replicas, on consecutive ports from STACK_PREDICTOR_PORT.
    "STACK_PREDICTORS": "1",
    "STACK_GATEWAY_PORT": "8002",
    "STACK_PROMETHEUS_PORT": "9090",
    # Monitoring: Flower (the retrain jobs' metrics), and where installed, Alertmanager and
    # redis_exporter. infra/prometheus/prometheus.local.yml scrapes these defaults.
    "STACK_FLOWER_PORT": "5555",
    "STACK_ALERTMANAGER_PORT": "9093",
    "STACK_REDIS_EXPORTER_PORT": "9121",
    # make up writes a unique one to .env (see GENERATED_SETTINGS); this is the services' default.
    "JOBS_NAMESPACE": "iris",
    # Service logs are JSON lines: keep MLflow's progress bars and run-URL prints out of them.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # MLflow's server-side job runners serve GenAI features this stack does not use.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}

# What .env holds per deployment, made on first run when neither .env nor the environment sets
# it: the gateway's token (for curl and the CLI), the passwords compose.yaml requires, the
# jobs namespace, so that two stacks sharing one Redis never run each other's jobs, and, unless
# REDIS_URL names a Redis of the user's, the address and password of the stack's own Redis
# (the CLI finds the running stack's Redis through them).
GENERATED_SETTINGS: dict[str, Callable[[], str]] = {
    "API_TOKEN": lambda: secrets.token_urlsafe(32),
    "POSTGRES_PASSWORD": lambda: secrets.token_urlsafe(32),
    "GRAFANA_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(32),
    "COMPOSE_MLFLOW_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(32),
    "JOBS_NAMESPACE": lambda: f"iris-{secrets.token_hex(4)}",
}

# Started where Debian's packages are installed; scripts/ensure_tools.sh installs them.
OPTIONAL_PROGRAMS = {
    "prometheus": "prometheus",
    "alertmanager": "prometheus-alertmanager",
    "redis-exporter": "prometheus-redis-exporter",
}


def say(message: str) -> None:
    print(f"[stack] {message}", flush=True)


def _configured(name: str, present: dict[str, str | None]) -> bool:
    return bool((present.get(name) or "").strip() or os.environ.get(name))


def predictor_urls(env: dict[str, str]) -> list[str]:
    first = int(env["STACK_PREDICTOR_PORT"])
    return [f"http://127.0.0.1:{first + i}" for i in range(int(env["STACK_PREDICTORS"]))]


@dataclass(frozen=True)
class Stack:
    """One local stack: the checkout it runs (its .env, its supervisord.conf), where its state
    and logs live, and the venv whose programs it runs."""

    root: Path
    state: Path
    venv: Path

    @classmethod
    def from_env(cls, root: Path = REPO_ROOT) -> Stack:
        """The stack of `root`, its state in STACK_STATE_DIR (read now) or `root`/.state."""
        state = root / (os.environ.get("STACK_STATE_DIR") or ".state")
        return cls(root=root, state=state, venv=Path(sys.executable).parent.parent)

    @property
    def conf(self) -> Path:
        return self.root / "infra" / "local" / "supervisord.conf"

    @property
    def env_file(self) -> Path:
        return self.root / ".env"

    def ensure_generated_settings(self) -> None:
        """Write the missing per-deployment settings to .env, readable by its owner only."""
        self.env_file.touch(mode=0o600)
        # touch keeps the mode of an existing file, e.g. 644 from `cp .env.example .env`.
        self.env_file.chmod(0o600)
        present = dotenv_values(self.env_file)
        generated = dict(GENERATED_SETTINGS)
        # Where the predictor writes its log, for `iris-mlops report drift` to find it.
        log_dir = self.state / "predictor" / "prediction-logs"
        generated["PREDICTOR_PREDICTION_LOG_DIR"] = lambda: str(
            log_dir.relative_to(self.root) if log_dir.is_relative_to(self.root) else log_dir
        )
        if not _configured("REDIS_URL", present):
            port = (
                os.environ.get("STACK_REDIS_PORT")
                or present.get("STACK_REDIS_PORT")
                or DEFAULTS["STACK_REDIS_PORT"]
            )
            generated["REDIS_URL"] = lambda: f"redis://127.0.0.1:{port}/0"
            generated["REDIS_PASSWORD"] = lambda: secrets.token_urlsafe(32)
        for name, generate in generated.items():
            if _configured(name, present):
                continue
            # set_key replaces an empty `NAME=` line (as copied from .env.example) in place.
            set_key(self.env_file, name, generate(), quote_mode="never")
            say(f"wrote a new {name} to {self.env_file.name}")

    def env(self) -> dict[str, str]:
        """Defaults, then .env, then the environment (which wins, as in the services' settings)."""
        from_file = dotenv_values(self.env_file) if self.env_file.exists() else {}
        configured = {k: v for k, v in {**from_file, **os.environ}.items() if v}
        defaults = {
            **DEFAULTS,
            "PREDICTOR_CACHE_DIR": str(self.state / "predictor" / "model-cache"),
            "PREDICTOR_PREDICTION_LOG_DIR": str(self.state / "predictor" / "prediction-logs"),
            "TRAINER_REPO_ROOT": str(self.root),
        }
        env = {**defaults, **configured}
        # Where clients find MLflow and the predictor follows from the ports, unless set outright.
        env.setdefault("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{env['STACK_MLFLOW_PORT']}")
        env.setdefault("GATEWAY_PREDICTOR_URL", ",".join(predictor_urls(env)))
        env.setdefault("REDIS_URL", f"redis://127.0.0.1:{env['STACK_REDIS_PORT']}/0")
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        env.update(
            STACK_ROOT=str(self.root),
            STACK_STATE=str(self.state),
            STACK_VENV=str(self.venv),
            STACK_REDIS_CONF=str(self.state / "redis" / "redis.conf"),
            STACK_REDIS_SERVER=redis_server_binary() or "redis-server",
            STACK_PROMETHEUS=shutil.which("prometheus") or "prometheus",
        )
        env.setdefault("STACK_PREDICTOR_VENV", env["STACK_VENV"])
        return env

    def write_redis_config(self, env: dict[str, str]) -> None:
        """The own Redis's configuration: a file, so that its password is on no command line.

        Its memory is capped and nothing is ever evicted: at the cap, writes fail (a retrain is
        refused with 503) rather than Redis silently dropping a queued job, a job record or an
        idempotency key. The answers kept for feedback have a budget of their own well below it
        (PREDICTOR_STORE_MAX_BYTES), so anonymous traffic never gets there.
        """
        url = urlparse(env["REDIS_URL"])
        lines = [
            f"port {url.port or 6379}",
            "bind 127.0.0.1",
            f"dir {self.state / 'redis'}",
            # Every write to the append-only file, synced once a second: a restart loses at
            # most the last second of the job queue and records.
            'save ""',
            "appendonly yes",
            "appendfsync everysec",
            f"maxmemory {env['STACK_REDIS_MAXMEMORY']}",
            "maxmemory-policy noeviction",
        ]
        if env.get("REDIS_PASSWORD"):
            lines.append(f"requirepass {env['REDIS_PASSWORD']}")
        write_private_file(Path(env["STACK_REDIS_CONF"]), "\n".join(lines) + "\n")

    def supervisorctl(
        self, env: dict[str, str], *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "supervisorctl"), "-c", str(self.conf), *args],
            env=env,
            capture_output=True,
            text=True,
            check=check,
        )

    def supervisord_running(self) -> bool:
        pidfile = self.state / "supervisord.pid"
        try:
            os.kill(int(pidfile.read_text().strip()), 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return False
        return True

    def wait_http(self, url: str, what: str, timeout: float) -> None:
        """Wait for `url` to answer 200; `what` names the supervisord program and its log."""
        try:
            wait_until(http_ok(url), timeout, what, interval=0.5)
        except TimeoutError:
            tail = log_tail(self.state / "logs" / f"{what}.log", 25)
            raise SystemExit(
                f"[stack] {what} not ready at {url} after {timeout:.0f}s\n{tail}"
            ) from None

    def run(self, env: dict[str, str], *args: str) -> None:
        result = subprocess.run(list(args), env=env, cwd=self.root)
        if result.returncode != 0:
            raise SystemExit(
                f"[stack] `{' '.join(args)}` failed with exit code {result.returncode}"
            )

    def up(self) -> None:
        self.ensure_generated_settings()
        env = self.env()
        for folder in ("logs", "redis", "mlflow", "prometheus", "predictor"):
            (self.state / folder).mkdir(parents=True, exist_ok=True)

        say("bootstrapping data/iris.csv from its DVC pointer")
        cli = str(self.venv / "bin" / "iris-mlops")
        self.run(env, cli, "data", "bootstrap")

        if not self.supervisord_running():
            say("starting supervisord")
            self.run(env, str(self.venv / "bin" / "supervisord"), "-c", str(self.conf))
        else:
            self.supervisorctl(env, "update", check=False)
            programs = ("mlflow", "trainer", "predictor:*", "gateway")
            self.supervisorctl(env, "start", *programs, check=False)

        if redis_answers(env["REDIS_URL"]):
            say(f"reusing the Redis that answers at {env['REDIS_URL']}")
            warn_about_reused_redis(env["REDIS_URL"], env.get("REDIS_PASSWORD"))
        elif env["STACK_REDIS_SERVER"] and Path(env["STACK_REDIS_SERVER"]).exists():
            say(f"starting Redis ({env['STACK_REDIS_SERVER']}) for {env['REDIS_URL']}")
            self.write_redis_config(env)
            self.supervisorctl(env, "start", "redis")
            try:
                wait_until(lambda: redis_answers(env["REDIS_URL"]), 15, interval=0.2)
            except TimeoutError:
                log = self.state / "logs" / "redis.log"
                raise SystemExit(f"[stack] Redis did not start; see {log}") from None
        else:
            raise SystemExit("[stack] no Redis answers and no redis-server is installed")

        for program, binary in OPTIONAL_PROGRAMS.items():
            if shutil.which(binary):
                self.supervisorctl(env, "start", program, check=False)

        self.wait_http(f"{env['MLFLOW_TRACKING_URI']}/health", "mlflow", STARTUP_TIMEOUT_S)
        # The one-shot bootstrap compose and Kubernetes run too: it trains the baseline, and
        # says "training the baseline", only when the registry has no production version.
        self.run(env, cli, "bootstrap")

        predictors = predictor_urls(env)
        gateway = f"http://127.0.0.1:{env['STACK_GATEWAY_PORT']}"
        for number, url in enumerate(predictors):
            self.wait_http(f"{url}/readyz", f"predictor-{number}", STARTUP_TIMEOUT_S)
        self.wait_http(f"{gateway}/readyz", "gateway", STARTUP_TIMEOUT_S)
        prometheus = (
            f"\n  Prometheus  http://127.0.0.1:{env['STACK_PROMETHEUS_PORT']}"
            if shutil.which("prometheus")
            else ""
        )
        print(
            f"""
The stack is up.
  gateway     {gateway}        (API docs: {gateway}/docs)
  predictor   {", ".join(predictors)}
  MLflow UI   {env["MLFLOW_TRACKING_URI"]}
  metrics     {gateway}/metrics, {predictors[0]}/metrics{prometheus}
  logs        make logs   (files in .state/logs/)

Try:
  curl -s -X POST {gateway}/predict -H 'Content-Type: application/json' \\
    -d '{{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}}'
"""
        )

    def down(self) -> None:
        if self.supervisord_running():
            self.stop_supervisord()
        elif not self.leftover_processes():
            say("nothing to stop")
            return
        self.stop_leftovers()

    def stop_supervisord(self) -> None:
        pid = int((self.state / "supervisord.pid").read_text().strip())
        self.supervisorctl(self.env(), "shutdown", check=False)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                say("stopped")
                return
            time.sleep(0.3)
        raise SystemExit("[stack] supervisord did not stop within 90 s")

    def leftover_processes(self) -> list[int]:
        """Live processes of this stack that supervisord no longer knows, found by the
        STACK_STATE that every program (and each program's children) inherits from
        supervisord's environment.

        supervisord stops each program's process group; a process outside it is missed: the
        children of a master that was SIGKILLed earlier and whose replacement formed a new
        group (MLflow's uvicorn under `mlflow server`, say), or everything after supervisord
        itself died. Read from /proc, so on Linux only.
        """
        marker = f"STACK_STATE={self.state}".encode()
        ours = {os.getpid(), os.getppid()}
        found = []
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                # A zombie's environment reads empty: it is dead already.
                environment = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environment and int(entry.name) not in ours:
                found.append(int(entry.name))
        return found

    def stop_leftovers(self, grace_s: float = 15) -> None:
        """SIGTERM the stack's leftover processes, then SIGKILL what still runs after
        `grace_s`."""
        leftovers = self.leftover_processes()
        if not leftovers:
            return
        say(f"stopping {len(leftovers)} leftover process(es) of this stack: {leftovers}")
        for signum in (signal.SIGTERM, signal.SIGKILL):
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            deadline = time.monotonic() + grace_s
            while (leftovers := self.leftover_processes()) and time.monotonic() < deadline:
                time.sleep(0.3)
            if not leftovers:
                return
        raise SystemExit(f"[stack] processes {leftovers} of this stack did not stop")

    def status(self) -> None:
        if not self.supervisord_running():
            say("not running (make up)")
            return
        env = self.env()
        print(self.supervisorctl(env, "status", check=False).stdout, end="")
        for name, url in (
            ("mlflow", f"{env['MLFLOW_TRACKING_URI']}/health"),
            *((f"predictor-{n}", f"{url}/readyz") for n, url in enumerate(predictor_urls(env))),
            ("gateway", f"http://127.0.0.1:{env['STACK_GATEWAY_PORT']}/readyz"),
            ("flower", f"http://127.0.0.1:{env['STACK_FLOWER_PORT']}/healthcheck"),
        ):
            try:
                code = str(httpx.get(url, timeout=2).status_code)
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            print(f"{name:<10} {url:<45} {code}")
        print(
            f"{'redis':<10} {env['REDIS_URL']:<45} "
            f"{'PONG' if redis_answers(env['REDIS_URL']) else 'down'}"
        )


def warn_about_reused_redis(url: str, password: str | None) -> None:
    """Say plainly what a reused Redis lacks that the stack's own has: persistence (jobs would
    not survive a restart), a memory cap without eviction, and a password."""
    import redis

    try:
        with redis.Redis.from_url(url, password=password or None, socket_timeout=2) as client:
            config = client.config_get("appendonly") | client.config_get("save")
            config |= client.config_get("maxmemory") | client.config_get("maxmemory-policy")
            config |= client.config_get("requirepass")
    except redis.RedisError as exc:
        say(f"cannot read the settings of {url} ({exc}); make sure it persists and is capped")
        return
    if config.get("appendonly") != "yes" and not config.get("save"):
        say(
            f"WARNING: the Redis at {url} persists nothing (no AOF, no RDB snapshots): queued "
            "and running retrain jobs and their records would be lost if it restarts. Enable "
            "appendonly, or remove REDIS_URL from .env to let `make up` run its own."
        )
    if config.get("maxmemory") in (None, "0") or config.get("maxmemory-policy") != "noeviction":
        say(
            f"WARNING: the Redis at {url} has no memory cap with `maxmemory-policy noeviction`: "
            "at its limit it may evict queued jobs and job records (see README, Security)."
        )
    if not config.get("requirepass"):
        say(f"WARNING: the Redis at {url} takes commands without a password.")
