"""The one report writer of `make bench`, `make soak` and `make profile`: the results as JSON
with every figure, and as Markdown from bench/templates/ (Jinja), the goals' table in the
README too."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jinja2

README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


def cell(value: Any, digits: int = 1) -> str:
    """A table cell: numbers with thousands separators, None as `-`."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def provenance(results: dict[str, Any]) -> str:
    git, host = results["git"], results["machine"]
    commit = git["commit"][:10] + (" with uncommitted changes" if git["dirty"] else "")
    return (
        f"Measured {results['timestamp']} on commit {commit}, {host['cores']} cores "
        f"({host['cpu']}), by `{results['command']}` in {results['elapsed_s'] / 60:.1f} min."
    )


def verdicts(results: dict[str, Any], key: str = "goals") -> str:
    """The goals (or the soak's checks) as a table, how many were met, and the provenance."""
    records, ratio = results[key], key == "goals"
    lines = [
        f"| {key[:-1].capitalize()} | Target | Measured |{' Ratio |' * ratio} Met |",
        "|---|---|---|---|" + "---|" * ratio,
    ]
    for r in records:
        shown = "-" if r.get("ratio") is None else f"{r['ratio']:.3g}x"
        cells = [r.get("goal") or r.get("check"), r["target"], r["measured"], *[shown] * ratio]
        lines.append("| " + " | ".join([*cells, "✅" if r["met"] else "❌"]) + " |")
    met = sum(1 for r in records if r["met"])
    return "\n".join(lines) + f"\n\n{met} of {len(records)} {key} met. {provenance(results)}"


# Markdown, not HTML: nothing to escape.
TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,  # noqa: S701
)
TEMPLATES.filters.update(n=cell, f=format, pct=lambda share: f"{share * 100:.1f}%")
TEMPLATES.globals.update(verdicts=verdicts, provenance=provenance)


def render(template: str, results: dict[str, Any]) -> str:
    return TEMPLATES.get_template(template).render(results, run=results)


def write(results: dict[str, Any], json_path: Path, template: str) -> None:
    """The results as JSON, and as Markdown beside it (same name, `.md`), printed too."""
    markdown = render(template, results)
    json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    json_path.with_suffix(".md").write_text(markdown)
    print(markdown)


def update_readme(readme: Path, results: dict[str, Any]) -> bool:
    """Replace the goals table between the bench markers; False when the markers are missing."""
    text = readme.read_text()
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.DOTALL)
    block = f"{README_START}\n{verdicts(results)}\n{README_END}"
    readme.write_text(pattern.sub(lambda _: block, text, count=1))
    return pattern.search(text) is not None
