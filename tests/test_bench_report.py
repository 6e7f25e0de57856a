"""The one report writer of `make bench`, `make soak` and `make profile`: table cells, the
provenance line, the goals table and the README block, and each command's results JSON
rendered again as the Markdown it wrote beside it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench import report as common
from bench.common import ROOT
from bench.measurements import tree_memory
from iris_devstack.processes import child_pids, wait_until

RESULTS = {
    "timestamp": "2026-12-06T04:59:54+00:00",
    "command": "BENCH_ROUNDS=1 make bench",
    "git": {"commit": "2ec3830d4e0123456789", "dirty": True, "changed_files": ["x"]},
    "machine": {"cores": 2, "cpu": "Intel(R) Xeon(R) Processor"},
    "elapsed_s": 606.0,
    "goals": [
        {"goal": "Predictor vs mlflow", "target": "≥ 10x", "measured": "8,101 vs 584 req/s",
         "ratio": 13.883, "met": True},
        {"goal": "Gateway errors", "target": "0", "measured": "2", "ratio": None, "met": False},
    ],
}  # fmt: skip


def test_a_cell_formats_numbers_with_separators_and_blanks_as_a_dash() -> None:
    cells = [common.cell(v) for v in (8100.84, None, 1234, "predictor", True)]
    assert cells == ["8,100.8", "-", "1,234", "predictor", "True"]
    assert common.cell(0.103, 2) == "0.10"


def test_the_provenance_names_time_commit_machine_command_and_duration() -> None:
    assert common.provenance(RESULTS) == (
        "Measured 2026-12-06T04:59:54+00:00 on commit 2ec3830d4e with uncommitted changes, "
        "2 cores (Intel(R) Xeon(R) Processor), by `BENCH_ROUNDS=1 make bench` in 10.1 min."
    )


def test_goals_render_with_ratio_and_count_and_checks_without_ratio() -> None:
    goals = common.verdicts(RESULTS).splitlines()
    assert goals[0] == "| Goal | Target | Measured | Ratio | Met |"
    assert goals[2] == "| Predictor vs mlflow | ≥ 10x | 8,101 vs 584 req/s | 13.9x | ✅ |"
    assert goals[3] == "| Gateway errors | 0 | 2 | - | ❌ |"
    assert goals[-1].startswith("1 of 2 goals met. Measured 2026-12-06")
    checks = [{"check": "Lost jobs", "target": "0", "measured": "0 of 4", "met": True}]
    lines = common.verdicts(RESULTS | {"checks": checks}, "checks").splitlines()
    assert lines[:3] == ["| Check | Target | Measured | Met |", "|---|---|---|---|",
                         "| Lost jobs | 0 | 0 of 4 | ✅ |"]  # fmt: skip
    assert lines[-1].startswith("1 of 1 checks met.")


def test_the_readme_block_between_the_markers_is_replaced(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n{common.README_START}\nold table\n{common.README_END}\nafter\n")
    assert common.update_readme(readme, RESULTS) is True
    text = readme.read_text()
    assert "old table" not in text
    assert text.startswith(f"# Title\n{common.README_START}\n| Goal | Target |")
    assert text.endswith(f"in 10.1 min.\n{common.README_END}\nafter\n")
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert common.update_readme(plain, RESULTS) is False
    assert plain.read_text() == "no markers\n"


@pytest.mark.parametrize(
    ("results", "template"),
    [
        ("bench/results.json", "bench.md"),
        ("bench/soak-results.json", "soak.md"),
        ("bench/profile.json", "profile.md"),
    ],
)
def test_the_written_results_render_again_as_written(results: str, template: str) -> None:
    """The results files are committed with the code that wrote them: rendered again from their
    JSON, byte for byte the Markdown beside it."""
    written = json.loads((ROOT / results).read_text())
    assert common.render(template, written) == (ROOT / results).with_suffix(".md").read_text()


@pytest.mark.integration
def test_a_process_trees_memory_sums_every_process_in_it() -> None:
    """A shell and its two children: three processes, the largest no more than the sum."""
    shell = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        wait_until(lambda: len(child_pids(shell.pid)) == 2, timeout=10)
        memory = tree_memory(shell.pid)
    finally:
        shell.kill()
        shell.wait()
    assert memory is not None
    assert memory["processes"] == len(memory["pids"]) == 3
    assert memory["pids"][0] == shell.pid
    assert 0 < memory["largest_rss_mib"] <= memory["rss_mib"]
    assert memory["pss_mib"] <= memory["rss_mib"]
    assert tree_memory(None) is None


def test_the_results_are_written_as_json_and_markdown_side_by_side(tmp_path: Path) -> None:
    results = json.loads((ROOT / "bench" / "profile.json").read_text())
    common.write(results, tmp_path / "profile.json", "profile.md")
    assert json.loads((tmp_path / "profile.json").read_text()) == results
    assert (tmp_path / "profile.md").read_text() == (ROOT / "bench" / "profile.md").read_text()
