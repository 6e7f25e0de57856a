"""`make profile`: where one server worker's time goes under load, recorded with py-spy.

In order:
  1. the second local stack `make bench` uses (iris_devstack.private_stack: a private Redis, free
     ports, its own state folder and token; it trains the baseline, version 1);
  2. for each load (predictor `POST /predict` one row at 32 connections, predictor
     `POST /predict/batch` with 1,000 rows at 4 connections, gateway `POST /predict` one row at
     32 connections): a wrk warm-up, then wrk again while `py-spy record --gil` samples the
     worker process that was busier during the warm-up;
  3. the collapsed stacks summed per thread, per frame (self and inclusive) and per library;
  4. bench/profile.json, bench/profile.md, and the Markdown printed.

`--gil` samples only the thread that holds the GIL, so every share is of the worker's Python
time. Time in C code that keeps the GIL (uvloop, pydantic-core, orjson, numpy) lands on
the Python frame that called it; time with the GIL released (waiting in epoll, BLAS) is not
sampled at all: samples / (rate * seconds) is how much of the time the GIL was held.

Settings: PROFILE_SECONDS (10 per load), BENCH_WARMUP_SECONDS (3); BENCH_KEEP_STATE=1 keeps the
work folder with py-spy's raw stacks (flamegraph.pl draws them). Run from the repository root:
`python -m bench.profile`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from bench.config import BATCH_CONNECTIONS, BATCH_ROWS, CONNECTIONS, ROOT, BenchSettings
from bench.console import say
from bench.loads import (
    FLOWER,
    Body,
    Load,
    Target,
    WrkResult,
    check_answers,
    describe,
    iris_flowers,
    predictor_batch,
    run_wrk,
    wrk_version,
)
from bench.report import profile_markdown, write
from bench.session import Session
from iris_devstack.private_stack import PrivateStack

PROFILE_JSON = ROOT / "bench" / "profile.json"
SAMPLE_RATE = 200
TOP_FRAMES = 15
# wrk starts this long before py-spy and stops this long after it, so every sample is under load.
LOAD_MARGIN_S = 1.5
PROJECT = "this project"
PROJECT_FOLDERS = ("services/", "shared/", "bench/")
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve().as_posix() + "/"
# Packages that make one layer of the serving path are read as one; others keep their name.
BUCKETS = {
    "uvicorn": "uvicorn/httptools",
    "httptools": "uvicorn/httptools",
    "uvloop": "uvicorn/httptools",
    "starlette": "starlette/fastapi",
    "fastapi": "starlette/fastapi",
    "sklearn": "scikit-learn",
    "orjson": "orjson/msgspec",
    "msgspec": "orjson/msgspec",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic",
    "concurrent": "concurrent.futures",
}
# multiprocessing's spawn bootstrap lies under every stack of a worker's main thread: its
# inclusive share only repeats that thread's, so it is left out of the library table.
BOOTSTRAP = {"<string>", "multiprocessing", "runpy"}
FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*):\d+\)$")
THREAD = re.compile(r"^thread \((?P<tid>\d+)\)(?:: (?P<name>.*))?$")


class ProfileError(RuntimeError):
    pass


def py_spy_binary() -> str:
    in_venv = Path(sys.executable).parent / "py-spy"
    if in_venv.exists():
        return str(in_venv)
    found = shutil.which("py-spy")
    if found is None:
        raise ProfileError("py-spy is not installed; `make install` puts it in .venv")
    return found


def worker_pids(server_pid: int) -> list[int]:
    """uvicorn's worker processes: the server's children started by multiprocessing's spawn
    (its resource tracker is a child too, and is left out)."""
    workers = []
    for children in Path(f"/proc/{server_pid}/task").glob("*/children"):
        for pid in map(int, children.read_text().split()):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                workers.append(pid)
    return sorted(workers)


def cpu_seconds(pid: int) -> float:
    # utime and stime: fields 14 and 15 of stat, counted from the `)` that ends the name.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def locate(path: str) -> tuple[str, str]:
    """A frame's file as the report shows it, and the bucket it belongs to."""
    if "/site-packages/" in path:
        short = path.rsplit("/site-packages/", 1)[1]
    elif path.startswith(STDLIB):
        short = path.removeprefix(STDLIB)
    elif path.startswith(f"{ROOT}/"):
        short = path.removeprefix(f"{ROOT}/")
        return short, PROJECT if short.startswith(PROJECT_FOLDERS) else short
    else:
        return path, path  # <frozen ...> and the like
    package = short.split("/", 1)[0].removesuffix(".py")
    return short, BUCKETS.get(package, package)


def aggregate(raw: Path) -> dict[str, Any]:
    """Sum py-spy's collapsed stacks (`thread (TID): NAME;frame;...;leaf COUNT`)."""
    threads: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    bucket_self: Counter[str] = Counter()
    bucket_inclusive: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        named = THREAD.match(thread)
        tid = named["tid"] if named else "?"
        threads[named["name"] if named and named["name"] else f"(no name, thread {tid})"] += count
        located = []
        for frame in frames:
            parsed = FRAME.match(frame)
            short, bucket = locate(parsed["path"]) if parsed else (frame, frame)
            function = parsed["function"] if parsed else frame
            located.append((f"{function} ({short})", bucket))
        if not located:
            continue
        self_time[located[-1][0]] += count
        bucket_self[located[-1][1]] += count
        # A frame or bucket counts once per stack, however often recursion repeats it.
        inclusive.update(dict.fromkeys({k for k, b in located if b == PROJECT}, count))
        bucket_inclusive.update(dict.fromkeys({b for _, b in located} - BOOTSTRAP, count))
    samples = sum(threads.values())

    def ranked(
        counter: Counter[str], key: str, top: int | None = TOP_FRAMES
    ) -> list[dict[str, Any]]:
        return [
            {key: name, "samples": n, "share": round(n / samples, 4)}
            for name, n in counter.most_common(top)
        ]

    buckets = ranked(bucket_inclusive, "bucket", None)
    for row in buckets:
        row["self_share"] = round(bucket_self[row["bucket"]] / samples, 4)
    return {
        "samples": samples,
        "threads": ranked(threads, "thread", None),
        "self": ranked(self_time, "frame"),
        "inclusive_project": ranked(inclusive, "frame"),
        "buckets": buckets,
    }


