"""`make compose-smoke`: the README's workflow (predict, retrain, promote, feedback) against the
containers only.

On a compose project of its own (its own volumes, secrets and free ports, so a stack from
`make compose-up` is left alone) with 2 predictor replicas and 2 workers:

    up          images built by `make images`, compose up, the bootstrap trains the first model
    predict     POST /predict answers the species; `petal--width` gets a 400
    retrain     POST /retrain -> job succeeded -> a new version whose lineage is the checkout's
                (the data's md5 as DVC recorded it, the git commit)
    promote     POST /promote -> every predictor replica serves the new version within 10 s
    feedback    POST /feedback -> 202 (the predictor keeps its answers in Redis), and
                iris_live_accuracy in the containers' Prometheus, with every alert rule loaded
    failover    one predictor container killed under load through the gateway: 0 failures
    restart     compose down, then up again: the registry, the job and the prediction log stay

It prints how long each phase took, then removes the project, volumes included. Exit 0 when
every check held.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml
from compose_stack import (
    KILLED,
    ROOT,
    Compose,
    say,
    start,
    wait_for,
    write_secrets,
)

PREDICTORS = 2
WORKERS = 2
SWAP_WITHIN_S = 10.0
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
TYPO = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal--width": 0.2}
MODEL = "Iris-LogisticRegression"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Failed(Exception):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise Failed(what)


class Smoke:
    def __init__(self, work: Path) -> None:
        self.ports = {
            name: free_port()
            for name in ("gateway", "prometheus", "flower", "alertmanager", "grafana")
        }
        self.token = secrets.token_urlsafe(32)
        write_secrets(
            work / "secrets",
            {
                "API_TOKEN": self.token,
                "COMPOSE_MLFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(32),
                "POSTGRES_PASSWORD": secrets.token_urlsafe(32),
                "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(32),
            },
        )
        self.compose = Compose(
            f"iris-smoke-{secrets.token_hex(3)}",
            {
                "COMPOSE_SECRETS_DIR": str(work / "secrets"),
                **{f"COMPOSE_{name.upper()}_PORT": str(p) for name, p in self.ports.items()},
            },
        )
        self.gateway = f"http://127.0.0.1:{self.ports['gateway']}"
        self.prometheus = f"http://127.0.0.1:{self.ports['prometheus']}"
        self.auth = {"Authorization": f"Bearer {self.token}"}
        self.timings: dict[str, float] = {}
        self.facts: dict[str, str] = {}

    def phase(self, name: str, run: Callable[[], None]) -> None:
        say(f"phase {name}")
        started = time.monotonic()
        run()
        self.timings[name] = time.monotonic() - started
        say(f"phase {name}: ok in {self.timings[name]:.1f} s")

    # --- phases ----------------------------------------------------------------------------

    def up(self) -> None:
        start(self.compose, PREDICTORS, WORKERS)
        replicas = self.compose.containers("predictor")
        check(len(replicas) == PREDICTORS, f"{PREDICTORS} predictor replicas, not {replicas}")
        check(len(self.compose.containers("trainer")) == WORKERS, f"{WORKERS} workers")

    def predict(self) -> None:
        answer = httpx.post(f"{self.gateway}/predict", json=SETOSA, timeout=10)
        check(answer.status_code == 200, f"/predict: {answer.status_code} {answer.text}")
        check(answer.json()["predicted_species"] == "Iris-setosa", answer.text)
        typo = httpx.post(f"{self.gateway}/predict", json=TYPO, timeout=10)
        check(typo.status_code == 400, f"petal--width: {typo.status_code}")
        check("petal_width" in typo.text, typo.text)
        self.facts["first_version"] = answer.json()["model_version"]

    def retrain(self) -> None:
        job = httpx.post(f"{self.gateway}/retrain", headers=self.auth, timeout=10)
        check(job.status_code == 202, f"/retrain: {job.status_code} {job.text}")
        job_id = job.json()["job_id"]
        self.facts["job_id"] = job_id

        def ended() -> bool:
            record = httpx.get(f"{self.gateway}/jobs/{job_id}", headers=self.auth, timeout=10)
            return record.json()["status"] in ("succeeded", "failed")

        wait_for(ended, 300, "the retrain job")
        record = httpx.get(f"{self.gateway}/jobs/{job_id}", headers=self.auth, timeout=10).json()
        check(record["status"] == "succeeded", f"job {job_id}: {record}")
        version = record["result"]["models"][MODEL]["version"]
        self.facts["new_version"] = version
        [worker, *_] = self.compose.containers("trainer")
        listing = yaml.safe_load(self.compose.exec(worker, "iris-mlops", "models", "--json"))
        tags = next(
            v["tags"] for v in listing if v["name"] == MODEL and str(v["version"]) == version
        )
        pointer = yaml.safe_load((ROOT / "data" / "iris.csv.dvc").read_text())
        commit = _git("rev-parse", "HEAD")
        check(tags.get("data_md5") == pointer["outs"][0]["md5"], f"data_md5 in {tags}")
        check(tags.get("git_commit") == commit, f"git_commit {tags.get('git_commit')} != {commit}")

    def promote(self) -> None:
        version = self.facts["new_version"]
        promoted = httpx.post(
            f"{self.gateway}/promote",
            headers=self.auth,
            json={"model_version": version},
            timeout=30,
        )
        check(promoted.status_code == 200, f"/promote: {promoted.status_code} {promoted.text}")
        asked = time.monotonic()
        replicas = self.compose.containers("predictor")

        def everywhere() -> bool:
            return all(self._served_by(replica) == version for replica in replicas)

        wait_for(everywhere, 60, f"version {version} on every replica")
        took = time.monotonic() - asked
        self.facts["swap_s"] = f"{took:.1f}"
        check(took <= SWAP_WITHIN_S, f"every replica served v{version} after {took:.1f} s")

    def _served_by(self, container: str) -> str:
        script = (
            "import json, urllib.request; print(json.load(urllib.request.urlopen("
            "'http://127.0.0.1:8001/model', timeout=3))['version'])"
        )
        return self.compose.exec(container, "python", "-c", script).strip()

    def feedback(self) -> None:
        answer = httpx.post(f"{self.gateway}/predict", json=SETOSA, timeout=10).json()
        label = {"request_id": answer["request_id"], "actual_species": "Iris-setosa"}

        def labelled() -> bool:
            response = httpx.post(
                f"{self.gateway}/feedback", json=label, headers=self.auth, timeout=10
            )
            return response.status_code == 202

        # The predictor keeps an answer a moment after answering.
        wait_for(labelled, 30, "POST /feedback accepted")

        def scraped() -> bool:
            query = httpx.get(
                f"{self.prometheus}/api/v1/query", params={"query": "iris_live_accuracy"}
            )
            return bool(query.json()["data"]["result"])

        wait_for(scraped, 120, "iris_live_accuracy in Prometheus")
        groups = httpx.get(f"{self.prometheus}/api/v1/rules").json()["data"]["groups"]
        loaded = {rule["name"] for group in groups for rule in group["rules"]}
        expected = _alert_names()
        check(expected <= loaded, f"alert rules not loaded: {sorted(expected - loaded)}")
        self.facts["rules"] = str(len(loaded))

    def failover(self) -> None:
        outcomes: Counter[str] = Counter()
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    try:
                        status = client.post(f"{self.gateway}/predict", json=SETOSA).status_code
                        outcomes[str(status)] += 1
                    except httpx.HTTPError as exc:
                        outcomes[type(exc).__name__] += 1

        clients = [threading.Thread(target=load) for _ in range(4)]
        for client in clients:
            client.start()
        time.sleep(3)
        victim = self.compose.containers("predictor")[0]
        self.compose.engine_run("kill", victim)
        time.sleep(5)
        stop.set()
        for client in clients:
            client.join()
        self.facts["failover"] = str(dict(outcomes))
        check(set(outcomes) == {"200"}, f"requests while {victim} was killed: {dict(outcomes)}")

    def restart(self) -> None:
        replicas = self.compose.containers("predictor")
        lines_before = self._log_lines(replicas[-1])
        exits = self.compose.stop_in_order()
        killed = sorted(name for name, code in exits.items() if code == KILLED)
        # Read before `down` removes them: what a killed container was doing in its grace period.
        for container in killed:
            logs = self.compose.engine_run(
                "logs", "--timestamps", "--tail", "40", container, check=False
            )
            print(f"--- {container} (SIGKILLed)\n{logs.stdout}{logs.stderr}")
        self.compose.run("down")
        check(not killed, f"SIGKILLed after their grace period on down: {killed}")
        start(self.compose, PREDICTORS, WORKERS)
        served = httpx.get(f"{self.gateway}/model", timeout=10).json()["version"]
        check(served == self.facts["new_version"], f"served v{served} after the restart")
        job = httpx.get(f"{self.gateway}/jobs/{self.facts['job_id']}", headers=self.auth)
        check(job.status_code == 200 and job.json()["status"] == "succeeded", job.text)
        lines_after = self._log_lines(self.compose.containers("predictor")[-1])
        check(lines_after >= lines_before > 0, f"log lines {lines_before} -> {lines_after}")

    def _log_lines(self, container: str) -> int:
        count = self.compose.exec(
            container, "sh", "-c", "cat /var/lib/iris/prediction-logs/predictions*.jsonl | wc -l"
        )
        return int(count.strip() or 0)

    def remove(self) -> None:
        self.compose.remove_everything()


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def _alert_names() -> set[str]:
    names = set()
    for path in (ROOT / "infra" / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {rule["alert"] for rule in group["rules"] if "alert" in rule}
    return names


def smoke() -> int:
    work = Path(tempfile.mkdtemp(prefix="iris-compose-smoke-"))
    run = Smoke(work)
    failure = None
    try:
        for name in ("up", "predict", "retrain", "promote", "feedback", "failover", "restart"):
            run.phase(name, getattr(run, name))
    except (Failed, SystemExit) as exc:
        failure = f"{exc}"
        for service in ("bootstrap", "predictor", "gateway", "trainer", "mlflow"):
            for container in run.compose.containers(service, all_states=True):
                logs = run.compose.engine_run("logs", "--tail", "15", container, check=False)
                print(f"--- {container}\n{logs.stdout}{logs.stderr}")
    finally:
        run.remove()
        shutil.rmtree(work, ignore_errors=True)
    print("\ncompose-smoke phases (seconds):")
    for name, seconds in run.timings.items():
        print(f"  {name:<10} {seconds:7.1f}")
    for name, value in run.facts.items():
        print(f"  {name}: {value}")
    if failure:
        print(f"\nFAILED: {failure}")
        return 1
    print(f"\nall phases held ({sum(run.timings.values()):.0f} s)")
    return 0
