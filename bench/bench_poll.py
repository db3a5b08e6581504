"""What polling a mounted share full of finished workflows costs: CPU of the real daemon, in % of one core.

    python bench/bench_poll.py [--folders 10000] [--seconds 60] [--baseline] [--keep]

Builds a share on local disk (a temporary folder) holding `--folders` workflow folders under
<Channel>/<Offer>/<Workflow ID>/ (100 per offer, each with an export and a summary file), records
every one as delivered in the state file through StateStore, then runs `rpi2braze run` with one
`type: poll` source at the default scan_interval_seconds. After a warm-up longer than one scan
interval it reads the daemon's CPU time (user + system, /proc/<pid>/stat) over `--seconds` and
prints it as % of one core. `--baseline` first measures the same daemon over an empty share, so
the share's own cost can be told from the daemon's idle cost. Target (issue 4): below 5 % for
10,000 folders. Not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from rpi2braze.model import WorkflowKey, WorkflowStatus
from rpi2braze.sandbox.server import SandboxServer
from rpi2braze.settings import DEFAULT_CHANNELS, DEFAULT_SCAN_INTERVAL_SECONDS
from rpi2braze.state import StateStore

API_KEY = "bench-poll-key"
SOURCE = "share"
WORKFLOWS_PER_OFFER = 100
TARGET_PERCENT = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def build_share(base: str, folders: int) -> list[WorkflowKey]:
    """Create `folders` finished-looking workflow folders below `base`; return their keys."""
    channels = list(DEFAULT_CHANNELS)
    keys = []
    for number in range(folders):
        offer = f"Offer {number // WORKFLOWS_PER_OFFER:04d}"
        key = WorkflowKey(SOURCE, channels[number % len(channels)], offer, str(100000 + number))
        folder = os.path.join(base, key.channel, key.offer, key.workflow_id)
        os.makedirs(folder)
        with open(os.path.join(folder, f"RPI_Export_{key.workflow_id}.txt"), "w") as export:
            export.write("external_id,first_name\nu1,Ann\n")
        with open(os.path.join(folder, f"RPI_Export_{key.workflow_id}.txt_summary.xml"), "w") as summary:
            summary.write("<summary/>")
        keys.append(key)
    return keys


def record_delivered(state_path: str, keys: list[WorkflowKey], base: str) -> None:
    """Record every workflow as delivered, the way a worker does, so the scanner counts it finished."""
    store = StateStore(state_path)
    try:
        for key in keys:
            store.record_seen(key, os.path.join(base, key.relpath))
            store.begin(key, 1)
            store.finish(key, WorkflowStatus.DELIVERED)
    finally:
        store.close()


def write_config(directory: str, endpoint: str, base: str) -> str:
    path = os.path.join(directory, "config.yaml")
    with open(path, "w", encoding="utf-8") as config:
        config.write(f"""braze:
  rest_endpoint: {endpoint}
  api_key: {API_KEY}
  allow_insecure_http: true
state:
  path: {directory}/state.db
sources:
  - name: {SOURCE}
    type: poll
    path: {base}
log: {{level: info, format: json}}
""")
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def measure(directory: str, endpoint: str, base: str, seconds: float, warmup: float) -> float:
    """Run the daemon over `base`; return its CPU use in % of one core over `seconds` after `warmup`."""
    log_path = os.path.join(directory, "daemon.log")
    with open(log_path, "wb") as log:
        command = [sys.executable, "-m", "rpi2braze", "-c", write_config(directory, endpoint, base), "run"]
        daemon = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(warmup)
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited with {daemon.returncode}; see {log_path}")
        started, cpu_before = time.monotonic(), cpu_seconds(daemon.pid)
        time.sleep(seconds)
        elapsed, used = time.monotonic() - started, cpu_seconds(daemon.pid) - cpu_before
    finally:
        daemon.terminate()
        daemon.wait(30)
    problems = [line for line in open(log_path, encoding="utf-8", errors="replace")
                if '"level":"error"' in line or '"level":"warning"' in line or "Traceback" in line]
    if problems:
        print(f"  the daemon logged problems, e.g.: {problems[0].strip()[:300]}")
    return 100.0 * used / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window")
    parser.add_argument("--baseline", action="store_true", help="also measure over an empty share")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    arguments = parser.parse_args()
    warmup = DEFAULT_SCAN_INTERVAL_SECONDS + 5  # start-up and the first, full scan are not measured
    work = tempfile.mkdtemp(prefix="bench-poll-", dir=os.environ.get("BENCH_DIR"))
    results = {"folders": arguments.folders, "seconds": arguments.seconds,
               "scan_interval_seconds": DEFAULT_SCAN_INTERVAL_SECONDS, "cores": os.cpu_count()}
    try:
        with SandboxServer(api_key=API_KEY) as sandbox:
            if arguments.baseline:
                empty = os.path.join(work, "empty")
                os.makedirs(os.path.join(empty, "share"))
                results["idle_percent"] = measure(empty, sandbox.url, os.path.join(empty, "share"),
                                                  arguments.seconds, warmup)
                print(f"empty share:            {results['idle_percent']:.2f} % of one core")
            base = os.path.join(work, "share")
            started = time.perf_counter()
            keys = build_share(base, arguments.folders)
            record_delivered(os.path.join(work, "state.db"), keys, base)
            print(f"built {len(keys)} delivered workflow folders in {time.perf_counter() - started:.1f} s")
            results["percent"] = measure(work, sandbox.url, base, arguments.seconds, warmup)
            results["requests_to_braze"] = len(sandbox.requests)
        print(f"{arguments.folders} finished folders: {results['percent']:.2f} % of one core "
              f"(target < {TARGET_PERCENT} %), {results['requests_to_braze']} requests to Braze")
        print(json.dumps(results))
        return 0 if results["percent"] < TARGET_PERCENT and results["requests_to_braze"] == 0 else 1
    finally:
        if arguments.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
