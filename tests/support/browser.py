"""Pages as a person sees them: loaded by a real headless Chromium, their scripts run, and the
resulting document returned (Debian's `chromium`, installed by scripts/ensure_tools.sh).

A page that loads its scripts from a CDN renders nothing here (this machine reaches no CDN),
as it would behind a firewall: the check is the point, not an accident of the test machine.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import tempfile

import pytest

# Scripts, their fetches and their timers may run for this long (Chromium's virtual time: a
# page that is done earlier returns at once).
_RENDER_BUDGET_MS = 20_000


def chromium() -> str:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("chromium is not installed: scripts/ensure_tools.sh installs it (make test)")
    return binary


def rendered(url: str) -> str:
    """The document of `url` (http:// or file://) once its scripts have run, as HTML."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        completed = subprocess.run(
            [
                chromium(),
                "--headless",
                # Root in a container has no user namespace for the sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={_RENDER_BUDGET_MS}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout


def title(document: str) -> str:
    """The document's title (the one in <head>, not an SVG's)."""
    head = re.search(r"<head>(.*?)</head>", document, re.DOTALL)
    found = re.search(r"<title>(.*?)</title>", head.group(1) if head else "", re.DOTALL)
    return html.unescape(found.group(1).strip()) if found else ""
