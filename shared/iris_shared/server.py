"""Serve a service's app with uvicorn: one process per core, metrics merged across them.

Each service's `python -m <package>` calls `run()` with its app factory and settings:

    python -m iris_predictor        # PREDICTOR_HOST, PREDICTOR_PORT, PREDICTOR_WORKERS, ...
    python -m iris_gateway          # GATEWAY_...

With more than one worker, uvicorn's supervisor (the master) starts the workers, restarts one
that dies and forwards SIGTERM for a graceful stop. A master that dies without doing so (the
OOM killer, a crash) would leave its workers serving on the port with nobody watching them, and
its own supervisor's next master could not listen there: so each worker stops by itself when
its master is gone (`stop_with_master`). The master is a fresh interpreter that imports uvicorn
and this module only (`run()` replaces the service's process with it). The workers of one
server share a runtime folder, made empty by the master before any of them starts:

    <runtime>/metrics/   prometheus_client's files (PROMETHEUS_MULTIPROC_DIR), merged on every
                         scrape by `iris_shared.metrics`
    <runtime>/ready/     one file per worker that is ready, so readiness speaks for all of them
    <runtime>/nudge      touched to make every worker do now what it would do at its next tick
    <runtime>/lead-<role> locked by the one worker that does a role's periodic work (such as
                         asking MLflow where an alias points) for all of them
    <runtime>/connections each worker's count of open connections, which evens them out
                         (iris_shared.connection_shares)
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.importer import import_from_string
from uvicorn.supervisors import Multiprocess

from iris_shared.connection_shares import CONNECTIONS_ENV, create_table
from iris_shared.http_protocol import (
    HEADER_TIMEOUT_ENV,
    MAX_HEADER_BYTES_ENV,
    GuardedHttpToolsProtocol,
)
from iris_shared.life_locks import lock_for_life
from iris_shared.logging import configure_logging

if TYPE_CHECKING:
    # Not at run time: the master (`python -m iris_shared.server`) must not import pydantic.
    from iris_shared.settings import HTTPServiceSettings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
RUNTIME_ENV = "IRIS_SERVER_RUNTIME_DIR"
# What a worker needs to know about its server before the service's factory runs (see run()).
APP_FACTORY_ENV = "IRIS_SERVER_APP_FACTORY"
MASTER_PID_ENV = "IRIS_SERVER_MASTER_PID"
ORPHAN_DEADLINE_ENV = "IRIS_SERVER_ORPHAN_DEADLINE_S"
# What the master of a multi-process server is told by the process it replaces (see run()).
MASTER_CONFIG_ENV = "IRIS_SERVER_MASTER_CONFIG"
MASTER_MODULE = "iris_shared.server"
WORKER_FACTORY = f"{MASTER_MODULE}:create_worker_app"

# From <linux/prctl.h>.
PR_SET_PDEATHSIG = 1
# How often a worker looks for its master; the parent-death signal, where there is one, is
# what stops it promptly.
MASTER_CHECK_INTERVAL_S = 0.5

logger = logging.getLogger(__name__)


def prepare_runtime_dir(service: str) -> Path:
    """A new, empty runtime folder for this server, removed when it exits."""
    folder = Path(tempfile.mkdtemp(prefix=f"iris-{service}-"))
    atexit.register(shutil.rmtree, folder, True)
    (folder / "metrics").mkdir()
    (folder / "ready").mkdir()
    os.environ[RUNTIME_ENV] = str(folder)
    os.environ[MULTIPROC_ENV] = str(folder / "metrics")
    return folder


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerPeers:
    """What the worker processes of one server tell each other through the runtime folder.

    In a server of one process (no runtime folder) each question is about that process alone.
    """

    def __init__(self, workers: int) -> None:
        value = os.environ.get(RUNTIME_ENV)
        self.folder = Path(value) if value and workers > 1 else None
        self.workers = workers
        # Lock files this process holds, by role; closed only with the process.
        self._leading: dict[str, int] = {}

    def mark_ready(self) -> None:
        if self.folder is not None:
            (self.folder / "ready" / str(os.getpid())).touch()

    def ready_count(self) -> int:
        """Live workers that said they are ready (1 in a single-process server)."""
        if self.folder is None:
            return 1
        return sum(
            1 for entry in (self.folder / "ready").iterdir() if process_alive(int(entry.name))
        )

    def all_ready(self) -> bool:
        return self.ready_count() >= (self.workers if self.folder is not None else 1)

    def nudge(self) -> None:
        if self.folder is not None:
            (self.folder / "nudge").touch()

    def nudge_stamp(self) -> int:
        """Changes whenever a worker nudges the others (this one too): compare with the last
        value seen."""
        if self.folder is None:
            return 0
        try:
            return (self.folder / "nudge").stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def lead(self, role: str) -> bool:
        """Whether this process leads `role`: one worker of the server does, the first to ask.

        Leading is holding a lock on `<runtime>/lead-<role>`, which the kernel releases when
        its holder dies, so the next worker to ask takes over.
        """
        if self.folder is None or role in self._leading:
            return True
        lock = lock_for_life(self.folder / f"lead-{role}")
        if lock is None:
            return False
        self._leading[role] = lock
        return True


def set_parent_death_signal(signum: int) -> bool:
    """Have the kernel send `signum` to this process when its parent dies (Linux only).

    The kernel sends it when the parent *thread* that started this process ends. uvicorn's
    supervisor starts and restarts every worker from its main thread, which ends only with it.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        logger.warning(
            "Unable to set the parent-death signal",
            extra={"errno": ctypes.get_errno()},
        )
        return False
    return True


