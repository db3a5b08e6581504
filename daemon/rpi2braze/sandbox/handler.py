"""The HTTP plumbing of the sandbox: read a request, route it, write the Reply (or drop the connection)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import orjson

from rpi2braze.log import get_logger
from rpi2braze.sandbox.admin import ADMIN_PREFIX, handle_admin
from rpi2braze.sandbox.api import ApiRequest, handle_api
from rpi2braze.sandbox.endpoints import Reply, fatal
from rpi2braze.sandbox.state import SandboxState

log = get_logger(__name__)

DISCARD_CHUNK_BYTES = 65_536
# An oversized body is read and thrown away so the client sees the 413 rather than a reset connection;
# past this much the sandbox stops reading and closes the connection instead.
DISCARD_MAX_BYTES = 256 * 1024 * 1024


class _FramingError(Exception):
    """The request body cannot be read; `reply` answers it and the connection closes."""

    def __init__(self, reply: Reply):
        super().__init__(reply.status)
        self.reply = reply


class SandboxHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that knows its SandboxState and can cut its open connections on stop."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: SandboxState):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state = state
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, SandboxHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall for seconds without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        """Wake every handler blocked on a kept-alive connection, so none serves after stop."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client


class SandboxHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as Braze does and rpi2braze expects
    # Headers and body go out in two writes; with Nagle on, the body waits for a delayed ACK (~40 ms).
    disable_nagle_algorithm = True
    server_version = "rpi2braze-sandbox"
    sys_version = ""
    server: SandboxHTTPServer

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _handle(self) -> None:
        arrived_monotonic, arrived_wall_time = time.monotonic(), time.time()
        state = self.server.state
        try:
            body = self._read_body(state.max_bytes)
        except _FramingError as error:
            self._send(error.reply, close=True)
            return
        path = urlsplit(self.path).path
        try:
            if path.startswith(ADMIN_PREFIX):
                reply = handle_admin(state, self.command, path, body, self.client_address[0])
            else:
                reply = handle_api(state, ApiRequest(
                    self.command, path, self.headers.get("Authorization"), self.headers.get("Content-Type"),
                    body, arrived_monotonic, arrived_wall_time,
                ))
        except Exception:
            log.exception("sandbox_request_failed", method=self.command, path=path)
            reply = fatal(500, "sandbox internal error")
        self._send(reply)

    def _read_body(self, max_bytes: int) -> bytes | None:
        """Return the body, or None if it is over `max_bytes` (then it has been read and discarded)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise _FramingError(fatal(411, "Length Required: the sandbox needs a Content-Length"))
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            raise _FramingError(fatal(400, "invalid Content-Length"))
        if length <= max_bytes:
            return self.rfile.read(length)
        if length > DISCARD_MAX_BYTES:
            raise _FramingError(fatal(413, "Request Entity Too Large"))
        while length > 0:
            chunk = self.rfile.read(min(length, DISCARD_CHUNK_BYTES))
            if not chunk:
                break
            length -= len(chunk)
        return None

    def _send(self, reply: Reply, close: bool = False) -> None:
        if reply.status == 0 or self.server.state.stopping.is_set():
            self.close_connection = True   # a dropped request, or a sandbox shutting down: no answer
            return
        data = orjson.dumps(reply.body)
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in reply.headers:
                self.send_header(name, value)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True   # the client gave up (a timeout during a slow answer)

    def log_message(self, format: str, *args) -> None:
        log.debug("sandbox_http", client=self.client_address[0], line=format % args)
