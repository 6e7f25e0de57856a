"""Run wrk against one URL and read back the JSON line its Lua script prints.

wrk counts an answer with status 400 or more as a status error; none of the routes measured
here redirects, so "not an error" means a 2xx answer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.config import WRK_THREADS, WRK_TIMEOUT

LUA_SCRIPT = Path(__file__).with_name("wrk_report.lua")
RESULT_PREFIX = "BENCH_WRK_RESULT "


class WrkError(RuntimeError):
    pass


@dataclass(frozen=True)
class Target:
    """One request shape against one server: what a round of load sends."""

    name: str
    url: str
    body_file: Path | None
    rows_per_request: int = 1
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def method(self) -> str:
        return "POST" if self.body_file is not None else "GET"

    def request_headers(self) -> dict[str, str]:
        """The headers every request of this target carries, as wrk sends them."""
        return {"Content-Type": self.content_type, **dict(self.headers)}


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: dict[str, int]
    latency_ms: dict[str, float]
    rows_per_request: int

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def ok_requests_per_s(self) -> float:
        # Only 2xx answers count: a server that answers errors fast must not look fast.
        return (self.requests - self.errors["status"]) / self.duration_s

    @property
    def ok_rows_per_s(self) -> float:
        return self.ok_requests_per_s * self.rows_per_request

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "requests_per_s": round(self.ok_requests_per_s, 1),
            "rows_per_s": round(self.ok_rows_per_s, 1),
            "failed": self.failed,
        }


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise WrkError("wrk is not installed; `make bench` installs it (bench/ensure_wrk.sh)")
    return found


def wrk_version() -> str:
    completed = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, check=False)
    first_line = (completed.stdout or completed.stderr).splitlines()[:1]
    return first_line[0].split("Copyright")[0].strip() if first_line else "unknown"


def run_wrk(target: Target, seconds: float, connections: int) -> WrkResult:
    command = [
        wrk_binary(),
        f"-t{min(WRK_THREADS, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        WRK_TIMEOUT,
        "-s",
        str(LUA_SCRIPT),
        target.url,
    ]
    env = {
        "PATH": "/usr/bin:/bin",
        "BENCH_WRK_METHOD": target.method,
        "BENCH_WRK_BODY_FILE": str(target.body_file or ""),
        "BENCH_WRK_CONTENT_TYPE": target.content_type,
        "BENCH_WRK_HEADERS": "\n".join(f"{name}: {value}" for name, value in target.headers),
    }
    completed = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            raw = json.loads(line.removeprefix(RESULT_PREFIX))
            return WrkResult(
                requests=int(raw["requests"]),
                duration_s=float(raw["duration_s"]),
                errors={k: int(v) for k, v in raw["errors"].items()},
                latency_ms={k: float(v) for k, v in raw["latency_ms"].items()},
                rows_per_request=target.rows_per_request,
            )
    raise WrkError(
        f"wrk gave no result for {target.name} (exit {completed.returncode}):\n"
        f"{completed.stdout}\n{completed.stderr}"
    )
