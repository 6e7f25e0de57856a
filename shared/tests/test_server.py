"""A multi-process server's workers stop with their master (iris_shared.server), for real.

Each test serves tiny_service.py with two workers through `iris_shared.server.run`, as the
predictor and the gateway are served, and kills or stops its master.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from iris_devstack.processes import alive, child_pids, free_port, tls_context

pytestmark = [pytest.mark.integration]

SERVICE = Path(__file__).with_name("tiny_service.py")


def workers_of(master: int) -> set[int]:
    """The master's uvicorn workers (its other child is multiprocessing's resource tracker)."""
    found = set()
    for pid in child_pids(master):
        with suppress(FileNotFoundError, ProcessLookupError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.add(pid)
    return found


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `check()` held; fails the test after `timeout`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


def port_free(port: int) -> bool:
    """Whether a new server could listen on `port` now (uvicorn binds with SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class TinyServer:
    master: subprocess.Popen[bytes]
    port: int
    state: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answering_pid(self) -> int:
        return int(httpx.get(f"{self.url}/pid", timeout=2, verify=tls_context()).text)

    def wait_serving(self, workers: set[int]) -> None:
        """Wait until each of `workers` has answered a request."""
        answered: set[int] = set()

        def all_answered() -> bool:
            with suppress(httpx.HTTPError):
                answered.add(self.answering_pid())
            return answered >= workers

        wait_for(all_answered, 30, f"an answer from each of {workers}")

    def stopped(self) -> set[int]:
        """The workers whose lifespan shutdown ran to its end."""
        return {int(path.name) for path in (self.state / "stopped").iterdir()}

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextmanager
def tiny_server(tmp_path: Path, workers: int = 2, **env: str) -> Iterator[TinyServer]:
    """The tiny service served by `workers` processes; the whole process group is SIGKILLed at
    the end, so a worker that outlived its master is never left behind by the test."""
    port = free_port()
    state = tmp_path / "state"
    (state / "stopped").mkdir(parents=True)
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        master = subprocess.Popen(
            [sys.executable, str(SERVICE)],
            env={
                **os.environ,
                "TINY_PORT": str(port),
                "TINY_WORKERS": str(workers),
                "TINY_STATE_DIR": str(state),
                **env,
            },
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = TinyServer(master, port, state, log)
    try:
        wait_for(lambda: len(workers_of(master.pid)) == workers, 30, f"{workers} workers")
        server.wait_serving(workers_of(master.pid))
        yield server
    finally:
        with suppress(ProcessLookupError):
            os.killpg(master.pid, signal.SIGKILL)
        master.wait(10)


def slow_request(server: TinyServer, seconds: float) -> tuple[threading.Thread, list[int]]:
    """A request that takes `seconds`, in flight once this returns; its status goes in the list."""
    statuses: list[int] = []

    def send() -> None:
        try:
            statuses.append(
                httpx.get(f"{server.url}/slow?seconds={seconds}", timeout=30).status_code
            )
        except httpx.HTTPError:
            statuses.append(0)

    thread = threading.Thread(target=send)
    thread.start()
    wait_for((server.state / "slow-started").exists, 10, "the slow request in flight")
    return thread, statuses


def test_workers_stop_gracefully_and_free_the_port_when_their_master_is_killed(
    tmp_path: Path,
) -> None:
    with tiny_server(tmp_path) as server:
        master = server.master.pid
        old = child_pids(master)
        workers = workers_of(master)
        thread, statuses = slow_request(server, 2)

        server.master.send_signal(signal.SIGKILL)
        server.master.wait(5)

        # The port is free for the supervisor's next master at once, while the request that was
        # in flight still finishes: the workers stop as on SIGTERM, not as on SIGKILL.
        wait_for(lambda: port_free(server.port), 3, "the port free after the master's death")
        thread.join(15)
        assert statuses == [200], server.tail()
        wait_for(lambda: not any(alive(pid) for pid in old), 10, "every old child gone")
        assert server.stopped() == workers, server.tail()


def test_a_worker_the_master_restarted_stops_with_it_too(tmp_path: Path) -> None:
    with tiny_server(tmp_path) as server:
        master = server.master.pid
        first = workers_of(master)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: len(workers_of(master) - first) == 1, 30, "a replacement for the killed worker"
        )
        current = workers_of(master)
        server.wait_serving(current)

        server.master.send_signal(signal.SIGKILL)
        server.master.wait(5)

        wait_for(lambda: not any(alive(pid) for pid in current), 10, "every worker gone")
        assert server.stopped() == current, server.tail()


def test_a_worker_that_dies_while_its_master_awaits_its_answer_is_replaced_at_once(
    tmp_path: Path,
) -> None:
    """uvicorn's master asks each worker every half second whether it is alive, and waits up to
    the health-check timeout (a minute here) for the answer. A worker that dies with a question
    pending (stopped, then killed: a worker the OOM killer takes while it is busy) is replaced
    as soon as it is gone, not when that wait runs out."""
    with tiny_server(tmp_path, TINY_HEALTHCHECK_TIMEOUT_S="60") as server:
        master = server.master.pid
        first = workers_of(master)
        victim = min(first)
        os.kill(victim, signal.SIGSTOP)
        # Past the master's next question, which the stopped worker leaves unanswered.
        time.sleep(1.5)
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: len(workers_of(master) - first) == 1, 20, "a replacement for the dead worker"
        )
        server.wait_serving(workers_of(master))
        assert "died" in server.tail()


