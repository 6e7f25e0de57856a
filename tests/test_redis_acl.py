"""Each service on its own Redis user (iris_shared.redis_acl), as compose and Kubernetes run them.

A whole round runs against a Redis whose default user is off: predictions through the gateway,
a label, a retrain job to its end, Flower's task events, the exporter's queue sizes and the
CLI's labelled rows. Not one command of it is refused, and each user is refused what its
service never needs.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from iris_devstack.processes import (
    REPO_ROOT,
    VENV_BIN,
    ManagedProcess,
    free_port,
    http_ok,
    tcp_open,
    tls_context,
    wait_until,
)
from iris_devstack.redis import redis_server_args
from iris_devstack.supervisor import supervisord_command
from iris_shared.feedback import FeedbackKeys
from iris_shared.jobs import JobKeys
from iris_shared.redis_acl import USERS, acl_file
from tests.support.core import run_cli
from tests.support.gateway import start_gateway
from tests.support.predictor import start_predictor, wait_ready
from tests.support.worker import start_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAMESPACE = f"acl-{secrets.token_hex(4)}"
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@dataclass
class AclStack:
    port: int
    passwords: dict[str, str]
    gateway_url: str
    predictor_url: str
    flower_url: str
    exporter_url: str

    def url(self, user: str) -> str:
        return f"redis://{user}@127.0.0.1:{self.port}/0"

    def client(self, user: str) -> redis.Redis:
        return redis.Redis(
            port=self.port, username=user, password=self.passwords[user], decode_responses=True
        )


@pytest.fixture(scope="module")
def stack(logs_dir: Path, trained_registry: str, api_token: str) -> Iterator[AclStack]:
    passwords = {user: secrets.token_urlsafe(16) for user in USERS}
    acl = logs_dir / f"{NAMESPACE}.acl"
    acl.write_text(acl_file(NAMESPACE, passwords))
    port = free_port()
    data_dir = logs_dir / f"redis-{NAMESPACE}"
    data_dir.mkdir()
    processes = [
        ManagedProcess(
            f"redis-{NAMESPACE}",
            [*redis_server_args(port, data_dir), "--aclfile", str(acl)],
            logs_dir,
        )
    ]
    try:
        wait_until(tcp_open(port), 15, "redis", processes[0])
        url = f"redis://{{user}}@127.0.0.1:{port}/0"

        def service_env(user: str) -> dict[str, str]:
            return {
                "REDIS_URL": url.format(user=user),
                "REDIS_PASSWORD": passwords[user],
                "JOBS_NAMESPACE": NAMESPACE,
            }

        predictor, predictor_url = start_predictor(
            logs_dir, trained_registry, **service_env("predictor")
        )
        processes.append(predictor)
        gateway, gateway_url = start_gateway(
            logs_dir,
            predictor_url,
            url.format(user="gateway"),
            trained_registry,
            api_token,
            name="gateway-acl",
            **service_env("gateway"),
        )
        processes.append(gateway)
        flower_port = free_port()
        flower = ManagedProcess(
            "flower-acl",
            supervisord_command(
                "flower", STACK_VENV=str(VENV_BIN.parent), STACK_FLOWER_PORT=str(flower_port)
            ),
            logs_dir,
            env=service_env("flower"),
            cwd=REPO_ROOT,
        )
        processes.append(flower)
        exporter_port = free_port()
        exporter = ManagedProcess(
            "redis-exporter-acl",
            [
                shutil.which("prometheus-redis-exporter") or "prometheus-redis-exporter",
                f"-redis.addr=redis://127.0.0.1:{port}",
                "-redis.user=exporter",
                f"-web.listen-address=127.0.0.1:{exporter_port}",
                f"-check-single-keys=db0={JobKeys(NAMESPACE).broker_prefix}"
                f"{JobKeys(NAMESPACE).queue},db0={JobKeys(NAMESPACE).pending}",
                "-redis-only-metrics",
            ],
            logs_dir,
            env={"REDIS_PASSWORD": passwords["exporter"]},
        )
        processes.append(exporter)
        worker = start_worker(
            logs_dir, url.format(user="trainer"), trained_registry, **service_env("trainer")
        )
        processes.append(worker)
        flower_url = f"http://127.0.0.1:{flower_port}"
        wait_until(http_ok(f"{flower_url}/healthcheck"), 60, "flower", flower)
        wait_ready(predictor, predictor_url)
        yield AclStack(
            port,
            passwords,
            gateway_url,
            predictor_url,
            flower_url,
            f"http://127.0.0.1:{exporter_port}",
        )
    finally:
        for process in reversed(processes):
            process.kill()


def test_every_service_does_its_whole_job_on_its_own_user(
    stack: AclStack, api_token: str, trained_registry: str
) -> None:
    admin = stack.client("admin")
    admin.acl_log_reset()
    auth = {"Authorization": f"Bearer {api_token}"}

    answer = httpx.post(f"{stack.gateway_url}/predict", json=SETOSA).json()
    keys = FeedbackKeys(NAMESPACE)
    wait_until(lambda: admin.exists(keys.prediction(answer["request_id"])), 10, "answer kept")
    label = {"request_id": answer["request_id"], "actual_species": "Iris-setosa"}
    labelled = httpx.post(f"{stack.gateway_url}/feedback", json=label, headers=auth)
    job = httpx.post(f"{stack.gateway_url}/retrain", headers=auth).json()

    def finished() -> bool:
        url = f"{stack.gateway_url}/jobs/{job['job_id']}"
        record = httpx.get(url, headers=auth, verify=tls_context()).json()
        return record["status"] in ("succeeded", "failed")

    wait_until(finished, 120, "the retrain job")
    record = httpx.get(f"{stack.gateway_url}/jobs/{job['job_id']}", headers=auth).json()
    pending = run_cli(
        "data",
        "add-feedback",
        "--dry-run",
        tracking_uri=trained_registry,
        env={
            "REDIS_URL": stack.url("trainer"),
            "REDIS_PASSWORD": stack.passwords["trainer"],
            "JOBS_NAMESPACE": NAMESPACE,
        },
    )
    wait_until(
        lambda: "task-succeeded" in httpx.get(f"{stack.flower_url}/metrics").text,
        30,
        "Flower's task events",
    )
    exporter = httpx.get(f"{stack.exporter_url}/metrics").text

    assert labelled.status_code == 202, labelled.text
    assert record["status"] == "succeeded", record
    assert "Would add 1 rows" in pending.stdout
    assert "5.1,3.5,1.4,0.2,Iris-setosa" in pending.stdout
    assert "redis_up 1" in exporter
    assert f'key="{JobKeys(NAMESPACE).pending}"' in exporter
    # Nothing any service sent was refused.
    assert admin.acl_log() == []


def test_each_user_is_refused_what_its_service_never_needs(stack: AclStack) -> None:
    jobs, keys = JobKeys(NAMESPACE), FeedbackKeys(NAMESPACE)
    queue = f"{jobs.broker_prefix}{jobs.queue}"
    refused = [
        ("predictor", lambda c: c.lpush(queue, "{}")),
        ("predictor", lambda c: c.hgetall(jobs.record("any"))),
        ("predictor", lambda c: c.rpush(keys.labelled, "{}")),
        ("gateway", lambda c: c.set(keys.prediction("forged"), "{}")),
        ("exporter", lambda c: c.set(jobs.pending, "x")),
        ("flower", lambda c: c.get(keys.prediction("any"))),
        ("trainer", lambda c: c.flushall()),
        ("gateway", lambda c: c.config_set("maxmemory", "0")),
    ]
    for user, command in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            command(stack.client(user))
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=stack.port).ping()


def test_a_restarted_redis_keeps_what_transactions_and_scripts_wrote(logs_dir: Path) -> None:
    # Redis replays its append-only file as the default user and checks each EXEC against that
    # user's permissions (redis/redis#14541): with the default user refused everything, every
    # job record a worker ended in a transaction or a script was dropped on restart.
    passwords = {user: secrets.token_urlsafe(16) for user in USERS}
    acl = logs_dir / f"{NAMESPACE}-durable.acl"
    acl.write_text(acl_file(NAMESPACE, passwords))
    data_dir = logs_dir / f"redis-{NAMESPACE}-durable"
    data_dir.mkdir()
    port = free_port()
    server = ManagedProcess(
        f"redis-{NAMESPACE}-durable",
        [*redis_server_args(port, data_dir, durable=True), "--aclfile", str(acl)],
        logs_dir,
    )
    record = JobKeys(NAMESPACE).record("durable")
    try:
        wait_until(tcp_open(port), 15, "redis", server)
        trainer = redis.Redis(
            port=port, username="trainer", password=passwords["trainer"], decode_responses=True
        )
        # Two writes each: Redis logs a lone write without its MULTI/EXEC.
        with trainer.pipeline(transaction=True) as pipe:
            pipe.hset(record, mapping={"status": "succeeded"})
            pipe.zadd(JobKeys(NAMESPACE).pending, {"durable": 1})
            pipe.execute()
        trainer.eval(
            "redis.call('HSET', KEYS[1], 'deliveries', 1); redis.call('ZREM', KEYS[2], 'durable')",
            2,
            record,
            JobKeys(NAMESPACE).pending,
        )
        trainer.close()

        server.restart()
        wait_until(tcp_open(port), 15, "redis", server)
        trainer = redis.Redis(
            port=port, username="trainer", password=passwords["trainer"], decode_responses=True
        )
        kept = trainer.hgetall(record)
        trainer.close()
        # The default user may replay the file, but nobody can be it.
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port).ping()
    finally:
        server.stop()

    assert kept == {"status": "succeeded", "deliveries": "1"}
