"""Instructions per row for each stage of the reading process, counted by valgrind, not timed.

    apt-get install valgrind          # for yourself; not a project dependency
    python bench/bench_instructions.py [--commit HEAD] [--partitions 64]

On a shared machine the CPU time of one run drifts by a quarter from the next; the number of
instructions does not. Each stage runs in a fresh interpreter under `valgrind --tool=cachegrind
--cache-sim=no` (PYTHONHASHSEED=0) over the cached 10,000- and 40,000-row exports; the
difference over 30,000 is the cost of one row, without start-up and one-time costs. Stages are
cumulative: read_table; + map_row; + build_batches; + the messages a reading child writes
(wire.py; before it existed, the pickled Batch the child wrote then).
Instructions are not time (cache misses are not counted), but fewer is faster.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys

import generate
import harness

STAGES = ("read", "map", "batch", "wire")
SMALL, LARGE = 10_000, 40_000
_TOTAL = re.compile(r"I\s+refs:\s+([\d,]+)")


def run_stage(stage: str, rows: int, partitions: int) -> None:
    """Run the reading pipeline up to `stage` over the cached export of `rows` rows."""
    from rpi2braze.batcher import build_batches
    from rpi2braze.errors import RowRejected
    from rpi2braze.mapping import map_row, plan_columns
    from rpi2braze.model import ChannelMode, Rejection, WorkflowKey
    from rpi2braze.reader import read_table
    from rpi2braze.settings import MappingSettings, ReadingSettings
    from rpi2braze.tuning import tune_garbage_collector

    tune_garbage_collector()
    _, path = harness.export_file(rows)
    with open(path, "rb") as stream:
        table = read_table(stream, ReadingSettings())
        plan = plan_columns(table.header, MappingSettings())

        def mapped():
            for row in table.rows:
                try:
                    yield row, map_row(plan, row, generate.OFFER, ChannelMode.UPSERT, "US")
                except RowRejected as rejected:
                    yield Rejection(row, rejected.reason)

        key = WorkflowKey("bench", generate.CHANNEL, generate.OFFER, "instructions")
        items = {"read": lambda: table.rows, "map": mapped,
                 "batch": lambda: build_batches(mapped(), key, partitions, 75, 4_000_000)}
        if stage in items:
            collections.deque(items[stage](), 0)
            return
        write_message, batch_message = _wire()
        with open(os.devnull, "wb") as output:
            for batch in build_batches(mapped(), key, partitions, 75, 4_000_000):
                write_message(output, batch_message(batch))


def _wire():
    try:
        from rpi2braze.wire import batch_message, write_message
    except ImportError:   # before wire.py: what producer._serve wrote then
        import dataclasses
        import pickle
        import struct

        from rpi2braze.model import PackedRows

        def batch_message(batch):
            return "batch", dataclasses.replace(batch, rows=PackedRows.pack(batch.rows))

        def write_message(stream, message):
            data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
            stream.write(struct.pack("!I", len(data)) + data)
    return write_message, batch_message


def instructions(stage: str, rows: int, partitions: int, daemon_path: str | None) -> int:
    """Instructions valgrind counts for one run of `stage` over `rows` rows, start-up included."""
    environment = {**(harness.child_environment(daemon_path) or os.environ), "PYTHONHASHSEED": "0"}
    result = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         sys.executable, __file__, "--run-stage", stage, "--rows", str(rows), "--partitions", str(partitions)],
        env=environment, capture_output=True, text=True, check=True)
    return int(_TOTAL.search(result.stderr).group(1).replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", type=int, default=64)
    parser.add_argument("--commit", help="count daemon/ as of this commit (e.g. HEAD), not the working tree")
    parser.add_argument("--run-stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=SMALL, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.run_stage:
        run_stage(arguments.run_stage, arguments.rows, arguments.partitions)
        return 0
    daemon_path = harness.snapshot(arguments.commit) if arguments.commit else None
    for rows in (SMALL, LARGE):
        harness.export_file(rows)   # generated outside valgrind
    print(f"instructions per row, {arguments.partitions} partitions, cumulative "
          f"({arguments.commit or 'working tree'})")
    for stage in STAGES:
        small, large = (instructions(stage, rows, arguments.partitions, daemon_path) for rows in (SMALL, LARGE))
        print(f"  {stage:6} {(large - small) / (LARGE - SMALL):10,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