def test_a_worker_that_cannot_stop_after_its_master_died_is_ended(tmp_path: Path) -> None:
    """A shutdown that hangs (a log that cannot be flushed, say) does not keep an orphan alive:
    it gets as long again as the grace period for in-flight requests, then ends."""
    with tiny_server(tmp_path, TINY_HANG_ON_SHUTDOWN="1", TINY_GRACEFUL_SHUTDOWN_S="1") as server:
        old = child_pids(server.master.pid)

        server.master.send_signal(signal.SIGKILL)
        server.master.wait(5)

        wait_for(lambda: port_free(server.port), 3, "the port free after the master's death")
        wait_for(lambda: not any(alive(pid) for pid in old), 8, "every old child gone")
        assert server.stopped() == set()


def test_sigterm_to_the_master_still_stops_every_worker_gracefully(tmp_path: Path) -> None:
    with tiny_server(tmp_path) as server:
        workers = workers_of(server.master.pid)
        thread, statuses = slow_request(server, 1)

        server.master.send_signal(signal.SIGTERM)

        assert server.master.wait(20) == 0, server.tail()
        thread.join(15)
        assert statuses == [200], server.tail()
        assert server.stopped() == workers, server.tail()
        assert not any(alive(pid) for pid in workers)


def test_the_master_keeps_none_of_what_the_service_imported(tmp_path: Path) -> None:
    """The process that read the settings (with pydantic) becomes the master under the same
    pid, as supervisord and compose watch it, but as a fresh interpreter: the master only
    watches its workers, and every server's memory counts it."""
    with tiny_server(tmp_path) as server:
        master = server.master.pid
        assert b"iris_shared.server" in Path(f"/proc/{master}/cmdline").read_bytes()
        assert "pydantic_core" not in Path(f"/proc/{master}/maps").read_text()
        assert server.answering_pid() in workers_of(master)


LEADER = """
import time
from iris_shared.server import WorkerPeers
peers = WorkerPeers(2)
print(peers.lead("poll-production"), flush=True)
time.sleep(60)
"""


