"""A fast stand-in for Braze's /users/track, for throughput benchmarks only.

    python bench/sink.py [--port 0] [--latency-ms 50]

One asyncio process on 127.0.0.1 speaking just enough HTTP/1.1 (keep-alive, Content-Length
bodies, no pipelining needed). For POST /users/track it counts the attribute objects by counting
'"external_id"' in the body (no JSON parsing: the sink must never be the bottleneck) and answers
201 {"message":"success"} after the optional fixed latency, which is an asyncio timer, so waiting
requests cost nothing. GET /stats returns its counters and its own CPU seconds as JSON; POST
/reset zeroes them. It prints "listening <port>" once ready. Run it as its own process so its CPU
is not counted as the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

import orjson

TRACK = b"POST /users/track "
OBJECT_MARKER = b'"external_id"'
HEADER_END = b"\r\n\r\n"
SUCCESS = b'{"message":"success"}'


def response(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


CREATED = response("201 Created", SUCCESS)


class Counters:
    """What the sink has seen since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.objects = 0
        self.body_bytes = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def count(self, objects: int, body_bytes: int) -> None:
        now = time.monotonic()
        self.first_at = self.first_at if self.first_at is not None else now
        self.last_at = now
        self.requests += 1
        self.objects += objects
        self.body_bytes += body_bytes

    def as_json(self) -> bytes:
        window = (self.last_at - self.first_at) if self.first_at is not None else 0.0
        return orjson.dumps({"requests": self.requests, "objects": self.objects,
                             "body_bytes": self.body_bytes, "window_seconds": window,
                             "cpu_seconds": time.process_time()})


class TrackProtocol(asyncio.Protocol):
    """One keep-alive connection: parse requests from the byte stream, answer each in order."""

    def __init__(self, counters: Counters, latency: float):
        self._counters = counters
        self._latency = latency
        self._buffer = bytearray()
        self._expected: tuple[int, int] | None = None  # (body start, body end) of the request read
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._next_request():
            pass

    def _next_request(self) -> bool:
        """Answer one complete request at the head of the buffer; False if none is complete yet."""
        if self._expected is None:
            end = self._buffer.find(HEADER_END)
            if end < 0:
                return False
            length = _content_length(bytes(self._buffer[:end]))
            self._expected = (end + 4, end + 4 + length)
        start, end = self._expected
        if len(self._buffer) < end:
            return False
        self._answer(start, end)
        del self._buffer[:end]
        self._expected = None
        return True

    def _answer(self, start: int, end: int) -> None:
        if self._buffer.startswith(TRACK):
            self._counters.count(self._buffer.count(OBJECT_MARKER, start, end), end - start)
            if self._latency:
                asyncio.get_running_loop().call_later(self._latency, self._send, CREATED)
            else:
                self._send(CREATED)
        elif self._buffer.startswith(b"GET /stats "):
            self._send(response("200 OK", self._counters.as_json()))
        elif self._buffer.startswith(b"POST /reset "):
            self._counters.reset()
            self._send(response("200 OK", b"{}"))
        else:
            self._send(response("404 Not Found", b'{"message":"not found"}'))

    def _send(self, payload: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(payload)

    def connection_lost(self, exc) -> None:
        self._transport = None


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


async def serve(port: int, latency: float) -> None:
    counters = Counters()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: TrackProtocol(counters, latency), "127.0.0.1", port,
                                      backlog=1024)
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stopped.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every /users/track answer")
    arguments = parser.parse_args(argv)
    asyncio.run(serve(arguments.port, arguments.latency_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
