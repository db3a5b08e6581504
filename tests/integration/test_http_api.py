"""The HTTP listener on loopback, called the way RPI, Prometheus and a probe call it.

The Post Execution callback here does what the daemon's does with the path: rebuild it below a base
folder through safe_join, which refuses anything that would leave the base.
"""

import json
import os
import select
import socket
import struct
import threading
import time

import httpx
import pytest
from structlog.testing import capture_logs

from rpi2braze import http_api
from rpi2braze.errors import SourceError, SourceUnavailable
from rpi2braze.http_api import HttpApi
from rpi2braze.post_execution import PostExecution
from rpi2braze.secret import Secret
from rpi2braze.sources.base import safe_join
from samples import RPI_POST_EXECUTION

TOKEN = "rpi-shared-secret-7f3a"
CHANNELS = ("Braze Onboarding and Upsert", "Braze Append")

RPI_SAMPLE = RPI_POST_EXECUTION


class Daemon:
    """Stands in for the daemon's side: the callbacks and what they saw."""

    def __init__(self, base: str):
        self.base = base
        self.reset()

    def reset(self) -> None:
        self.queued: list[tuple[PostExecution, str]] = []
        self.healthy = True
        self.fail_with: Exception | None = None

    def on_post_execution(self, call: PostExecution) -> str:
        if self.fail_with is not None:
            raise self.fail_with
        if call.channelName not in CHANNELS:
            raise SourceError(f"unknown channel: {call.channelName!r}")
        folder = safe_join(self.base, f"{call.channelName}/{call.offerName}/{call.workflowAssociationInstanceID}")
        self.queued.append((call, folder))
        return folder

    def health(self) -> tuple[bool, dict]:
        if self.fail_with is not None:
            raise self.fail_with
        return self.healthy, {"sources": {"rpi": "up" if self.healthy else "down"}}


# One listener serves the whole module (starting and stopping one per test would dominate the run
# time); each test gets a fresh base folder and a clean record of calls.
@pytest.fixture(scope="module")
def shared_daemon():
    return Daemon("")


@pytest.fixture(scope="module")
def api(shared_daemon):
    listener = HttpApi("127.0.0.1", 0, Secret(TOKEN), shared_daemon.on_post_execution, shared_daemon.health)
    yield listener.start()
    listener.stop()


@pytest.fixture
def daemon(shared_daemon, tmp_path):
    base = tmp_path / "rpifileoutputdir"
    base.mkdir()
    shared_daemon.base = str(base)
    shared_daemon.reset()
    return shared_daemon


@pytest.fixture
def client(api):
    with httpx.Client(base_url=f"http://127.0.0.1:{api.port}", timeout=10) as http:
        yield http


