"""The prediction log rotates its files as logging's RotatingFileHandler does, slot by slot."""

from __future__ import annotations

import logging
import threading
from logging.handlers import RotatingFileHandler
from pathlib import Path

import pytest

from iris_predictor import prediction_log
from iris_predictor.prediction_log import LOG_FILE, PredictionLog, log_files


def _contents(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in log_files(directory)}


def _with_the_library(directory: Path, lines: list[bytes], max_bytes: int, backups: int) -> None:
    handler = RotatingFileHandler(
        directory / LOG_FILE, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    for line in lines:
        handler.emit(logging.makeLogRecord({"msg": line.decode()}))
    handler.close()


@pytest.mark.parametrize(("max_bytes", "backups"), [(200, 3), (120, 1), (200, 0), (10_000, 2)])
def test_files_and_contents_match_rotating_file_handler(
    tmp_path: Path, max_bytes: int, backups: int
) -> None:
    lines = [b'{"request_id": "%d", "rows": %d}' % (i, i * 7) for i in range(40)]
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    theirs.mkdir()
    log = PredictionLog(ours, max_bytes, backups)
    log.open()
    for line in lines:
        log.write([line + b"\n"])
    log.close()
    _with_the_library(theirs, lines, max_bytes, backups)

    assert _contents(ours) == _contents(theirs)
    assert len(_contents(ours)) == (backups + 1 if max_bytes < 1000 else 1)


def test_lines_written_together_and_after_a_restart_follow_each_other(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, 1 << 20, 2)
    log.open()
    log.write([b'{"a": 1}\n', b'{"b": 2}\n'])
    log.close()
    log = PredictionLog(tmp_path, 1 << 20, 2)
    assert log.open() == tmp_path / LOG_FILE
    log.write([b'{"c": 3}\n'])
    log.close()

    assert (tmp_path / LOG_FILE).read_bytes() == b'{"a": 1}\n{"b": 2}\n{"c": 3}\n'


def test_a_second_process_slot_gets_a_file_of_its_own(tmp_path: Path) -> None:
    first, second = PredictionLog(tmp_path, 1 << 20, 1), PredictionLog(tmp_path, 1 << 20, 1)
    assert first.open() == tmp_path / LOG_FILE
    assert second.open() == tmp_path / "predictions-1.jsonl"
    first.close()
    second.close()


def test_a_rotation_does_not_wait_for_the_oldest_file_to_be_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removing a large file can take the file system a long while; lines keep being written
    meanwhile, and the file is gone once the log is closed."""
    removing = threading.Event()
    release = threading.Event()
    original = prediction_log._remove

    def slow_remove(path: Path) -> None:
        removing.set()
        assert release.wait(10)
        original(path)

    monkeypatch.setattr(prediction_log, "_remove", slow_remove)
    log = PredictionLog(tmp_path, 20, 1)
    log.open()
    for line in (b'{"n": 1}', b'{"n": 2}', b'{"n": 3}', b'{"n": 4}'):
        log.write([b"%s %s\n" % (line, b"x" * 10)])
    assert removing.wait(10), "the oldest file went to the remover"
    assert (tmp_path / f"{LOG_FILE}.1").read_bytes().startswith(b'{"n": 3}')
    assert (tmp_path / LOG_FILE).read_bytes().startswith(b'{"n": 4}')
    release.set()
    log.close()
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.endswith(".lock")) == [
        LOG_FILE,
        f"{LOG_FILE}.1",
    ]


def test_files_a_dead_predecessor_left_to_remove_are_removed_when_its_slot_is_taken(
    tmp_path: Path,
) -> None:
    left = tmp_path / f".{LOG_FILE}.5.expired-0"
    left.write_bytes(b"old lines\n")
    other_slot = tmp_path / ".predictions-1.jsonl.5.expired-0"
    other_slot.write_bytes(b"another process's\n")
    log = PredictionLog(tmp_path, 1 << 20, 5)
    log.open()
    log.close()
    assert not left.exists()
    assert other_slot.exists()