def profile_load(
    program: str, load: Load, stack: PrivateStack, folder: Path, seconds: int, warmup_seconds: int
) -> dict[str, Any]:
    """Warm up, pick the busier worker, record it under load; the figures for the report."""
    server = stack.pid(program)
    if server is None:
        raise ProfileError(f"supervisord reports no process for {program}")
    workers = worker_pids(server)
    if not workers:
        raise ProfileError(f"{program} (pid {server}) has no worker processes")
    before = {pid: cpu_seconds(pid) for pid in workers}
    run_wrk(load.target, warmup_seconds, load.connections)
    worker = max(workers, key=lambda pid: cpu_seconds(pid) - before[pid])

    raw = folder / f"{load.target.name}.txt"
    command = [
        *(py_spy_binary(), "record", "--pid", str(worker), "--duration", str(seconds)),
        *("--rate", str(SAMPLE_RATE), "--threads", "--gil", "--nonblocking"),
        # Whole paths: the short ones drop the folder that tells project code from libraries.
        *("--full-filenames", "--format", "raw", "--output", str(raw)),
    ]
    say(f"profiling {load.target.name}: {load.request}, worker {worker} of {workers}")
    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(run_wrk, load.target, seconds + 2 * LOAD_MARGIN_S, load.connections)
        time.sleep(LOAD_MARGIN_S)
        started, cpu_before = time.monotonic(), cpu_seconds(worker)
        recorded = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        worker_cores = (cpu_seconds(worker) - cpu_before) / (time.monotonic() - started)
        result: WrkResult = loading.result()
    if recorded.returncode != 0 or not raw.exists():
        raise ProfileError(f"py-spy failed (exit {recorded.returncode}):\n{recorded.stderr}")
    say(f"{load.target.name}: {describe(result)}")
    profile = aggregate(raw)
    return {
        "name": load.target.name,
        "request": load.request,
        "url": load.target.url,
        "connections": load.connections,
        "worker_pid": worker,
        "worker_pids": workers,
        "wrk": result.as_dict(),
        "worker_cpu_cores": round(worker_cores, 2),
        "gil_held_share": round(profile["samples"] / (SAMPLE_RATE * seconds), 3),
        **profile,
    }


def profiled_loads(stack: PrivateStack, bodies: Path) -> list[tuple[str, Load]]:
    """Each load with the supervisord program whose worker is recorded under it."""
    one = Body.write(bodies, "one", FLOWER, 1)
    batch = Body.write(bodies, "batch", predictor_batch(iris_flowers(BATCH_ROWS)), BATCH_ROWS)
    predictor, gateway = f"{stack.predictor_url}/predict", f"{stack.gateway_url}/predict"
    return [
        (
            "predictor",
            Load(Target("predictor", predictor, one), CONNECTIONS, "POST /predict, one row"),
        ),
        (
            "predictor",
            Load(
                Target("predictor-batch", f"{predictor}/batch", batch),
                BATCH_CONNECTIONS,
                f"POST /predict/batch, {BATCH_ROWS:,} rows",
            ),
        ),
        (
            "gateway",
            Load(Target("gateway", gateway, one), CONNECTIONS, "POST /predict (gateway), one row"),
        ),
    ]


def main() -> int:
    seconds = int(os.environ.get("PROFILE_SECONDS") or 10)
    settings = BenchSettings.from_env()
    wrk = wrk_version()  # fails at once when wrk is missing
    version = [py_spy_binary(), "--version"]
    py_spy = subprocess.run(version, capture_output=True, text=True, check=True).stdout.strip()
    # The settings of this run in front, as someone would retype the command.
    overrides = [
        f"{k}={v}"
        for k, v in sorted(os.environ.items())
        if v and (k == "PROFILE_SECONDS" or k.startswith("BENCH_")) and k != "BENCH_NOTE"
    ]
    with Session("profile", " ".join([*overrides, "make profile"])) as session:
        stack = session.stack
        say("starting the bench stack (python -m iris_devstack up; trains the baseline)")
        stack.start_redis()
        stack.up()
        bodies = session.work / "bodies"
        bodies.mkdir()
        loads = profiled_loads(stack, bodies)
        for _, load in loads:
            check_answers(load.target)
        profiled = [
            profile_load(program, load, stack, session.work, seconds, settings.warmup_seconds)
            for program, load in loads
        ]
        session.finished = True
    results = session.results | {
        "seconds": seconds,
        "warmup_seconds": settings.warmup_seconds,
        "sample_rate": SAMPLE_RATE,
        "py_spy": py_spy,
        "wrk": wrk,
        "loads": profiled,
    }
    results |= session.closing()
    write(
        results,
        PROFILE_JSON,
        partial(profile_markdown, top=TOP_FRAMES, project=", ".join(PROJECT_FOLDERS)),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
