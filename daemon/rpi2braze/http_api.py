"""The optional HTTP listener: RPI's Post Execution call, Prometheus metrics and a health check.

    POST /rpi/post-execution   RPI's "HTTP Post/JSON" body as is -> 202 {"status": "queued", "folder": ...}
    GET  /metrics              Prometheus text format
    GET  /healthz              200 or 503, with a JSON body saying why

RPI's call names no path (reference/redpoint-rpi.md §2): the daemon's callback rebuilds the folder
below its base and keeps it there; `post_execution.py` only checks the body's shape. The token guards the POST
only: scrapers and probes usually cannot send one, and the GET endpoints change nothing.

Clients are served before any token is checked, so what one client may hold is capped: the number of
connections, the time and the bytes a request may take. Clients that break off are logged, throttled.
"""

from __future__ import annotations

import hmac
import io
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import orjson

from rpi2braze import metrics
from rpi2braze.errors import SourceError, SourceUnavailable
from rpi2braze.log import Throttle, get_logger
from rpi2braze.post_execution import MAX_BODY_BYTES, PostExecution, parse_post_execution
from rpi2braze.secret import Secret

log = get_logger(__name__)

POST_EXECUTION_PATH = "/rpi/post-execution"
SOCKET_TIMEOUT_SECONDS = 5.0        # a client that stalls mid-request loses its thread quickly
MAX_CONNECTIONS = 32                # each is a thread; RPI, Prometheus and a probe need a few at most
# Accept to end of body: RPI's small call takes milliseconds, and a client sending a byte every few
# seconds never trips the per-read SOCKET_TIMEOUT_SECONDS.
REQUEST_DEADLINE_SECONDS = 10.0
# Line, headers and body: RPI's headers are a few hundred bytes; http.server alone buffers 6.5 MB.
MAX_REQUEST_BYTES = 2 * MAX_BODY_BYTES
LOG_THROTTLE_SECONDS = 60.0         # a flood of refused or broken connections is one line a minute
LINGER_SECONDS = 2.0                # see _discard_unread_input
LINGER_CHUNK_BYTES = 64 * 1024
SHUTDOWN_POLL_SECONDS = 0.2

