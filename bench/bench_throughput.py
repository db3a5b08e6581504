"""Issue 3, "Deliver at Braze's limits": rpi2braze against a fast local sink, next to the naive
baseline, with no latency and with 50 ms per request. Not part of the test run.

    python bench/bench_throughput.py                # 1M rows, 0 and 50 ms
    python bench/bench_throughput.py --quick        # 100k rows, a smoke run
    python bench/bench_throughput.py --rss-rows 5000000   # also 5M rows, for peak RSS vs 1M

The export is generated once into bench/out/data/ (seeded, so always the same bytes). Each run
starts bench/sink.py as its own process, runs `python -m rpi2braze -c <config> process <folder>`
(or bench/naive.py) as a child and measures it with wait4: wall time, user+system CPU seconds
and peak RSS of that child alone. rows/s = rows the sink received / the child's wall time;
req/s is shown over the wall time and over the sink's first-to-last-request window. Without
latency the rate limit is out of the way; with latency it is --rate (default 1000/1 s). Naive at
50 ms sends only --naive-latency-rows rows (its rate is flat; all 1M would take ~12 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import harness

TARGET_ROWS_PER_SECOND = 75_000
TARGET_RATE_SHARE = 0.90
TARGET_RATIO_AT_LATENCY = 40
TARGET_PEAK_RSS_MB = 150
TARGET_RSS_GROWTH = 0.10


@dataclass(frozen=True)
class Result:
    label: str
    latency_ms: float
    rows: int
    requests: int
    wall_seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    sink_window_seconds: float
    sink_cpu_seconds: float
    load_before: float  # 1-minute load average when the run started: other work skews wall times
    ok: bool
    reading_cpu_seconds: float = 0.0   # of the reading child processes, included in cpu_seconds

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.wall_seconds

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.wall_seconds

    @property
    def window_requests_per_second(self) -> float:
        return self.requests / self.sink_window_seconds if self.sink_window_seconds else 0.0


def run_child(label: str, latency_ms: float, sink: harness.Sink, command: list[str], expected_rows: int,
              env: dict | None = None) -> Result:
    """Run one measured child against a reset sink; check every row arrived."""
    sink.reset()
    before = sink.stats()["cpu_seconds"]
    load = os.getloadavg()[0]
    log_path = os.path.join(harness.RUNS_DIR, f"{label}.log")
    os.makedirs(harness.RUNS_DIR, exist_ok=True)
    measured = harness.measure(command, log_path, env)
    stats = sink.stats()
    ok = measured.returncode == 0 and stats["objects"] == expected_rows
    if not ok:
        print(f"  {label}: exit {measured.returncode}, sink saw {stats['objects']:,} of {expected_rows:,} "
              f"rows; see {log_path}", file=sys.stderr)
    result = Result(label, latency_ms, stats["objects"], stats["requests"], measured.wall_seconds,
                    measured.cpu_seconds, measured.peak_rss_mb, stats["window_seconds"],
                    stats["cpu_seconds"] - before, load, ok, measured.children_cpu_seconds)
    print(f"  {label}: {result.rows_per_second:,.0f} rows/s, {result.requests_per_second:,.0f} req/s, "
          f"{result.cpu_seconds:.1f} CPU s, {result.peak_rss_mb:.0f} MB", file=sys.stderr, flush=True)
    return result


def run_rpi2braze(rows: int, latency_ms: float, sink: harness.Sink, concurrency: int, rate_limit: dict,
                  daemon_path: str | None) -> Result:
    folder, _ = harness.export_file(rows)
    label = f"rpi2braze-{rows}-{latency_ms:g}ms"
    config = harness.write_config(os.path.join(harness.RUNS_DIR, label), sink.url, harness.DATA_DIR,
                                  concurrency, rate_limit)
    return run_child(label, latency_ms, sink, harness.rpi2braze_command(config, folder), rows,
                     harness.child_environment(daemon_path))


def run_naive(rows: int, latency_ms: float, sink: harness.Sink, client: str, max_rows: int | None) -> Result:
    _, data_file = harness.export_file(rows)
    label = f"naive-{client}-{min(rows, max_rows or rows)}-{latency_ms:g}ms"
    command = harness.naive_command(data_file, sink.url, client, max_rows)
    return run_child(label, latency_ms, sink, command, min(rows, max_rows or rows))


def parse_rate(text: str) -> dict:
    requests, _, seconds = text.partition("/")
    return {"requests": int(requests), "per_seconds": float(seconds or 1)}


def print_table(results: list[Result]) -> None:
    print(f"\n{'run':34} {'rows':>9} {'wall s':>7} {'rows/s':>8} {'req/s':>6} {'req/s*':>6} "
          f"{'CPU s':>6} {'read s':>6} {'µs/row':>6} {'RSS MB':>6} {'sink CPU':>8} {'load':>5}")
    for result in results:
        print(f"{result.label + ('' if result.ok else ' FAILED'):34} {result.rows:>9,} {result.wall_seconds:>7.1f} "
              f"{result.rows_per_second:>8,.0f} {result.requests_per_second:>6,.0f} "
              f"{result.window_requests_per_second:>6,.0f} {result.cpu_seconds:>6.1f} "
              f"{result.reading_cpu_seconds:>6.1f} {result.cpu_seconds / max(result.rows, 1) * 1e6:>6.1f} {result.peak_rss_mb:>6.0f} "
              f"{result.sink_cpu_seconds:>8.1f} {result.load_before:>5.1f}")
    print("req/s* = requests over the sink's first-to-last-request window (startup excluded); "
          "read s = CPU s of the reading processes (part of CPU s; the rest is the sending process); "
          "load = 1-minute load average at the start")


def verdict(name: str, value: float, target: float, higher_is_better: bool = True, unit: str = "") -> str:
    met = value >= target if higher_is_better else value <= target
    sign = "≥" if higher_is_better else "≤"
    return f"{'MET ' if met else 'MISS'}  {name}: {value:,.2f}{unit} (target {sign} {target:,.2f}{unit})"


def print_verdicts(by_key: dict, rows: int, rate: dict, rss_rows: int | None) -> None:
    print()
    fast, slow = by_key.get(("rpi2braze", rows, 0)), by_key.get(("rpi2braze", rows, 50))
    # a failed run is in the table, marked FAILED, but gives no verdict
    fast, slow = (run if run and run.ok else None for run in (fast, slow))
    naive_fast, naive_slow = (run if run and run.ok else None for run in (by_key.get(("naive", 0)),
                                                                         by_key.get(("naive", 50))))
    if fast:
        print(verdict("rows/s, no latency", fast.rows_per_second, TARGET_ROWS_PER_SECOND))
        print(verdict("peak RSS", fast.peak_rss_mb, TARGET_PEAK_RSS_MB, False, " MB"))
    if fast and naive_fast:
        print(f"      ratio to naive, no latency: {fast.rows_per_second / naive_fast.rows_per_second:.1f}x")
    if slow:
        limit = rate["requests"] / rate["per_seconds"]
        print(verdict("share of the rate limit, 50 ms (sink window)", slow.window_requests_per_second / limit,
                      TARGET_RATE_SHARE))
        print(verdict("share of the rate limit, 50 ms (wall, with startup)", slow.requests_per_second / limit,
                      TARGET_RATE_SHARE))
    if slow and naive_slow:
        print(verdict("ratio to naive, 50 ms", slow.rows_per_second / naive_slow.rows_per_second,
                      TARGET_RATIO_AT_LATENCY, unit="x"))
    big = by_key.get(("rpi2braze", rss_rows, 0)) if rss_rows else None
    if fast and big and big.ok:
        growth = big.peak_rss_mb / fast.peak_rss_mb - 1
        print(verdict(f"peak RSS growth {rows:,} -> {rss_rows:,} rows", growth * 100, TARGET_RSS_GROWTH * 100,
                      False, " %"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 rows (overrides --rows)")
    parser.add_argument("--rss-rows", type=int, help="also run rpi2braze on this many rows, no latency")
    parser.add_argument("--latencies", default="0,50", help="milliseconds, comma-separated")
    parser.add_argument("--concurrency", type=int, default=16, help="braze.concurrency without latency")
    parser.add_argument("--latency-concurrency", type=int, default=128, help="braze.concurrency with latency")
    parser.add_argument("--rate", default="1000/1", help="rate limit with latency: REQUESTS/SECONDS")
    parser.add_argument("--naive-client", choices=("http.client", "httpx"), default="http.client")
    parser.add_argument("--naive-latency-rows", type=int, default=75_000)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--commit", help="measure daemon/ as of this commit (e.g. HEAD), not the working tree")
    arguments = parser.parse_args(argv)
    rows = 100_000 if arguments.quick else arguments.rows
    rate = parse_rate(arguments.rate)
    daemon_path = harness.snapshot(arguments.commit) if arguments.commit else None
    results, by_key = [], {}
    for latency in (float(text) for text in arguments.latencies.split(",")):
        with harness.Sink(latency) as sink:
            print(f"latency {latency:g} ms, sink on port {sink.port}", file=sys.stderr, flush=True)
            concurrency, limit = ((arguments.concurrency, harness.NO_LIMIT) if not latency
                                  else (arguments.latency_concurrency, rate))
            sizes = [rows] + ([arguments.rss_rows] if arguments.rss_rows and not latency else [])
            for size in sizes:
                result = run_rpi2braze(size, latency, sink, concurrency, limit, daemon_path)
                results.append(result)
                by_key[("rpi2braze", size, latency)] = result
            if not arguments.skip_naive:
                result = run_naive(rows, latency, sink, arguments.naive_client,
                                   arguments.naive_latency_rows if latency else None)
                results.append(result)
                by_key[("naive", latency)] = result
    print_table(results)
    print_verdicts(by_key, rows, rate, arguments.rss_rows)
    path = os.path.join(harness.OUT_DIR, f"results-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as target:
        json.dump([asdict(result) for result in results], target, indent=2)
    print(f"\nresults: {path}")
    return 0 if all(result.ok for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
