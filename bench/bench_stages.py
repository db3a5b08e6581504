"""CPU cost of each stage of rpi2braze, on one thread, in µs per row (or per request).

    python bench/bench_stages.py [--rows 100000] [--requests 1000] [--commit HEAD] [--rows-only] [--repeat 1]

Stages, each cumulative over the cached export: csv.reader alone; reader.read_table; + map_row;
+ build_batches (which encodes each object once, as the sender sends it); + join_body, the
request bodies the sender builds from those encodings. Next to them, the floor the card
measured: csv.reader + building a plain dict + orjson.dumps. Then the cost of one /users/track
request of a real 75-object body against bench/sink.py: BrazeClient (http.client), httpx.Client,
bare http.client with keep-alive, and a raw socket with a prebuilt header. The sum of a row's
stage costs plus 1/75 of a request is the most one core can do; the GIL makes one process
roughly one core for Python code.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import os
import socket
import sys
import time

import generate
import harness


def cpu_per_item(function, items: int) -> float:
    """Run `function` (which processes `items` items) and return its CPU µs per item."""
    started = time.process_time()
    function()
    return (time.process_time() - started) / items * 1e6


# rpi2braze is imported inside the functions: --commit puts a snapshot first on sys.path.

def _open_table(data_file: str):
    from rpi2braze.reader import read_table
    from rpi2braze.settings import ReadingSettings

    stream = open(data_file, "rb")
    return stream, read_table(stream, ReadingSettings())


def _mapped(data_file: str, rows: int):
    """The first `rows` rows of the file, read and mapped as the worker does."""
    from rpi2braze.mapping import map_row, plan_columns
    from rpi2braze.model import ChannelMode
    from rpi2braze.settings import MappingSettings

    stream, table = _open_table(data_file)
    plan = plan_columns(table.header, MappingSettings())
    with stream:
        for _, row in zip(range(rows), table.rows):
            yield row, map_row(plan, row, generate.OFFER, ChannelMode.UPSERT, "US")


def _batches(data_file: str, rows: int, partitions: int = 16):
    from rpi2braze.batcher import build_batches
    from rpi2braze.model import WorkflowKey

    key = WorkflowKey("bench", generate.CHANNEL, generate.OFFER, "stages")
    return build_batches(_mapped(data_file, rows), key, partitions, 75, 4_000_000)


def _csv_only(data_file: str, rows: int) -> None:
    with open(data_file, newline="", encoding="utf-8") as source:
        _drain(zip(range(rows + 1), csv.reader(source)))


def _floor(data_file: str, rows: int) -> None:
    """What the card measured: csv.reader, a dict of the non-empty cells, orjson."""
    import orjson

    with open(data_file, newline="", encoding="utf-8") as source:
        reader = csv.reader(source)
        header = next(reader)
        for _, values in zip(range(rows), reader):
            orjson.dumps({name: value for name, value in zip(header, values) if value})


def _read_only(data_file: str, rows: int) -> None:
    stream, table = _open_table(data_file)
    with stream:
        _drain(zip(range(rows), table.rows))


def _drain(iterator) -> None:
    for _ in iterator:
        pass


def _bodies(data_file: str, rows: int) -> None:
    for batch in _batches(data_file, rows):
        _body(batch)


def _body(batch) -> bytes:
    """The request body the sender builds for `batch` (encode_body for a commit from before
    the batcher encoded each object once)."""
    from rpi2braze import batcher

    if hasattr(batcher, "join_body"):
        return batcher.join_body(batch.encoded)
    return batcher.encode_body(batch.objects)


def row_stages(data_file: str, rows: int, repeat: int = 1) -> list[tuple[str, float]]:
    """CPU µs per row of each stage, cumulative, after one pass that warms the normalisers' caches;
    the least of `repeat` runs of each stage (on a shared machine the least is the steadiest)."""
    _drain(_mapped(data_file, rows))
    stages = [("csv.reader alone", lambda: _csv_only(data_file, rows)),
              ("floor: csv.reader + plain dict + orjson", lambda: _floor(data_file, rows)),
              ("reader.read_table", lambda: _read_only(data_file, rows)),
              ("+ map_row", lambda: _drain(_mapped(data_file, rows))),
              ("+ build_batches", lambda: _drain(_batches(data_file, rows))),
              ("+ join_body", lambda: _bodies(data_file, rows))]
    return [(name, min(cpu_per_item(stage, rows) for _ in range(repeat))) for name, stage in stages]


def sample_body(data_file: str) -> bytes:
    """The body of one real 75-object request."""
    return _body(next(iter(_batches(data_file, 1000, partitions=1))))


def request_stages(sink: harness.Sink, body: bytes, requests: int) -> list[tuple[str, float]]:
    from rpi2braze.braze_client import BrazeClient
    from rpi2braze.secret import Secret
    from rpi2braze.settings import BrazeSettings

    client = BrazeClient(BrazeSettings(sink.url, Secret(harness.API_KEY), allow_insecure_http=True))
    connection = http.client.HTTPConnection("127.0.0.1", sink.port)
    headers = {"Authorization": f"Bearer {harness.API_KEY}", "Content-Type": "application/json"}
    raw = socket.create_connection(("127.0.0.1", sink.port))
    prefix = (f"POST /users/track HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {harness.API_KEY}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()

    def with_client():
        for _ in range(requests):
            client.track(body)

    def with_httpx():   # what BrazeClient used before; httpx is installed with the test extras
        import httpx

        with httpx.Client(base_url=sink.url, headers=headers) as shared:
            for _ in range(requests):
                shared.post("/users/track", content=body).read()

    def with_http_client():
        for _ in range(requests):
            connection.request("POST", "/users/track", body, headers)
            connection.getresponse().read()

    def with_socket():
        for _ in range(requests):
            raw.sendall(prefix + body)
            answer = raw.recv(65536)
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):  # the sink's fixed reply
                answer += raw.recv(65536)

    try:
        return [("BrazeClient.track", cpu_per_item(with_client, requests)),
                ("httpx.Client.post", cpu_per_item(with_httpx, requests)),
                ("http.client keep-alive", cpu_per_item(with_http_client, requests)),
                ("raw socket, prebuilt header", cpu_per_item(with_socket, requests))]
    finally:
        client.close()
        connection.close()
        raw.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--commit", help="measure daemon/ as of this commit (e.g. HEAD), not the working tree")
    parser.add_argument("--rows-only", action="store_true", help="skip the per-request stages (no sink)")
    parser.add_argument("--repeat", type=int, default=1, help="run each row stage this often, keep the least")
    arguments = parser.parse_args(argv)
    if arguments.commit:
        sys.path.insert(0, harness.snapshot(arguments.commit))
    _, data_file = harness.export_file(arguments.rows)
    import rpi2braze
    print(f"measuring {os.path.dirname(rpi2braze.__file__)}; load average {os.getloadavg()[0]:.1f}")
    print(f"\nper row, one thread ({arguments.rows:,} rows)          CPU µs/row   rows/s on one core")
    for name, micros in row_stages(data_file, arguments.rows, arguments.repeat):
        print(f"  {name:44} {micros:8.1f}   {1e6 / micros:>12,.0f}")
    if arguments.rows_only:
        return 0
    body = sample_body(data_file)
    print(f"\nper request, {len(body):,}-byte body ({arguments.requests:,} requests)   CPU µs/request   µs/row")
    with harness.Sink(0) as sink:
        for name, micros in request_stages(sink, body, arguments.requests):
            print(f"  {name:44} {micros:8.0f}   {micros / 75:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
