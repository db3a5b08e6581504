"""The optional HTTP listener: RPI's Post Execution call, Prometheus metrics and a health check.

    POST /rpi/post-execution   RPI's "HTTP Post/JSON" body as is -> 202 {"status": "queued", "folder": ...}
    GET  /metrics              Prometheus text format
    GET  /healthz              200 or 503, with a JSON body saying why

RPI's call names no path (reference/redpoint-rpi.md §2): the daemon's callback rebuilds the folder
below its base and keeps it there; this module only checks the body's shape. The token guards the POST
only: scrapers and probes usually cannot send one, and the GET endpoints change nothing.
"""

from __future__ import annotations

import hmac
import socket
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import orjson

from rpi2braze import metrics
from rpi2braze.errors import SourceError, SourceUnavailable
from rpi2braze.log import get_logger
from rpi2braze.secret import Secret

log = get_logger(__name__)

POST_EXECUTION_PATH = "/rpi/post-execution"
MAX_BODY_BYTES = 64 * 1024          # RPI's body is well under 1 KiB; anything near this is not RPI
MAX_FIELD_LENGTH = 255              # a path component cannot be longer on common filesystems
SOCKET_TIMEOUT_SECONDS = 5.0        # a client that stalls mid-request loses its thread quickly
LINGER_SECONDS = 2.0                # see _discard_unread_input
LINGER_CHUNK_BYTES = 64 * 1024
SHUTDOWN_POLL_SECONDS = 0.2

REQUIRED_FIELDS = ("workflowAssociationInstanceID", "channelName", "offerName")
OPTIONAL_FIELDS = ("interactionID", "workflowAssociationID", "dataflowID", "activityName",
                   "channelOfferName", "channelExecutionID", "clientID")


@dataclass(frozen=True)
class PostExecution:
    """RPI's Post Execution call. Field names are RPI's JSON keys verbatim, so the mapping needs no
    table. Values are strings (RPI sends strings; integers are accepted and converted)."""

    workflowAssociationInstanceID: str
    channelName: str
    offerName: str
    interactionID: str | None = None
    workflowAssociationID: str | None = None
    dataflowID: str | None = None
    activityName: str | None = None
    channelOfferName: str | None = None
    channelExecutionID: str | None = None
    clientID: str | None = None

    @property
    def folder_relpath(self) -> str:
        """The export folder this call announces, relative to the source base. Not yet checked:
        pass it through sources.base.safe_join before touching the filesystem."""
        return f"{self.channelName}/{self.offerName}/{self.workflowAssociationInstanceID}"


def parse_post_execution(body: bytes) -> PostExecution:
    """Given the raw request body, return the PostExecution it describes.

    Raise ValueError, with a reason fit to send back to the caller, if the body is too large, not
    JSON, not an object, lacks a required field, or has a field that is empty or not a string or an
    integer. Unknown keys are ignored: RPI versions differ in what they send.
    """
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"body is larger than {MAX_BODY_BYTES} bytes")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError("body must be a JSON object")
    values = {name: _field(document, name, required=True) for name in REQUIRED_FIELDS}
    values.update({name: _field(document, name, required=False) for name in OPTIONAL_FIELDS})
    return PostExecution(**values)


def _field(document: dict[str, Any], name: str, required: bool) -> str | None:
    """Return `document[name]` as a string; None for an absent or empty optional field."""
    value = document.get(name)
    # bool is an int subclass, and true/false is never an RPI name or ID.
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
        raise ValueError(f"field {name!r} must be a string or an integer, not {type(value).__name__}")
    text = "" if value is None else str(value)
    if not text.strip():
        if required:
            raise ValueError(f"missing required field {name!r}" if value is None else f"field {name!r} is empty")
        return None
    if len(text) > MAX_FIELD_LENGTH:
        raise ValueError(f"field {name!r} is longer than {MAX_FIELD_LENGTH} characters")
    return text


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
        """Stop accepting, let requests in progress finish (bounded by the socket timeout), close."""
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
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS round trip that can stall startup.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = SOCKET_TIMEOUT_SECONDS

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
        log.warning("http_protocol_error", detail=format)
