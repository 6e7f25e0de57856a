"""`make profile`: where one server worker's time goes under load, recorded with py-spy.

On the second local stack `make bench` uses, for each of the predictor's one-row and batch
loads and the gateway's one-row load (bench/loads.py): a wrk warm-up, then wrk again while
`py-spy record --gil` samples every worker process; the busiest one's collapsed stacks summed
per thread, per frame (self and inclusive) and per library, into bench/profile.json and
bench/profile.md.

`--gil` samples only the thread that holds the GIL, so every share is of the worker's Python
time; time with the GIL released (epoll, BLAS) is not sampled at all: samples / (rate *
seconds) is how much of the time the GIL was held.

Settings: PROFILE_SECONDS (10 per load), BENCH_WARMUP_SECONDS (3); BENCH_KEEP_STATE=1 keeps the
work folder with py-spy's raw stacks (flamegraph.pl draws them).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import loads
from bench.common import ROOT, Session, command_line, say, setting
from bench.report import write
from iris_devstack.private_stack import PrivateStack
from iris_devstack.processes import REPO_ROOT, child_pids, proc_stat

SAMPLE_RATE, TOP_FRAMES = 200, 15
# wrk starts this long before py-spy and stops this long after it, so every sample is under load.
LOAD_MARGIN_S = 1.5
# Each load and the supervisord program whose worker is recorded under it.
PROFILED = {"predictor": "predictor", "predictor-batch": "predictor", "gateway": "gateway"}
PROJECT, PROJECT_FOLDERS = "this project", ("services/", "shared/", "bench/")
# This checkout, and the one the stack's services run from (the same one, unless the bench runs
# from a git worktree with the main checkout's environment).
CHECKOUTS = {f"{ROOT}/", f"{REPO_ROOT}/"}
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve().as_posix() + "/"
# Packages that make one layer of the serving path are read as one; others keep their name.
BUCKETS = {
    **dict.fromkeys(("uvicorn", "httptools", "uvloop"), "uvicorn/httptools"),
    **dict.fromkeys(("starlette", "fastapi"), "starlette/fastapi"),
    **dict.fromkeys(("orjson", "msgspec"), "orjson/msgspec"),
    **{"sklearn": "scikit-learn", "pydantic_core": "pydantic", "concurrent": "concurrent.futures"},
}
# multiprocessing's spawn bootstrap lies under every stack of a worker's main thread: its
# inclusive share only repeats that thread's, so it is left out of the library table.
BOOTSTRAP = {"<string>", "multiprocessing", "runpy"}
FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*):\d+\)$")
THREAD = re.compile(r"^thread \((?P<tid>\d+)\)(?:: (?P<name>.*))?$")
PY_SPY = str(Path(sys.executable).parent / "py-spy")


def cpu_seconds(pid: int) -> float:
    utime, stime = proc_stat(pid)[11:13]  # fields 14 and 15 of /proc/<pid>/stat
    return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")


def locate(path: str) -> tuple[str, str]:
    """A frame's file as the report shows it, and the bucket it belongs to."""
    if "/site-packages/" in path:
        short = path.rsplit("/site-packages/", 1)[1]
    elif path.startswith(STDLIB):
        short = path.removeprefix(STDLIB)
    elif root := next((r for r in CHECKOUTS if path.startswith(r)), None):
        short = path.removeprefix(root)
        return short, PROJECT if short.startswith(PROJECT_FOLDERS) else short
    else:
        return path, path  # <frozen ...> and the like
    package = short.split("/", 1)[0].removesuffix(".py")
    return short, BUCKETS.get(package, package)


