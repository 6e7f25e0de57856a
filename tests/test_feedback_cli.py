"""The trainer's side of monitoring, through the CLI in this process: `data add-feedback` on a
git + DVC checkout of its own against a real Redis, `report drift` on a small prediction log,
and the live figures of `models`."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from iris_devstack.processes import free_port
from iris_shared.feedback import FeedbackKeys, LabelledRow
from iris_shared.schemas import FEATURE_NAMES
from iris_trainer import feedback as trainer_feedback
from iris_trainer.cli import main
from iris_trainer.config import get_settings, get_worker_settings
from iris_trainer.dataset import REMOTE_NAME, configure_local_remote, iris_v1_csv
from iris_trainer.pipeline import registry
from iris_trainer.pipeline.data import dvc_recorded_md5, md5_of
from iris_trainer.pipeline.registry import VersionSummary
from tests.support.browser import rendered, title

pytestmark = pytest.mark.integration

V1_ROWS = 150
LR = "Iris-LogisticRegression"
RF = "Iris-RandomForest"


def invoke(args: list[str], **env: str) -> Result:
    """Run the CLI in this process (no interpreter to start) with these settings."""
    get_settings.cache_clear()
    get_worker_settings.cache_clear()
    try:
        return CliRunner().invoke(main, args, env=env)
    finally:
        get_settings.cache_clear()
        get_worker_settings.cache_clear()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def namespace() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git + DVC checkout holding version 1 of data/iris.csv, pushed to its own remote."""
    from dvc.repo import Repo

    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    root = tmp_path / "checkout"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    Repo.init(str(root)).close()
    (root / ".dvc" / "config").write_text(
        f"[core]\n    remote = {REMOTE_NAME}\n    analytics = false\n"
        f"['remote \"{REMOTE_NAME}\"']\n    url = ../dvc-storage\n"
    )
    configure_local_remote(root, tmp_path / "remote")
    data = root / "data" / "iris.csv"
    data.parent.mkdir()
    data.write_bytes(iris_v1_csv())
    with Repo(str(root)) as repo:
        repo.add(str(data))
        repo.push()
    return root


def labelled(features: list[float], actual: str, predicted: str = "Iris-setosa") -> str:
    return LabelledRow(
        request_id=f"req-{uuid.uuid4().hex[:8]}",
        row=0,
        model_version="1",
        features=features,
        predicted_species=predicted,
        actual_species=actual,  # type: ignore[arg-type]
        labelled_at=time.time(),
    ).model_dump_json()


def add_feedback(checkout: Path, redis_url: str, namespace: str, *args: str) -> Result:
    return invoke(
        ["data", "add-feedback", *args],
        TRAINER_REPO_ROOT=str(checkout),
        REDIS_URL=redis_url,
        JOBS_NAMESPACE=namespace,
    )


# --- data add-feedback ------------------------------------------------------------------------


def test_add_feedback_appends_validated_rows_as_a_new_dvc_version(
    checkout: Path, redis_url: str, client: redis.Redis, namespace: str, tmp_path: Path
) -> None:
    keys = FeedbackKeys(namespace)
    data = checkout / "data" / "iris.csv"
    before = data.read_bytes()
    # The gateway's Lua writes whole numbers without a decimal point.
    gateway_written = json.loads(labelled([6.0, 2.2, 5.0, 1.5], "Iris-virginica"))
    gateway_written["features"] = [6, 2.2, 5, 1.5]
    client.rpush(
        keys.labelled,
        labelled([5.0, 3.6, 1.4, 0.3], "Iris-setosa"),
        labelled([6.1, 2.9, 4.6, 1.3], "Iris-versicolor"),
        json.dumps(gateway_written),
    )

    dry = add_feedback(checkout, redis_url, namespace, "--dry-run")

    assert dry.exit_code == 0, dry.output
    assert "Would add 3 rows" in dry.stdout
    assert "6.0,2.2,5.0,1.5,Iris-virginica" in dry.stdout
    assert data.read_bytes() == before
    assert client.llen(keys.labelled) == 3

    # A label that arrives while DVC pushes must stay for the next run.
    record_version = trainer_feedback._record_version
    late = labelled([5.5, 2.5, 4.0, 1.3], "Iris-versicolor")

    def push_while_labelling(repo_root: Path, content: bytes) -> str:
        client.rpush(keys.labelled, late)
        return record_version(repo_root, content)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer_feedback, "_record_version", push_while_labelling)
        added = add_feedback(checkout, redis_url, namespace)

    assert added.exit_code == 0, added.output
    md5 = md5_of(data.read_bytes())
    assert f"Added 3 rows to data/iris.csv ({V1_ROWS + 3} rows now); new md5 {md5}" in added.stdout
    assert data.read_bytes() == before + (
        b"5.0,3.6,1.4,0.3,Iris-setosa\n"
        b"6.1,2.9,4.6,1.3,Iris-versicolor\n"
        b"6.0,2.2,5.0,1.5,Iris-virginica\n"
    )
    assert dvc_recorded_md5(checkout) == md5
    # Pushed: the remote holds the new version's object.
    assert (tmp_path / "remote" / "files" / "md5" / md5[:2] / md5[2:]).exists()
    assert client.lrange(keys.labelled, 0, -1) == [late]