def post(client, document, token=TOKEN, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/rpi/post-execution", content=json.dumps(document), headers=headers, **kwargs)


def raw_request(port: int, request: bytes) -> bytes:
    """Send `request` as is and return everything the server answers before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_rpis_call_is_accepted_and_handed_to_the_daemon(client, daemon):
    response = post(client, RPI_SAMPLE)
    expected_folder = os.path.join(daemon.base, "Braze Onboarding and Upsert", "Spring Welcome", "8828")
    assert response.status_code == 202
    assert response.json() == {"status": "queued", "folder": expected_folder}
    assert daemon.queued == [(PostExecution(**RPI_SAMPLE), expected_folder)]


def test_the_token_may_come_in_the_query_string(client, daemon):
    response = client.post("/rpi/post-execution", params={"token": TOKEN}, content=json.dumps(RPI_SAMPLE))
    assert response.status_code == 202
    assert len(daemon.queued) == 1


@pytest.mark.parametrize(
    ("headers", "params"),
    [({}, {}), ({"Authorization": "Bearer wrong"}, {}), ({}, {"token": "wrong"}),
     ({"Authorization": f"Basic {TOKEN}"}, {}), ({"Authorization": "Bearer"}, {"token": ""})],
    ids=["none", "wrong-bearer", "wrong-query", "not-bearer", "empty"],
)
def test_a_missing_or_wrong_token_is_refused(client, daemon, headers, params):
    response = client.post("/rpi/post-execution", content=json.dumps(RPI_SAMPLE), headers=headers, params=params)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert daemon.queued == []


def test_without_a_configured_token_none_is_needed(daemon):
    listener = HttpApi("127.0.0.1", 0, None, daemon.on_post_execution, daemon.health).start()
    try:
        response = httpx.post(f"http://127.0.0.1:{listener.port}/rpi/post-execution", json=RPI_SAMPLE)
    finally:
        listener.stop()
    assert response.status_code == 202


@pytest.mark.parametrize(
    "hostile",
    [
        {"channelName": "../../etc"},
        {"channelName": "Braze Append", "offerName": "../../../etc"},
        {"channelName": "Braze Append", "workflowAssociationInstanceID": "../../../../etc/passwd"},
        {"channelName": "Braze Append", "offerName": "..\\..\\..\\etc"},
        {"channelName": "Braze Append", "offerName": "Offer\x00A"},
        {"channelName": "/etc/cron.d"},
        {"channelName": "Unknown Channel"},
    ],
    ids=["channel-traversal", "offer-traversal", "id-traversal", "backslashes",
         "nul-byte", "absolute-channel", "unknown-channel"],
)
def test_a_folder_outside_the_base_is_refused(client, daemon, hostile):
    response = post(client, {**RPI_SAMPLE, **hostile})
    assert response.status_code == 400
    assert response.json()["error"]
    assert daemon.queued == []


def test_a_symlink_leading_out_of_the_base_is_refused(client, daemon, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    channel = os.path.join(daemon.base, "Braze Append")
    os.mkdir(channel)
    os.symlink(outside, os.path.join(channel, "Spring Welcome"))
    response = post(client, {**RPI_SAMPLE, "channelName": "Braze Append"})
    assert response.status_code == 400
    assert "leaves the source base" in response.json()["error"]
    assert daemon.queued == []


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json at all", "not JSON"),
        (b"[]", "must be a JSON object"),
        (json.dumps({"channelName": "Braze Append", "offerName": "A"}).encode(), "workflowAssociationInstanceID"),
        (json.dumps({**RPI_SAMPLE, "offerName": ""}).encode(), "is empty"),
        (json.dumps({**RPI_SAMPLE, "workflowAssociationInstanceID": [8828]}).encode(), "string or an integer"),
    ],
    ids=["not-json", "array", "missing-field", "empty-field", "wrong-type"],
)
def test_a_malformed_body_gets_400_with_the_reason(client, daemon, raw, reason):
    response = client.post("/rpi/post-execution", content=raw, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert daemon.queued == []


def test_a_10_mb_body_gets_413_even_by_a_client_that_sends_it_all_before_reading(api, daemon):
    # Like a simple HTTP client: write the whole request, then read. Had the server closed with the
    # body unread, the kernel would reset the connection and this client would see a broken pipe.
    body = b"{" + b" " * 10_000_000 + b"}"
    answer = raw_request(api.port, b"POST /rpi/post-execution HTTP/1.1\r\nHost: rpi2braze\r\n"
                                   b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                                   b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert answer.startswith(b"HTTP/1.0 413 ")
    assert daemon.queued == []


def test_413_is_sent_without_waiting_for_the_body(api):
    # Only the headers are sent: a server that tried to read the 10 MB first would never answer.
    answer = raw_request(api.port, b"POST /rpi/post-execution HTTP/1.1\r\nHost: rpi2braze\r\n"
                                   b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                                   b"Content-Length: 10485760\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 413 ")


@pytest.mark.parametrize(("length_header", "status"), [(b"", b"411"), (b"Content-Length: ten\r\n", b"400"),
                                                      (b"Content-Length: " + b"9" * 5000 + b"\r\n", b"413"),
                                                      (b"Content-Length: " + b"0" * 5000 + b"\r\n", b"400")],
                         ids=["missing", "not-a-number", "5000-digits", "5000-leading-zeros"])
def test_a_missing_or_bad_content_length_is_refused(api, length_header, status):
    answer = raw_request(api.port, b"POST /rpi/post-execution HTTP/1.1\r\nHost: rpi2braze\r\n"
                                   b"Authorization: Bearer " + TOKEN.encode() + b"\r\n" + length_header + b"\r\n")
    assert answer.split(b" ")[1] == status


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [("GET", "/rpi/post-execution", 405, "POST"), ("POST", "/metrics", 405, "GET"),
     ("POST", "/healthz", 405, "GET"), ("GET", "/", 404, None), ("POST", "/rpi/other", 404, None)],
)
def test_wrong_methods_and_paths(client, method, path, status, allow):
    response = client.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == status
    assert response.headers.get("Allow") == allow


def test_a_call_while_the_daemon_stops_or_reloads_gets_503_with_the_reason(client, daemon):
    daemon.fail_with = SourceUnavailable("rpi2braze is stopping or reloading")
    response = post(client, RPI_SAMPLE)
    assert response.status_code == 503 and "reloading" in response.json()["error"]


def test_a_failing_callback_gets_a_generic_500(client, daemon):
    daemon.fail_with = RuntimeError("database at /var/lib/rpi2braze/state.db is locked")
    response = post(client, RPI_SAMPLE)
    assert response.status_code == 500
    assert "state.db" not in response.text


def test_metrics_are_served_in_prometheus_text_format(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "rpi2braze_folders_total" in response.text
    assert "rpi2braze_braze_up" in response.text


@pytest.mark.parametrize(("healthy", "status"), [(True, 200), (False, 503)])
def test_healthz_reports_the_daemons_health(client, daemon, healthy, status):
    daemon.healthy = healthy
    response = client.get("/healthz")
    assert response.status_code == status
    assert response.json() == {"sources": {"rpi": "up" if healthy else "down"}}


def test_healthz_is_503_when_the_check_itself_fails(client, daemon):
    daemon.fail_with = RuntimeError("state file unreadable")
    response = client.get("/healthz")
    assert response.status_code == 503
    assert "state file" not in response.text


def test_the_token_never_reaches_the_log(client):
    with capture_logs() as logs:
        client.post(f"/rpi/post-execution?token={TOKEN}", content=json.dumps(RPI_SAMPLE))
        client.post("/rpi/post-execution?token=a-wrong-guess", content=json.dumps(RPI_SAMPLE))
        client.get(f"/nowhere?token={TOKEN}")
    assert logs, "the requests should have been logged"
    assert TOKEN not in repr(logs) and "a-wrong-guess" not in repr(logs)


def test_concurrent_calls_are_all_queued(client, daemon):
    def call(instance_id: int) -> None:
        assert post(client, {**RPI_SAMPLE, "workflowAssociationInstanceID": instance_id}).status_code == 202

    threads = [threading.Thread(target=call, args=(8000 + number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(queued.workflowAssociationInstanceID for queued, _ in daemon.queued) == [
        str(8000 + number) for number in range(8)]


def test_stop_releases_the_port(daemon):
    listener = HttpApi("127.0.0.1", 0, None, daemon.on_post_execution, daemon.health).start()
    port = listener.port
    listener.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


# Slow and broken clients. The limits are made small so that these tests take about a second; the
# clients give up after GIVE_UP_SECONDS, which only a server without the limits would reach.
CAP = 4
DEADLINE_SECONDS = 1.0
GIVE_UP_SECONDS = 10.0
TRICKLE_SECONDS = 0.1
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: rpi2braze\r\n\r\n"


@pytest.fixture
def limited_api(monkeypatch, daemon):
    monkeypatch.setattr(http_api, "MAX_CONNECTIONS", CAP)
    monkeypatch.setattr(http_api, "REQUEST_DEADLINE_SECONDS", DEADLINE_SECONDS)
    monkeypatch.setattr(http_api, "MAX_REQUEST_BYTES", 4096)
    listener = HttpApi("127.0.0.1", 0, Secret(TOKEN), daemon.on_post_execution, daemon.health).start()
    yield listener
    listener.stop()


def slow_client(port: int) -> socket.socket:
    """A connection that has sent the request line and the start of a header, and no more."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=GIVE_UP_SECONDS)
    connection.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
    return connection


def server_closed(connection: socket.socket) -> bool:
    """Send one more header byte; True if the server has closed the connection."""
    try:
        connection.sendall(b"a")
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(4096) == b""
    except ConnectionError:
        return True


def trickle_until_closed(connections: list[socket.socket]) -> list[socket.socket]:
    """Send a byte on each connection every TRICKLE_SECONDS until the server has closed them all or
    GIVE_UP_SECONDS pass; return those still open."""
    still_open, give_up_at = list(connections), time.monotonic() + GIVE_UP_SECONDS
    while still_open and time.monotonic() < give_up_at:
        still_open = [connection for connection in still_open if not server_closed(connection)]
        time.sleep(TRICKLE_SECONDS)
    return still_open


def answer_or_nothing(port: int, request: bytes) -> bytes:
    """The server's answer to `request`, or b"" if it closed the connection without one."""
    try:
        return raw_request(port, request)
    except ConnectionError:
        return b""


def answer_when_admitted(port: int, request: bytes) -> bytes:
    """Send `request` again while the server closes the connection unanswered, as a client retrying
    a full server would; return the first answer, or b"" after GIVE_UP_SECONDS."""
    give_up_at = time.monotonic() + GIVE_UP_SECONDS
    while not (answer := answer_or_nothing(port, request)) and time.monotonic() < give_up_at:
        time.sleep(TRICKLE_SECONDS)
    return answer


def test_a_connection_beyond_the_cap_is_closed_unanswered(limited_api, monkeypatch):
    monkeypatch.setattr(http_api, "REQUEST_DEADLINE_SECONDS", GIVE_UP_SECONDS)   # the holders keep their slots
    holders = [slow_client(limited_api.port) for _ in range(CAP)]
    try:
        with capture_logs() as logs:
            refused = answer_or_nothing(limited_api.port, HEALTHZ)
    finally:
        for connection in holders:
            connection.close()
    assert refused == b""
    assert [entry["limit"] for entry in logs if entry["event"] == "http_connection_refused"] == [CAP]
    assert answer_when_admitted(limited_api.port, HEALTHZ).startswith(b"HTTP/1.0 200 ")   # slots came back


def test_more_slow_clients_than_the_cap_do_not_keep_a_request_from_being_answered(limited_api):
    slow_clients = [slow_client(limited_api.port) for _ in range(CAP + 2)]
    try:
        answer = answer_when_admitted(limited_api.port, HEALTHZ)
        still_open = trickle_until_closed(slow_clients)
    finally:
        for connection in slow_clients:
            connection.close()
    assert answer.startswith(b"HTTP/1.0 200 ")
    assert still_open == []


def test_a_client_trickling_headers_past_the_deadline_is_disconnected(limited_api):
    with slow_client(limited_api.port) as connection:
        assert trickle_until_closed([connection]) == []
    assert answer_or_nothing(limited_api.port, HEALTHZ).startswith(b"HTTP/1.0 200 ")


def test_a_request_larger_than_the_limit_is_dropped_unanswered(limited_api):
    headers = b"".join(b"X-Padding-%d: %s\r\n" % (number, b"p" * 1000) for number in range(8))
    oversized = HEALTHZ.replace(b"\r\n\r\n", b"\r\n" + headers + b"\r\n")
    assert answer_or_nothing(limited_api.port, oversized) == b""
    assert answer_or_nothing(limited_api.port, HEALTHZ).startswith(b"HTTP/1.0 200 ")


def test_a_client_resetting_mid_request_is_one_log_line_and_no_traceback(limited_api, capfd):
    with capture_logs() as logs:
        connection = slow_client(limited_api.port)
        # Linger 0: close sends a reset, as a crashed client or a dropped network path does.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()
        answer = answer_when_admitted(limited_api.port, HEALTHZ)
        limited_api.stop()   # waits for the handler threads, so whatever they print is printed
    assert answer.startswith(b"HTTP/1.0 200 ")
    assert "Traceback" not in capfd.readouterr().err
    assert [entry["event"] for entry in logs if entry["log_level"] == "warning"] == ["http_client_dropped"]


@pytest.mark.parametrize("sent, warnings", [
    (b"", []),                                   # a load balancer's TCP check: connect, then reset
    (b"GET /hea", ["http_client_dropped"]),      # a client that broke off mid-request
], ids=["nothing-sent", "part-of-a-request-line"])
def test_a_connection_reset_is_a_dropped_client_once_it_sent_a_byte(limited_api, capfd, sent, warnings):
    with capture_logs() as logs:
        connection = socket.create_connection(("127.0.0.1", limited_api.port), timeout=GIVE_UP_SECONDS)
        connection.sendall(sent)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()
        answer = answer_when_admitted(limited_api.port, HEALTHZ)
        limited_api.stop()
    assert answer.startswith(b"HTTP/1.0 200 ")
    assert "Traceback" not in capfd.readouterr().err
    assert [entry["event"] for entry in logs if entry["log_level"] != "debug" and entry["event"].startswith("http_")] \
        == warnings