def test_one_worker_leads_a_role_and_another_takes_over_when_it_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from iris_shared.server import RUNTIME_ENV, WorkerPeers

    monkeypatch.setenv(RUNTIME_ENV, str(tmp_path))
    leader = subprocess.Popen(
        [sys.executable, "-c", LEADER],
        env={**os.environ, RUNTIME_ENV: str(tmp_path)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert leader.stdout is not None
        assert leader.stdout.readline().strip() == "True"
        here = WorkerPeers(2)
        assert not here.lead("poll-production")
        # Another role is free, and a server of one process leads everything.
        assert here.lead("poll-challenger")
        assert WorkerPeers(1).lead("poll-production")
        leader.kill()
        leader.wait(10)
        assert here.lead("poll-production")
        assert here.lead("poll-production"), "asking again keeps the lead"
    finally:
        leader.kill()
        leader.wait(10)


@pytest.mark.slow
def test_workers_slower_to_start_than_uvicorns_health_check_are_not_restarted(
    tmp_path: Path,
) -> None:
    """A worker busy importing for longer than uvicorn's 5 s default is left to finish: it is
    not killed and started again (and again, on a machine too busy to start one in 5 s)."""
    with tiny_server(tmp_path, TINY_IMPORT_DELAY_S="7") as server:
        first = workers_of(server.master.pid)
        time.sleep(1)
        assert workers_of(server.master.pid) == first
        assert "died" not in server.log.read_text(), server.tail()


def test_keep_alive_connections_crowded_on_one_worker_spread_over_both(tmp_path: Path) -> None:
    """Four keep-alive clients that connected while one worker could not accept all live on
    the other; each keeps its connection for as long as it is answered that way. The crowded
    worker asks some of them to reconnect (`Connection: close`, still a 200) until they are two
    on each worker, and then none: every request answered, each reconnection counted."""
    with tiny_server(tmp_path) as server:
        idle, busy = sorted(workers_of(server.master.pid))
        even = sorted([idle, idle, busy, busy])
        clients = [httpx.Client(base_url=server.url, timeout=10) for _ in range(4)]

        def one_round() -> tuple[list[int], int]:
            answers = [client.get("/pid") for client in clients]
            assert [answer.status_code for answer in answers] == [200] * 4
            closing = sum(answer.headers.get("connection") == "close" for answer in answers)
            return sorted(int(answer.text) for answer in answers), closing

        try:
            os.kill(idle, signal.SIGSTOP)
            try:
                first, closes = one_round()
            finally:
                os.kill(idle, signal.SIGCONT)
            assert first == [busy] * 4
            # Where a client reconnects is the kernel's choice: the split gets there by steps.
            for _ in range(200):
                pids, closing = one_round()
                closes += closing
                if pids == even and not closing:
                    break
            else:
                pytest.fail(f"still {pids} after 200 rounds")
            for _ in range(10):
                assert one_round() == (even, 0), "an even split stays as it is"
        finally:
            for client in clients:
                client.close()
        exposition = httpx.get(f"{server.url}/metrics", timeout=10).text
        counted = {
            sample.name: sample.value
            for family in text_string_to_metric_families(exposition)
            for sample in family.samples
        }
        # From four on one worker to two on each takes two reconnections at least.
        assert closes >= 2
        assert counted["iris_http_connections_rebalanced_total"] == closes


def test_a_worker_claims_a_free_slot_and_is_crowded_one_connection_over_its_peers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from iris_shared.connection_shares import (
        CONNECTIONS_ENV,
        ConnectionShares,
        NoFreeSlot,
        create_table,
        worker_shares,
    )

    table = tmp_path / "connections"
    create_table(table, 3)
    first, second, third = (ConnectionShares(table) for _ in range(3))
    assert [first.slot, second.slot, third.slot] == [0, 1, 2]
    with pytest.raises(NoFreeSlot, match="every slot"):
        ConnectionShares(table)
    # A worker started while the one it replaces holds its slot still serves, unbalanced.
    monkeypatch.setenv(CONNECTIONS_ENV, str(table))
    assert worker_shares() is None
    for _ in range(2):
        first.opened()
    second.opened()
    third.opened()
    assert not first.crowded(), "two against one and one"
    second.closed()
    assert first.crowded(), "two against a peer with none"
    assert not second.crowded()
    # A worker that died gives its slot, and its count, to the one started in its place.
    third.close()
    successor = ConnectionShares(table)
    assert successor.slot == 2
    assert not successor.crowded()
    second.opened()
    assert first.crowded(), "two against one and none"
    for shares in (first, second, successor):
        shares.close()