def test_add_feedback_refuses_rows_that_fail_validation_and_changes_nothing(
    checkout: Path, redis_url: str, client: redis.Redis, namespace: str
) -> None:
    keys = FeedbackKeys(namespace)
    data = checkout / "data" / "iris.csv"
    before, pointer = data.read_bytes(), (checkout / "data" / "iris.csv.dvc").read_bytes()
    # The first flower of the data set, labelled with another species.
    contradiction = labelled([5.1, 3.5, 1.4, 0.2], "Iris-virginica")
    client.rpush(keys.labelled, labelled([5.0, 3.6, 1.4, 0.3], "Iris-setosa"), contradiction)

    refused = add_feedback(checkout, redis_url, namespace)

    assert refused.exit_code == 1
    assert "fails validation; nothing was added" in refused.stderr
    assert "different species" in refused.stderr
    assert LabelledRow.model_validate_json(contradiction).request_id in refused.stderr
    assert data.read_bytes() == before
    assert (checkout / "data" / "iris.csv.dvc").read_bytes() == pointer
    assert client.llen(keys.labelled) == 2


def test_a_failed_push_puts_the_data_back_and_keeps_the_rows(
    checkout: Path, redis_url: str, client: redis.Redis, namespace: str, tmp_path: Path
) -> None:
    from dvc.repo import Repo

    keys = FeedbackKeys(namespace)
    data = checkout / "data" / "iris.csv"
    before, pointer = data.read_bytes(), (checkout / "data" / "iris.csv.dvc").read_bytes()
    # A remote that is a file: every push to it fails.
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    with Repo(str(checkout)) as repo, repo.config.edit("local") as conf:
        conf["remote"][REMOTE_NAME]["url"] = str(blocked / "remote")
    client.rpush(keys.labelled, labelled([5.0, 3.6, 1.4, 0.3], "Iris-setosa"))

    failed = add_feedback(checkout, redis_url, namespace)

    assert failed.exit_code == 1
    assert "put back as it was" in failed.stderr
    assert data.read_bytes() == before
    assert (checkout / "data" / "iris.csv.dvc").read_bytes() == pointer
    assert client.llen(keys.labelled) == 1


def test_add_feedback_with_nothing_waiting_or_redis_down(
    checkout: Path, redis_url: str, namespace: str
) -> None:
    nothing = add_feedback(checkout, redis_url, namespace)
    down = add_feedback(checkout, f"redis://127.0.0.1:{free_port()}/0", namespace)

    assert nothing.exit_code == 0
    assert "No labelled rows are waiting" in nothing.stdout
    assert down.exit_code == 1
    assert "cannot reach Redis" in down.stderr


# --- report drift -----------------------------------------------------------------------------


def write_log(folder: Path) -> None:
    """A prediction log as the predictor writes it: two processes' files, one rotated, and a
    line cut short."""
    folder.mkdir(parents=True)

    def line(version: str, rows: list[list[float]], species: str) -> str:
        inputs = {name: [row[i] for row in rows] for i, name in enumerate(FEATURE_NAMES)}
        return json.dumps(
            {
                "time": "2026-01-01T00:00:00.000+00:00",
                "request_id": uuid.uuid4().hex,
                "model_version": version,
                "latency_ms": 1.0,
                "rows": len(rows),
                "inputs": inputs,
                "predicted_species": [species] * len(rows),
            }
        )

    setosa = [[5.0 + i / 10, 3.4, 1.5, 0.2] for i in range(5)]
    virginica = [[6.5, 3.0, 5.5 + i / 10, 2.0] for i in range(5)]
    (folder / "predictions.jsonl").write_text(
        line("1", setosa, "Iris-setosa") + "\n" + '{"model_version": "1", "inp\n'
    )
    (folder / "predictions-1.jsonl.1").write_text(line("2", virginica, "Iris-virginica") + "\n")