def stop_with_master(master_pid: int, deadline_s: float) -> None:
    """Stop this worker gracefully, as on SIGTERM, once `master_pid` (its parent) is gone, and
    end it outright if it is still alive `deadline_s` later.

    SIGTERM makes uvicorn close the listening socket at once (so the supervisor's next master
    can listen), let in-flight requests finish and run the app's lifespan shutdown. The kernel
    sends it the moment the master dies; a thread watching the parent id covers the systems
    without a parent-death signal, a master that died before the signal was set, and a worker
    that never finishes stopping.
    """
    armed = set_parent_death_signal(signal.SIGTERM)
    # Checked after arming: a master that died before then sent nothing.
    already_gone = os.getppid() != master_pid
    threading.Thread(
        target=_watch_master,
        args=(master_pid, armed and not already_gone, deadline_s),
        name="master-watch",
        daemon=True,
    ).start()


def _watch_master(master_pid: int, signalled_by_kernel: bool, deadline_s: float) -> None:
    while os.getppid() == master_pid:
        time.sleep(MASTER_CHECK_INTERVAL_S)
    logger.warning(
        "The master process is gone: stopping this worker",
        extra={"master_pid": master_pid, "deadline_s": deadline_s},
    )
    if not signalled_by_kernel:
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(deadline_s)
    logger.error(
        "This worker did not stop in time after its master died: ending it",
        extra={"master_pid": master_pid},
    )
    logging.shutdown()
    os._exit(1)


def create_worker_app() -> Any:
    """The app of one worker of a multi-process server: the service's own factory's, in a
    worker that stops with its master (the factory and the master are named by `run()`)."""
    stop_with_master(int(os.environ[MASTER_PID_ENV]), float(os.environ[ORPHAN_DEADLINE_ENV]))
    return import_from_string(os.environ[APP_FACTORY_ENV])()


def freeze_long_lived_objects() -> None:
    """Take what exists now (modules, the app, a loaded model) out of the collector's sight.

    A full garbage collection walks every tracked object; with MLflow and scikit-learn
    imported that is hundreds of thousands of objects, a pause in which the process answers
    nothing and the slowest predictions wait. Objects alive once a service
    is up live as long as the process, so they are collected once and frozen (`gc.freeze`):
    later full collections walk only what was made since.
    """
    gc.collect()
    gc.freeze()
    release_free_heap()