class HttpApi:
    """The listener's lifecycle: `start()` binds and serves in a background thread, `stop()` ends it.

    `on_post_execution(call)` queues the announced folder and returns a short description of it
    (the folder path); it raises SourceError when the call names an unsafe or unknown folder.
    `health()` returns (healthy, details).
    """

    def __init__(self, host: str, port: int, token: Secret | None,
                 on_post_execution: Callable[[PostExecution], str], health: Callable[[], tuple[bool, dict]]):
        self.host = host
        self._requested_port = port
        self.token = token
        self.on_post_execution = on_post_execution
        self.health = health
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port actually bound (useful when started with port 0), or the requested one before start."""
        return self._server.server_address[1] if self._server else self._requested_port

    def start(self) -> HttpApi:
        """Bind and start serving. Raise OSError if the address cannot be bound."""
        self._server = _Server((self.host, self._requested_port), _Handler, api=self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-api",
                                        kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS})
        self._thread.start()
        log.info("http_api_listening", host=self.host, port=self.port)
        return self

    def stop(self) -> None:
        """Stop accepting, let requests in progress finish (bounded by the request deadline), close."""
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()   # joins the handler threads still running
        self._thread.join(timeout=SOCKET_TIMEOUT_SECONDS)   # serve_forever has returned already
        self._server, self._thread = None, None

    def token_matches(self, offered: str | None) -> bool:
        """True if no token is configured, or `offered` equals it (compared in constant time)."""
        if not self.token:
            return True
        expected = self.token.reveal().encode("utf-8")
        return offered is not None and hmac.compare_digest(offered.encode("utf-8"), expected)


class _Server(ThreadingHTTPServer):
    daemon_threads = True   # a stuck client must never keep the process alive

    def __init__(self, address: tuple[str, int], handler: type, api: HttpApi):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.api = api
        self._log_throttle = Throttle(LOG_THROTTLE_SECONDS)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS round trip that can stall startup.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        # Refused at once rather than queued: a queue would only hand the slow clients more time.
        if not self._slots.acquire(blocking=False):
            self.warn_throttled("http_connection_refused", limit=MAX_CONNECTIONS, client=client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()   # no thread started, so none will release it
            raise

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: socket.socket, client_address: Any) -> None:
        # The default prints a traceback to stderr for every client that hangs up mid-request.
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            self.warn_throttled("http_client_dropped", reason=str(error), client=client_address[0])
        else:
            log.exception("http_handler_failed", client=client_address[0])

    def warn_throttled(self, event: str, **context: Any) -> None:
        """Log `event` unless one with the same `detail` went out in the last LOG_THROTTLE_SECONDS;
        the next one let through says how many were held back (`similar_since_last`)."""
        self._log_throttle.log(log.warning, event, (event, context.get("detail")), **context)


class _RequestReader(io.RawIOBase):
    """The connection's input, ended with TimeoutError REQUEST_DEADLINE_SECONDS after it was
    accepted and with ConnectionAbortedError past MAX_REQUEST_BYTES, however slowly it trickles."""

    def __init__(self, connection: socket.socket):
        self._connection = connection
        self._deadline = time.monotonic() + REQUEST_DEADLINE_SECONDS
        self._bytes_left = MAX_REQUEST_BYTES
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request deadline passed")
        if self._bytes_left <= 0:
            raise ConnectionAbortedError(f"request over {MAX_REQUEST_BYTES} bytes")
        self._connection.settimeout(min(remaining, SOCKET_TIMEOUT_SECONDS))
        received = self._connection.recv_into(buffer, min(len(buffer), self._bytes_left))
        self._bytes_left -= received
        self.received += received
        return received


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = SOCKET_TIMEOUT_SECONDS

    def setup(self) -> None:
        super().setup()
        self.rfile.close()   # the plain socket file; every read goes through the deadline instead
        self._request_reader = _RequestReader(self.connection)
        self.rfile = io.BufferedReader(self._request_reader)

    def handle(self) -> None:
        try:
            super().handle()
        except ConnectionError:
            if self._request_reader.received:
                raise   # broke off mid-request: handle_error says so
            # closed before sending a byte: a load balancer's TCP check, nothing to report
            log.debug("http_connection_closed_unused", client=self.client_address[0])

    def version_string(self) -> str:
        return "rpi2braze"   # no Python version for scanners to match against

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            body, content_type = metrics.render()
            self._send(HTTPStatus.OK, body, content_type)
        elif path == "/healthz":
            self._send_health()
        elif path == POST_EXECUTION_PATH:
            self._send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "use POST"}, headers={"Allow": "POST"})
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self) -> None:
        self._body_read = False
        self._route_post()
        if not self._body_read:
            self._discard_unread_input()

    def _route_post(self) -> None:
        url = urlsplit(self.path)
        if url.path in ("/metrics", "/healthz"):
            self._send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "use GET"}, headers={"Allow": "GET"})
        elif url.path != POST_EXECUTION_PATH:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})
        elif not self.server.api.token_matches(self._offered_token(url.query)):
            self._send_json(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong token"},
                            headers={"WWW-Authenticate": "Bearer"})
        else:
            self._accept_post_execution()

    def _accept_post_execution(self) -> None:
        body = self._read_body()
        if body is None:
            return
        try:
            call = parse_post_execution(body)
        except ValueError as exc:
            log.warning("post_execution_malformed", reason=str(exc))
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        try:
            folder = self.server.api.on_post_execution(call)
        except SourceUnavailable as exc:   # stopping or reloading: RPI may call again, or the scan finds it
            log.warning("post_execution_deferred", reason=str(exc))
            self._send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return
        except SourceError as exc:
            log.warning("post_execution_refused", reason=str(exc))
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        except Exception:  # the callback's bug must not kill the listener; RPI gets a generic answer
            log.exception("post_execution_failed", workflow_id=call.workflowAssociationInstanceID)
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error; see the daemon's log"})
            return
        log.info("post_execution_queued", workflow_id=call.workflowAssociationInstanceID,
                 channel=call.channelName, offer=call.offerName, folder=folder)
        self._send_json(HTTPStatus.ACCEPTED, {"status": "queued", "folder": folder})

    def _read_body(self) -> bytes | None:
        """Return the body; or answer and return None if its declared length is missing or too large."""
        declared = self.headers.get("Content-Length")
        if declared is None:
            self._send_json(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length is required"})
            return None
        if not (declared.isascii() and declared.isdigit()):
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": "Content-Length is not a number"})
            return None
        digits = declared.lstrip("0") or "0"   # int() refuses over 4,300 digits, leading zeros included
        if len(digits) > len(str(MAX_BODY_BYTES)) or int(digits) > MAX_BODY_BYTES:
            self._send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {MAX_BODY_BYTES} bytes"})
            return None
        self._body_read = True
        return self.rfile.read(int(digits))

    def _discard_unread_input(self) -> None:
        """Half-close, then drop input until the client closes or LINGER_SECONDS pass (nginx's
        lingering close): closing with unread input resets the connection, and a client still
        sending would never see our 413 or 401."""
        deadline = time.monotonic() + LINGER_SECONDS
        try:
            self.connection.shutdown(socket.SHUT_WR)
            while (remaining := deadline - time.monotonic()) > 0:
                self.connection.settimeout(remaining)
                if not self.connection.recv(LINGER_CHUNK_BYTES):
                    return
        except OSError:
            pass  # the client went away first, which is all we wanted

    def _offered_token(self, query: str) -> str | None:
        authorization = self.headers.get("Authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials:
            return credentials.strip()
        tokens = parse_qs(query).get("token")
        return tokens[0] if tokens else None

    def _send_health(self) -> None:
        try:
            healthy, details = self.server.api.health()
        except Exception:
            log.exception("health_check_failed")
            healthy, details = False, {"error": "health check failed; see the daemon's log"}
        status = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
        self._send_json(status, details)

    def _send_json(self, status: HTTPStatus, document: dict, headers: dict[str, str] | None = None) -> None:
        body = orjson.dumps(document, default=str)
        self._send(status, body, "application/json", headers)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        # Close after every answer: an unread body must never be parsed as the next request.
        self.close_connection = True
        self.connection.settimeout(SOCKET_TIMEOUT_SECONDS)   # the deadline was for reading the request
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The default logs the request line to stderr, which may hold ?token=; log the path only.
        log.debug("http_request", method=self.command, path=urlsplit(self.path).path, status=str(code))

    def log_error(self, format: str, *args: Any) -> None:
        # The arguments can quote the raw request line (and so a token); the format alone is enough.
        # Throttled: every slow client past the deadline lands here ("Request timed out").
        self.server.warn_throttled("http_protocol_error", detail=format)
