"""Run the whole stack locally as plain processes: `make up`, `make down`, `make status`.

supervisord (infra/local/supervisord.conf) keeps MLflow, the trainer worker, the predictor,
the gateway and, when needed, Redis and Prometheus alive; this script decides what to start,
bootstraps data and the baseline model, and waits until every service is ready. State and logs
live in .state/ (git-ignored), or in STACK_STATE_DIR when set (an absolute path, or one relative
to the repository), so a second stack such as `make bench`'s can run beside the first. Running
`up` twice changes nothing; `down` stops only what `up` started, so a Redis that was already
answering keeps running.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import httpx
from dotenv import dotenv_values, set_key

from iris_shared.testing import redis_server_binary

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
STATE = ROOT / (os.environ.get("STACK_STATE_DIR") or ".state")
CONF = ROOT / "infra" / "local" / "supervisord.conf"
ENV_FILE = ROOT / ".env"
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
    "PREDICTOR_CACHE_DIR": str(STATE / "predictor" / "model-cache"),
    "PREDICTOR_PREDICTION_LOG_DIR": str(STATE / "predictor" / "prediction-logs"),
    "TRAINER_REPO_ROOT": str(ROOT),
    # Service logs are JSON lines: keep MLflow's progress bars and run-URL prints out of them.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # MLflow's server-side job runners serve GenAI features this stack does not use.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


def say(message: str) -> None:
    print(f"[stack] {message}", flush=True)


def _configured(name: str, present: dict[str, str | None]) -> bool:
    return bool((present.get(name) or "").strip() or os.environ.get(name))


# What .env holds per deployment, made on first run when neither .env nor the environment sets
# it: the gateway's token (for curl and the CLI), the passwords compose.yaml requires, the
# jobs namespace, so that two stacks sharing one Redis never run each other's jobs, and, unless
# REDIS_URL names a Redis of the user's, the address and password of the stack's own Redis
# (the CLI finds the running stack's Redis through them).
GENERATED_SETTINGS: dict[str, Callable[[], str]] = {
    "API_TOKEN": lambda: secrets.token_urlsafe(32),
    "POSTGRES_PASSWORD": lambda: secrets.token_urlsafe(32),
    "GRAFANA_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(32),
    "JOBS_NAMESPACE": lambda: f"iris-{secrets.token_hex(4)}",
}


def ensure_generated_settings() -> None:
    """Write the missing per-deployment settings to .env, readable by its owner only."""
    ENV_FILE.touch(mode=0o600)
    # touch keeps the mode of an existing file, e.g. 644 from `cp .env.example .env`.
    ENV_FILE.chmod(0o600)
    present = dotenv_values(ENV_FILE)
    generated = dict(GENERATED_SETTINGS)
    # Where the predictor writes its log, for `iris-mlops report drift` to find it.
    log_dir = STATE / "predictor" / "prediction-logs"
    generated["PREDICTOR_PREDICTION_LOG_DIR"] = lambda: str(
        log_dir.relative_to(ROOT) if log_dir.is_relative_to(ROOT) else log_dir
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
        set_key(ENV_FILE, name, generate(), quote_mode="never")
        say(f"wrote a new {name} to {ENV_FILE.name}")


def stack_env() -> dict[str, str]:
    """Defaults, then .env, then the environment (which wins, as in the services' settings)."""
    from_file = dotenv_values(ENV_FILE) if ENV_FILE.exists() else {}
    configured = {k: v for k, v in {**from_file, **os.environ}.items() if v}
    env = {**DEFAULTS, **configured}
    # Where clients find MLflow and the predictor follows from the ports, unless set outright.
    env.setdefault("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{env['STACK_MLFLOW_PORT']}")
    env.setdefault("GATEWAY_PREDICTOR_URL", ",".join(predictor_urls(env)))
    env.setdefault("REDIS_URL", f"redis://127.0.0.1:{env['STACK_REDIS_PORT']}/0")
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    env.update(
        STACK_ROOT=str(ROOT),
        STACK_STATE=str(STATE),
        STACK_VENV=str(VENV),
        STACK_REDIS_CONF=str(STATE / "redis" / "redis.conf"),
        STACK_REDIS_SERVER=redis_server_binary() or "redis-server",
        STACK_PROMETHEUS=shutil.which("prometheus") or "prometheus",
    )
    return env


def predictor_urls(env: dict[str, str]) -> list[str]:
    first = int(env["STACK_PREDICTOR_PORT"])
    return [f"http://127.0.0.1:{first + i}" for i in range(int(env["STACK_PREDICTORS"]))]


def redis_answers(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=1
        ) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def write_redis_config(env: dict[str, str]) -> None:
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
        f"dir {STATE / 'redis'}",
        # Every write to the append-only file, synced once a second: a restart loses at most
        # the last second of the job queue and records.
        'save ""',
        "appendonly yes",
        "appendfsync everysec",
        f"maxmemory {env['STACK_REDIS_MAXMEMORY']}",
        "maxmemory-policy noeviction",
    ]
    if env.get("REDIS_PASSWORD"):
        lines.append(f"requirepass {env['REDIS_PASSWORD']}")
    config = Path(env["STACK_REDIS_CONF"])
    config.touch(mode=0o600)
    config.chmod(0o600)
    config.write_text("\n".join(lines) + "\n")


def supervisorctl(
    env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV / "bin" / "supervisorctl"), "-c", str(CONF), *args],
        env=env,
        capture_output=True,
        text=True,
        check=check,
    )


def supervisord_running() -> bool:
    pidfile = STATE / "supervisord.pid"
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    return True