def release_free_heap() -> None:
    """Give the C heap's free memory back to the system (glibc's `malloc_trim`).

    Start-up (imports, settings validation, loading a model) frees much of what it allocates,
    and glibc keeps freed memory for reuse: in the master, which then only watches its
    workers, it would stay resident for nothing. Elsewhere than glibc this does nothing.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        return


def run(service: str, factory: str, settings: HTTPServiceSettings) -> None:
    """Serve `factory` ("module:function" returning the ASGI app) until SIGTERM or SIGINT.

    With more than one worker this process becomes the master: once the settings are read, it
    replaces itself (`exec`, same pid, so supervisord, compose and Kubernetes keep watching it)
    with `python -m iris_shared.server`, which imports uvicorn and this module only. The
    master only watches its workers; the service's own imports (pydantic and its settings,
    the shared schemas) would otherwise stay resident in it for nothing.
    """
    configure_logging(service, settings.log_level)
    # Read by each worker's protocol objects (GuardedHttpToolsProtocol), wherever it runs.
    os.environ[HEADER_TIMEOUT_ENV] = str(settings.header_read_timeout_s)
    os.environ[MAX_HEADER_BYTES_ENV] = str(settings.max_header_bytes)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "timeout_graceful_shutdown": settings.graceful_shutdown_s,
        "timeout_worker_healthcheck": settings.worker_healthcheck_timeout_s,
    }
    if settings.workers == 1:
        release_free_heap()
        _serve(factory, options)
        return
    os.environ[APP_FACTORY_ENV] = factory
    # An orphan gets the grace period for its in-flight requests, then as long again for its
    # lifespan shutdown (the predictor flushing its log), within supervisord's and compose's
    # stop grace period.
    os.environ[ORPHAN_DEADLINE_ENV] = str(2 * settings.graceful_shutdown_s)
    os.environ[MASTER_CONFIG_ENV] = json.dumps(
        {
            "service": service,
            "log_level": settings.log_level,
            "options": options,
            # Where the factory was importable from (a script's folder, say): the workers
            # get the master's sys.path from multiprocessing.
            "sys_path": sys.path,
        }
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", MASTER_MODULE])


def serve_as_master() -> None:
    """The master of a multi-process server, as `run()` set it up."""
    config = json.loads(os.environ.pop(MASTER_CONFIG_ENV))
    sys.path[:] = config["sys_path"]
    configure_logging(config["service"], config["log_level"])
    # Before uvicorn spawns the workers: each reads the variables when it imports
    # prometheus_client.
    runtime = prepare_runtime_dir(config["service"])
    create_table(runtime / "connections", config["options"]["workers"])
    os.environ[CONNECTIONS_ENV] = str(runtime / "connections")
    os.environ[MASTER_PID_ENV] = str(os.getpid())
    release_free_heap()
    _serve(WORKER_FACTORY, config["options"])


class WorkerSupervisor(Multiprocess):
    """uvicorn's supervisor of a server's worker processes, told at once of one that died.

    Every half second it asks each worker, over a pipe, whether it is alive, and waits up to
    the health-check timeout for the answer. The worker got its end of that pipe when it was
    spawned, but the supervisor keeps a copy of that end as well, so a worker that dies while
    a question is pending never hangs up its side: the wait runs out first, and the server
    runs a worker short until it does. Closing the supervisor's copy before asking lets the
    worker's death end the wait at once. A worker that is merely slow to answer (still
    importing) holds its end open and still gets the whole timeout.
    """

    def keep_subprocess_alive(self) -> None:
        for worker in self.processes:
            # Its own copy went to the worker when it started; closing twice does nothing.
            worker.child_conn.close()
        super().keep_subprocess_alive()


def _serve(factory: str, options: dict[str, Any]) -> None:
    settings: dict[str, Any] = {
        "factory": True,
        "loop": "uvloop",
        "http": GuardedHttpToolsProtocol,
        # Logging is ours (JSON lines, set up by the factory); no access log on the hot path.
        "log_config": None,
        "access_log": False,
        # No proxy in front sets X-Forwarded-*: the middleware reading them would run for nothing.
        "proxy_headers": False,
        "server_header": False,
        **options,
    }
    if settings["workers"] == 1:
        uvicorn.run(factory, **settings)
        return
    # What `uvicorn.run` does for several workers, with the supervisor above.
    config = uvicorn.Config(factory, **settings)
    with contextlib.suppress(KeyboardInterrupt):
        WorkerSupervisor(config, sockets=[config.bind_socket()]).run()


if __name__ == "__main__":
    serve_as_master()