def test_report_drift_writes_an_html_report_naming_every_feature(
    checkout: Path, tmp_path: Path
) -> None:
    logs = tmp_path / "prediction-logs"
    write_log(logs)
    output = tmp_path / "out" / "drift.html"

    result = invoke(
        ["report", "drift", "--log-dir", str(logs), "--output", str(output)],
        TRAINER_REPO_ROOT=str(checkout),
    )

    assert result.exit_code == 0, result.output
    page = output.read_text()
    for name in FEATURE_NAMES:
        assert name in page
        assert name in result.stdout
    assert "v1 (5 rows), v2 (5 rows)" in page
    assert "1 unreadable log line(s)" in page
    assert f"10 live rows vs. {V1_ROWS} training rows" in result.stdout
    # As a person sees it, offline: Evidently's scripts are in the page and draw its tables.
    shown = rendered(output.as_uri())
    assert title(shown) == "iris-mlops: input drift, live vs. training"
    drawn_cells = re.findall(r'<td class="MuiTableCell-root[^>]*>([a-z_]+)<', shown)
    assert set(FEATURE_NAMES) <= set(drawn_cells)

    only_v2 = invoke(
        [
            "report",
            "drift",
            "--log-dir",
            str(logs),
            "--output",
            str(output),
            "--model-version",
            "2",
        ],
        TRAINER_REPO_ROOT=str(checkout),
    )
    assert only_v2.exit_code == 0, only_v2.output
    assert f"5 live rows vs. {V1_ROWS} training rows" in only_v2.stdout


def test_report_drift_without_a_log_says_where_it_looked(checkout: Path, tmp_path: Path) -> None:
    result = invoke(
        ["report", "drift", "--log-dir", str(tmp_path / "nowhere")],
        TRAINER_REPO_ROOT=str(checkout),
    )

    assert result.exit_code == 1
    assert "no prediction log in" in result.stderr
    assert "nowhere" in result.stderr


# --- models: live figures ---------------------------------------------------------------------


def version(name: str, number: str, aliases: list[str]) -> VersionSummary:
    return VersionSummary(
        name=name,
        version=number,
        aliases=aliases,
        run_id=None,
        metrics={"accuracy": 0.97, "f1_macro": 0.97},
        tags={},
        created_at_ms=0,
    )


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry `models` lists, without an MLflow server (its part has tests of its own)."""
    versions = [
        version(LR, "1", ["production"]),
        version(LR, "2", ["challenger"]),
        version(LR, "3", []),
        version(RF, "1", ["production"]),
    ]

    def list_versions(client: Any, names: list[str] | None = None) -> list[VersionSummary]:
        return versions

    monkeypatch.setattr(registry, "list_versions", list_versions)


def models(redis_url: str, namespace: str, *args: str) -> Result:
    return invoke(
        ["models", *args],
        REDIS_URL=redis_url,
        JOBS_NAMESPACE=namespace,
        PREDICTOR_MODEL_NAME=LR,
    )


def row_of(output: str, name: str, number: str) -> str:
    return next(line for line in output.splitlines() if line.split()[:2] == [name, number])


def live_columns(shadow: str, live: str) -> str:
    """The end of a version's line: SHADOW, then LIVE."""
    return f"{shadow:<14}{live}"


@pytest.mark.usefixtures("registered")
def test_models_shows_shadow_agreement_and_live_accuracy(
    redis_url: str, client: redis.Redis, namespace: str
) -> None:
    keys = FeedbackKeys(namespace)
    client.hset(keys.shadow_counts("2"), mapping={"agree": 3, "disagree": 1})
    client.lpush(keys.outcomes("1"), 1, 0, 1)

    listed = models(redis_url, namespace)
    as_json = models(redis_url, namespace, "--json")

    assert listed.exit_code == 0, listed.output
    assert "SHADOW" in listed.stdout
    assert "LIVE" in listed.stdout
    assert row_of(listed.stdout, LR, "1").endswith(live_columns("-", "67% (3)"))
    assert row_of(listed.stdout, LR, "2").endswith(live_columns("75% (4)", "-"))
    assert row_of(listed.stdout, LR, "3").endswith(live_columns("-", "-"))
    # Redis keeps the figures by version number: only the served model's versions get them.
    assert row_of(listed.stdout, RF, "1").endswith(live_columns("-", "-"))
    listing = {(v["name"], v["version"]): v for v in json.loads(as_json.stdout)}
    assert listing[LR, "2"]["shadow_agreement"] == {"value": 0.75, "count": 4}
    assert listing[LR, "1"]["live_accuracy"] == {"value": pytest.approx(2 / 3), "count": 3}
    assert listing[LR, "1"]["shadow_agreement"] is None
    assert listing[RF, "1"]["live_accuracy"] is None


@pytest.mark.usefixtures("registered")
def test_models_lists_the_registry_when_redis_is_down(namespace: str) -> None:
    listed = models(f"redis://127.0.0.1:{free_port()}/0", namespace)

    assert listed.exit_code == 0, listed.output
    assert "live figures unavailable" in listed.stderr
    assert row_of(listed.stdout, LR, "1").endswith(live_columns("-", "-"))
