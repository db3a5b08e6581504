"""BrazeClient's keep-alive connection against a real HTTP server (and proxy) on loopback."""

import contextlib
import http.server
import socket
import threading

import pytest

from rpi2braze.braze_client import BrazeClient
from rpi2braze.errors import PermanentDeliveryError, RetryableDeliveryError
from rpi2braze.secret import Secret
from rpi2braze.settings import BrazeSettings

BODY = b'{"attributes":[{"external_id":"a"}]}'


class _Server(http.server.ThreadingHTTPServer):
    """Counts connections and requests; `closed` is set each time it hangs up on a client."""

    daemon_threads = True

    def __init__(self, handler):
        super().__init__(("127.0.0.1", 0), handler)
        self.connections = 0
        self.paths: list[str] = []
        self.closed = threading.Event()

    def process_request(self, request, client_address):
        self.connections += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        super().shutdown_request(request)
        self.closed.set()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hang_up_after_answer = False

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.paths.append(self.path)
        body = b'{"message":"success"}'
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-RateLimit-Remaining", "41")
        self.end_headers()
        self.wfile.write(body)
        # an idle timeout at a proxy: the connection ends without a "Connection: close" warning
        self.close_connection = self.hang_up_after_answer

    def log_message(self, *arguments):
        pass


class _HangsUp(_Handler):
    hang_up_after_answer = True


def serve(handler):
    server = _Server(handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def server(request):
    server, thread = serve(request.param)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def client_for(server, path: str = "") -> BrazeClient:
    endpoint = f"http://127.0.0.1:{server.server_address[1]}{path}"
    return BrazeClient(BrazeSettings(endpoint, Secret("k"), allow_insecure_http=True, timeout_seconds=5))


@pytest.mark.parametrize("server", [_Handler], indirect=True)
def test_requests_share_one_connection_and_read_rate_headers(server):
    client = client_for(server, "/rest/")
    try:
        answers = [client.track(BODY) for _ in range(5)]
    finally:
        client.close()
    assert [answer.status for answer in answers] == [201] * 5
    assert answers[0].rate_remaining == 41
    assert server.connections == 1
    assert server.paths == ["/rest/users/track"] * 5


@pytest.mark.parametrize("server", [_HangsUp], indirect=True)
def test_a_connection_closed_while_idle_is_replaced_not_reported_as_a_failure(server):
    client = client_for(server)
    try:
        for _ in range(3):
            server.closed.clear()
            assert client.track(BODY).status == 201
            assert server.closed.wait(5)
    finally:
        client.close()
    assert server.connections == 3


def test_no_server_is_a_retryable_error_without_the_key():
    with _Server(_Handler) as unused:   # bound, then closed: nothing listens on that port
        port = unused.server_address[1]
    client = BrazeClient(BrazeSettings(f"http://127.0.0.1:{port}", Secret("secret-key"),
                                       allow_insecure_http=True, timeout_seconds=5))
    try:
        with pytest.raises(RetryableDeliveryError) as raised:
            client.track(BODY)
    finally:
        client.close()
    assert raised.value.status is None
    assert "secret-key" not in str(raised.value)


@pytest.mark.parametrize("server", [_Handler], indirect=True)
def test_a_key_no_header_can_carry_stops_delivery_without_showing_it(server):
    # Config refuses such a key (test_config.py); this is what keeps it out of messages if one gets by.
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    client = BrazeClient(BrazeSettings(endpoint, Secret("secret-key\r"), allow_insecure_http=True, timeout_seconds=5))
    try:
        with pytest.raises(PermanentDeliveryError) as raised:
            client.track(BODY)
    finally:
        client.close()
    assert "braze.api_key" in str(raised.value) and "secret-key" not in str(raised.value)
    assert raised.value.__suppress_context__   # a logged traceback does not show http.client's message
    assert server.connections == 0


class _ConnectProxy:
    """A CONNECT-only HTTP proxy on loopback that relays bytes and records what it was asked."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.requests: list[bytes] = []
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    @property
    def url(self) -> str:
        return f"http://user:p%40ss@127.0.0.1:{self.listener.getsockname()[1]}"

    def _start(self, target, *arguments) -> None:
        thread = threading.Thread(target=target, args=arguments, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            head = b""
            while b"\r\n\r\n" not in head:
                head += client.recv(4096)
            self.requests.append(head)
            target = head.split()[1].decode()
            upstream = socket.create_connection((target.rsplit(":", 1)[0], int(target.rsplit(":", 1)[1])))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._start(self._relay, client, upstream)
            self._start(self._relay, upstream, client)

    @staticmethod
    def _relay(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)   # wakes the accept() waiting in its thread
        self.listener.close()
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def proxy():
    running = _ConnectProxy()
    yield running
    running.close()


@pytest.mark.parametrize("server", [_Handler], indirect=True)
def test_the_proxy_the_environment_names_carries_requests_in_a_tunnel(server, proxy, monkeypatch):
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    client = client_for(server)
    try:
        assert [client.track(BODY).status for _ in range(3)] == [201] * 3
    finally:
        client.close()
    port = server.server_address[1]
    (request,) = proxy.requests   # one tunnel, kept alive
    assert request.startswith(f"CONNECT 127.0.0.1:{port} HTTP/1.".encode())
    assert b"Proxy-Authorization: Basic dXNlcjpwQHNz\r\n" in request   # user:p@ss
    assert server.paths == ["/users/track"] * 3


@pytest.mark.parametrize("server", [_Handler], indirect=True)
def test_no_proxy_sends_requests_directly(server, proxy, monkeypatch):
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    client = client_for(server)
    try:
        assert client.track(BODY).status == 201
    finally:
        client.close()
    assert proxy.requests == []


@pytest.mark.parametrize("variable, value, words", [
    ("https_proxy", "http://proxyuser:Pr0xyPa55/word@127.0.0.1:3128", "not a usable proxy URL"),   # '/' not encoded
    ("https_proxy", "http://proxyuser:Pr0xyPa55#word@127.0.0.1:3128", "not a usable proxy URL"),
    ("https_proxy", "https://proxyuser:Pr0xyPa55word@127.0.0.1:3128", "only http:// proxies"),   # password in clear
    ("https_proxy", "socks5://proxyuser:Pr0xyPa55word@127.0.0.1:1080", "only http:// proxies"),
])
def test_an_unusable_proxy_is_refused_without_showing_its_address(monkeypatch, variable, value, words):
    monkeypatch.setenv(variable, value)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    settings = BrazeSettings(rest_endpoint="https://rest.iad-01.braze.com", api_key=Secret("k"))
    with pytest.raises(ValueError) as error:
        BrazeClient(settings)
    assert words in str(error.value) and "HTTPS_PROXY" in str(error.value)
    assert "Pr0xyPa55" not in str(error.value) and "proxyuser" not in str(error.value)
    assert error.value.__context__ is None, "a traceback would show the parser's error, which quotes the password"
