"""Where rpi2braze's CPU goes on the no-latency run: py-spy samples, summed by function and module.

    pip install py-spy          # for yourself; not a project dependency
    python bench/profile_hotspots.py [--rows 1000000] [--rate 100] [--top 25]
    python bench/profile_hotspots.py --summarise bench/out/profile-1000000.txt

Starts bench/sink.py without latency, runs `rpi2braze process` on the cached export under
`py-spy record --gil --format raw` (only the thread holding the GIL is sampled, so the samples
are the Python CPU time, not threads waiting on sockets), then prints the top functions by self
time (the leaf frame) and by inclusive time (anywhere on the stack), and self time per module.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys

import harness

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::\d+)?\)$")


def parse_frame(frame: str) -> tuple[str, str]:
    """Given a py-spy frame "function (path/file.py:123)", return (module file, function)."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return "?", frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "python3.11/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return path, match["function"]


def summarise(path: str) -> tuple[int, collections.Counter, collections.Counter, collections.Counter]:
    """Return (total samples, self samples by function, inclusive samples by function, self by module)."""
    self_time, inclusive, by_module = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    with open(path) as source:
        for line in source:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            total += count
            frames = [parse_frame(frame) for frame in stack.split(";")]
            module, function = frames[-1]
            self_time[f"{module}:{function}"] += count
            by_module[module] += count
            for module_name, function_name in set(frames):
                inclusive[f"{module_name}:{function_name}"] += count
    return total, self_time, inclusive, by_module


def print_summary(path: str, top: int) -> None:
    total, self_time, inclusive, by_module = summarise(path)
    for title, counter in (("self time by function", self_time), ("inclusive time by function", inclusive),
                           ("self time by module", by_module)):
        print(f"\n{title} ({total:,} samples)")
        for name, count in counter.most_common(top):
            print(f"  {count / total:6.1%}  {name}")


def record(rows: int, rate: int, concurrency: int, daemon_path: str | None) -> str:
    """Profile one no-latency run; return the raw profile's path."""
    folder, _ = harness.export_file(rows)
    output = os.path.join(harness.OUT_DIR, f"profile-{rows}.txt")
    with harness.Sink(0) as sink:
        config = harness.write_config(os.path.join(harness.RUNS_DIR, f"profile-{rows}"), sink.url,
                                      harness.DATA_DIR, concurrency, harness.NO_LIMIT)
        subprocess.run(["py-spy", "record", "--gil", "--rate", str(rate), "--format", "raw", "--output", output,
                        "--", *harness.rpi2braze_command(config, folder)], check=True,
                       env=harness.child_environment(daemon_path))
        stats = sink.stats()
    print(f"sink received {stats['objects']:,} objects in {stats['requests']:,} requests", file=sys.stderr)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--commit", help="profile daemon/ as of this commit (e.g. HEAD), not the working tree")
    parser.add_argument("--summarise", metavar="RAW_PROFILE", help="only summarise an existing profile")
    arguments = parser.parse_args(argv)
    daemon_path = harness.snapshot(arguments.commit) if arguments.commit and not arguments.summarise else None
    path = arguments.summarise or record(arguments.rows, arguments.rate, arguments.concurrency, daemon_path)
    print_summary(path, arguments.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