def wait_http(url: str, what: str, timeout: float) -> None:
    """Wait for `url` to answer 200; `what` names the supervisord program and its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    log = STATE / "logs" / f"{what}.log"
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:]) if log.exists() else ""
    raise SystemExit(f"[stack] {what} not ready at {url} after {timeout:.0f}s\n{tail}")


def run(env: dict[str, str], *args: str) -> None:
    result = subprocess.run(list(args), env=env, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"[stack] `{' '.join(args)}` failed with exit code {result.returncode}")


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


def up() -> None:
    ensure_generated_settings()
    env = stack_env()
    for folder in ("logs", "redis", "mlflow", "prometheus", "predictor"):
        (STATE / folder).mkdir(parents=True, exist_ok=True)

    say("bootstrapping data/iris.csv from its DVC pointer")
    run(env, str(VENV / "bin" / "iris-mlops"), "data", "bootstrap")

    if not supervisord_running():
        say("starting supervisord")
        run(env, str(VENV / "bin" / "supervisord"), "-c", str(CONF))
    else:
        supervisorctl(env, "update", check=False)
        supervisorctl(env, "start", "mlflow", "trainer", "predictor:*", "gateway", check=False)

    if redis_answers(env["REDIS_URL"]):
        say(f"reusing the Redis that answers at {env['REDIS_URL']}")
        warn_about_reused_redis(env["REDIS_URL"], env.get("REDIS_PASSWORD"))
    elif env["STACK_REDIS_SERVER"] and Path(env["STACK_REDIS_SERVER"]).exists():
        say(f"starting Redis ({env['STACK_REDIS_SERVER']}) for {env['REDIS_URL']}")
        write_redis_config(env)
        supervisorctl(env, "start", "redis")
        deadline = time.monotonic() + 15
        while not redis_answers(env["REDIS_URL"]):
            if time.monotonic() > deadline:
                raise SystemExit(f"[stack] Redis did not start; see {STATE / 'logs' / 'redis.log'}")
            time.sleep(0.2)
    else:
        raise SystemExit("[stack] no Redis answers and no redis-server is installed")

    # Started where Debian's packages are installed; scripts/ensure_tools.sh installs them.
    optional = {
        "prometheus": "prometheus",
        "alertmanager": "prometheus-alertmanager",
        "redis-exporter": "prometheus-redis-exporter",
    }
    for program, binary in optional.items():
        if shutil.which(binary):
            supervisorctl(env, "start", program, check=False)

    wait_http(f"{env['MLFLOW_TRACKING_URI']}/health", "mlflow", STARTUP_TIMEOUT_S)
    # The one-shot bootstrap compose and Kubernetes run too: it trains the baseline, and says
    # "training the baseline", only when the registry has no production version.
    run(env, str(VENV / "bin" / "iris-mlops"), "bootstrap")

    predictors = predictor_urls(env)
    gateway = f"http://127.0.0.1:{env['STACK_GATEWAY_PORT']}"
    for number, url in enumerate(predictors):
        wait_http(f"{url}/readyz", f"predictor-{number}", STARTUP_TIMEOUT_S)
    wait_http(f"{gateway}/readyz", "gateway", STARTUP_TIMEOUT_S)
    prometheus = (
        f"http://127.0.0.1:{env['STACK_PROMETHEUS_PORT']}" if shutil.which("prometheus") else None
    )
    print(
        f"""
The stack is up.
  gateway     {gateway}        (API docs: {gateway}/docs)
  predictor   {", ".join(predictors)}
  MLflow UI   {env["MLFLOW_TRACKING_URI"]}
  metrics     {gateway}/metrics, {predictors[0]}/metrics{
            f'''
  Prometheus  {prometheus}'''
            if prometheus
            else ""
        }
  logs        make logs   (files in .state/logs/)

Try:
  curl -s -X POST {gateway}/predict -H 'Content-Type: application/json' \\
    -d '{{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}}'
"""
    )


def down() -> None:
    if supervisord_running():
        stop_supervisord()
    elif not leftover_processes():
        say("nothing to stop")
        return
    stop_leftovers()


def stop_supervisord() -> None:
    env = stack_env()
    pid = int((STATE / "supervisord.pid").read_text().strip())
    supervisorctl(env, "shutdown", check=False)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            say("stopped")
            return
        time.sleep(0.3)
    raise SystemExit("[stack] supervisord did not stop within 90 s")


def leftover_processes() -> list[int]:
    """Live processes of this stack that supervisord no longer knows, found by the STACK_STATE
    that every program (and each program's children) inherits from supervisord's environment.

    supervisord stops each program's process group; a process outside it is missed: the
    children of a master that was SIGKILLed earlier and whose replacement formed a new group
    (MLflow's uvicorn under `mlflow server`, say), or everything after supervisord itself
    died. Read from /proc, so on Linux only.
    """
    marker = f"STACK_STATE={STATE}".encode()
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


def stop_leftovers(grace_s: float = 15) -> None:
    """SIGTERM the stack's leftover processes, then SIGKILL what still runs after `grace_s`."""
    leftovers = leftover_processes()
    if not leftovers:
        return
    say(f"stopping {len(leftovers)} leftover process(es) of this stack: {leftovers}")
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        deadline = time.monotonic() + grace_s
        while (leftovers := leftover_processes()) and time.monotonic() < deadline:
            time.sleep(0.3)
        if not leftovers:
            return
    raise SystemExit(f"[stack] processes {leftovers} of this stack did not stop")


def status() -> None:
    if not supervisord_running():
        say("not running (make up)")
        return
    env = stack_env()
    print(supervisorctl(env, "status", check=False).stdout, end="")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    {"up": up, "down": down, "status": status}[parser.parse_args().command]()


if __name__ == "__main__":
    main()
