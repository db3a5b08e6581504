"""Shared parts of the throughput benchmarks: the cached export, the sink process, the config,
and running a child process while measuring its wall time, CPU seconds and peak RSS."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import generate

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(BENCH_DIR, "out")
DATA_DIR = os.path.join(OUT_DIR, "data")
RUNS_DIR = os.path.join(OUT_DIR, "runs")
API_KEY = "bench-key"
NO_LIMIT = {"requests": 1_000_000, "per_seconds": 1}  # the limiter never makes anyone wait


def export_file(rows: int, seed: int = 7) -> tuple[str, str]:
    """Return (workflow folder, data file) of the cached export of `rows` rows, writing it if missing."""
    workflow_id = f"bench-{rows}-{seed}"
    folder = generate.export_folder(DATA_DIR, workflow_id)
    path = os.path.join(folder, f"RPI_Export_{workflow_id}.txt")
    if not os.path.exists(path):
        print(f"generating {rows:,} rows into {folder} ...", file=sys.stderr, flush=True)
        generate.generate(DATA_DIR, rows, seed, workflow_id)
    return folder, path


class Sink:
    """bench/sink.py in its own process, with its counters read over HTTP."""

    def __init__(self, latency_ms: float):
        self._process = subprocess.Popen(
            [sys.executable, os.path.join(BENCH_DIR, "sink.py"), "--latency-ms", str(latency_ms)],
            stdout=subprocess.PIPE, text=True)
        line = self._process.stdout.readline()
        if not line.startswith("listening "):
            self.close()
            raise RuntimeError(f"the sink did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def _call(self, method: str, path: str) -> dict:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path)
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    def stats(self) -> dict:
        return self._call("GET", "/stats")

    def reset(self) -> None:
        self._call("POST", "/reset")

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(10)

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_config(run_dir: str, sink_url: str, base: str, concurrency: int, rate_limit: dict) -> str:
    """A fresh run folder with a config (JSON is YAML) pointing at the sink; return the config path."""
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    config = {
        "braze": {"rest_endpoint": sink_url, "api_key": API_KEY, "allow_insecure_http": True,
                  "rate_limit": rate_limit, "concurrency": concurrency},
        "state": {"path": os.path.join(run_dir, "state.db")},
        "sources": [{"name": "bench", "type": "local", "path": base, "settle_seconds": 0}],
        "log": {"level": "info", "format": "json"},
    }
    path = os.path.join(run_dir, "config.yaml")
    with open(path, "w") as target:
        json.dump(config, target, indent=2)
    return path


@dataclass(frozen=True)
class Measured:
    """One child process: exit status, wall seconds, user+system CPU seconds (with its children's),
    peak RSS in MB, and the CPU seconds of its children alone (rpi2braze's reading processes)."""

    returncode: int
    wall_seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    children_cpu_seconds: float = 0.0


def measure(command: list[str], log_path: str, env: dict | None = None) -> Measured:
    """Run `command` (stdout and stderr to `log_path`) and measure it with wait4's rusage, which
    covers exactly that child and its own children (the reading process), and none of this
    process's other children, like the sink. Peak RSS is the larger of wait4's (the biggest single
    process) and the peak of the tree's summed RSS, sampled every 50 ms. The children's CPU is
    their last sample (up to 50 ms short): which side of the pipe is the limit."""
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        sampler = TreeSampler(process.pid)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        sampler.stop()
    process.returncode = os.waitstatus_to_exitcode(status)
    return Measured(process.returncode, wall, usage.ru_utime + usage.ru_stime,
                    max(usage.ru_maxrss / 1024, sampler.peak_mb), sampler.children_cpu_seconds)


class TreeSampler:
    """Samples the summed VmRSS of a process and its direct children, and each child's CPU
    seconds, until stopped."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval, self.peak_mb = pid, interval, 0.0
        self._children_cpu: dict[int, float] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def children_cpu_seconds(self) -> float:
        return sum(self._children_cpu.values())

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            children = _children(self.pid)
            self.peak_mb = max(self.peak_mb, sum(_rss_kb(pid) for pid in [self.pid, *children]) / 1024)
            for child in children:
                self._children_cpu[child] = max(self._children_cpu.get(child, 0.0), _cpu_seconds(child))


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        return [int(child) for task in tasks
                for child in open(f"/proc/{pid}/task/{task}/children").read().split()]
    except OSError:
        return []


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def snapshot(commit: str) -> str:
    """Extract daemon/ of `commit` (read-only `git archive`) into bench/out/src-<sha>/; return the
    folder to put on PYTHONPATH, so a commit can be measured while the working tree is being edited."""
    repository = os.path.dirname(BENCH_DIR)
    sha = subprocess.run(["git", "-C", repository, "rev-parse", "--short", commit], check=True,
                         capture_output=True, text=True).stdout.strip()
    target = os.path.join(OUT_DIR, f"src-{sha}")
    if not os.path.isdir(target):
        os.makedirs(target + ".tmp", exist_ok=True)
        archive = subprocess.run(["git", "-C", repository, "archive", sha, "daemon"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", target + ".tmp"], input=archive, check=True)
        os.replace(target + ".tmp", target)
    return os.path.join(target, "daemon")


def child_environment(daemon_path: str | None) -> dict | None:
    """The environment for an rpi2braze child: the installed package, or `daemon_path` first."""
    if daemon_path is None:
        return None
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [daemon_path, os.environ.get("PYTHONPATH")]))}


def rpi2braze_command(config_path: str, folder: str) -> list[str]:
    return [sys.executable, "-m", "rpi2braze", "-c", config_path, "process", folder]


def naive_command(data_file: str, sink_url: str, client: str, max_rows: int | None) -> list[str]:
    command = [sys.executable, os.path.join(BENCH_DIR, "naive.py"), data_file, "--url", sink_url,
               "--api-key", API_KEY, "--client", client]
    return command + (["--max-rows", str(max_rows)] if max_rows else [])