def aggregate(raw: Path) -> dict[str, Any]:
    """Sum py-spy's collapsed stacks (`thread (TID): NAME;frame;...;leaf COUNT`)."""
    threads, self_time, inclusive = Counter[str](), Counter[str](), Counter[str]()
    bucket_self, bucket_inclusive = Counter[str](), Counter[str]()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count, (thread, *frames) = int(count_text), stack.split(";")
        named = THREAD.match(thread)
        tid = named["tid"] if named else "?"
        threads[named["name"] if named and named["name"] else f"(no name, thread {tid})"] += count
        located = []
        for frame in frames:
            parsed = FRAME.match(frame)
            short, bucket = locate(parsed["path"]) if parsed else (frame, frame)
            located.append((f"{parsed['function']} ({short})" if parsed else frame, bucket))
        if not located:
            continue
        self_time[located[-1][0]] += count
        bucket_self[located[-1][1]] += count
        # A frame or bucket counts once per stack, however often recursion repeats it.
        inclusive.update(dict.fromkeys({k for k, b in located if b == PROJECT}, count))
        bucket_inclusive.update(dict.fromkeys({b for _, b in located} - BOOTSTRAP, count))
    samples = sum(threads.values())

    def ranked(counter: Counter[str], key: str, top: int | None = TOP_FRAMES) -> list[Any]:
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
    program: str, load: loads.Load, stack: PrivateStack, folder: Path, seconds: int, warmup: int
) -> dict[str, Any]:
    """Warm up, record every worker under load, report the busiest; the figures for the report.

    Every worker is recorded, not one picked beforehand: each wrk run opens new connections, and
    the kernel hands them to whichever worker accepts first, so the worker busiest during the
    warm-up may get none of the measured run's (all four batch connections on one worker).
    """
    server = stack.pid(program)
    # uvicorn's workers: the server's children started by multiprocessing's spawn (its
    # resource tracker is a child too, and is left out).
    workers = sorted(
        pid
        for pid in child_pids(server or 0)
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    )
    if not workers:
        raise RuntimeError(f"{program} (pid {server}) has no worker processes")
    loads.run_wrk(load, warmup)
    raws = {pid: folder / f"{load.name}-{pid}.txt" for pid in workers}

    def record(pid: int) -> subprocess.CompletedProcess[str]:
        command = [PY_SPY, "record", "--pid", str(pid), "--duration", str(seconds)]
        command += ["--rate", str(SAMPLE_RATE), "--threads", "--gil", "--nonblocking"]
        # Whole paths: the short ones drop the folder that tells project code from libraries.
        command += ["--full-filenames", "--format", "raw", "--output", str(raws[pid])]
        return subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)

    say(f"profiling {load.name}: {load.request}, workers {workers}")
    with ThreadPoolExecutor(1 + len(workers)) as pool:
        loading = pool.submit(loads.run_wrk, load, seconds + 2 * LOAD_MARGIN_S)
        time.sleep(LOAD_MARGIN_S)
        started, cpu_before = time.monotonic(), {pid: cpu_seconds(pid) for pid in workers}
        recordings = {pid: pool.submit(record, pid) for pid in workers}
        recorded = {pid: recording.result() for pid, recording in recordings.items()}
        elapsed = time.monotonic() - started
        cores = {pid: (cpu_seconds(pid) - cpu_before[pid]) / elapsed for pid in workers}
        result = loading.result()
    for pid, done in recorded.items():
        if done.returncode != 0 or not raws[pid].exists():
            raise RuntimeError(f"py-spy failed on {pid} (exit {done.returncode}):\n{done.stderr}")
    worker = max(workers, key=cores.__getitem__)
    say(f"{load.name}: {loads.describe(result)}")
    profile = aggregate(raws[worker])
    return {
        **{"name": load.name, "request": load.request, "url": load.url},
        **{"connections": load.connections, "worker_pid": worker, "worker_pids": workers},
        "wrk": result,
        "worker_cpu_cores": round(cores[worker], 2),
        "workers_cpu_cores": [round(cores[pid], 2) for pid in workers],
        "gil_held_share": round(profile["samples"] / (SAMPLE_RATE * seconds), 3),
        **profile,
    }


def main() -> int:
    seconds, warmup = setting("PROFILE_SECONDS", 10), setting("BENCH_WARMUP_SECONDS", 3)
    wrk = loads.wrk_version()  # fails at once when wrk is missing
    py_spy = subprocess.run([PY_SPY, "--version"], capture_output=True, text=True, check=True)
    with Session("profile", command_line("profile")) as session:
        stack = session.stack
        session.up()
        bodies = loads.bench_bodies(session.work / "bodies")
        urls = {"predictor": stack.predictor_url, "gateway": stack.gateway_url}
        found = {
            load.name: load for load in loads.bench_loads(urls, bodies, {}, {}, tuple(PROFILED))
        }
        profiled = []
        for name, program in PROFILED.items():
            load = found[name]
            load = replace(load, request=load.request + ("" if load.body.rows > 1 else ", one row"))
            profiled.append(profile_load(program, load, stack, session.work, seconds, warmup))
        session.finished = True
    results = session.results | {
        **{"seconds": seconds, "warmup_seconds": warmup, "sample_rate": SAMPLE_RATE},
        **{"py_spy": py_spy.stdout.strip(), "wrk": wrk, "loads": profiled},
        **{"top_frames": TOP_FRAMES, "project_folders": ", ".join(PROJECT_FOLDERS)},
    }
    write(results | session.closing(), ROOT / "bench" / "profile.json", "profile.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
