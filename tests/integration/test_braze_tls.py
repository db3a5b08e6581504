"""TLS to Braze is verified by default: an untrusted certificate stops delivery instead of retrying."""

import http.server
import shutil
import ssl
import subprocess
import threading

import pytest

from rpi2braze.braze_client import BrazeClient
from rpi2braze.errors import PermanentDeliveryError
from rpi2braze.secret import Secret
from rpi2braze.settings import BrazeSettings


class _Created(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as Braze

    def setup(self):
        super().setup()
        self.server.connections += 1

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"message":"success","attributes_processed":1}'
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *arguments):
        pass


@pytest.fixture
def https_server(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(certificate), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Created)
    server.daemon_threads = True
    server.connections = 0
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", str(certificate), server
    server.shutdown()
    server.server_close()
    thread.join(5)


def settings(endpoint: str, ca_file: str | None = None) -> BrazeSettings:
    return BrazeSettings(rest_endpoint=endpoint, api_key=Secret("k"), ca_file=ca_file, timeout_seconds=5)


def test_an_untrusted_certificate_is_a_configuration_error(https_server):
    endpoint, _, _ = https_server
    client = BrazeClient(settings(endpoint))
    try:
        with pytest.raises(PermanentDeliveryError, match="certificate is not trusted"):
            client.track(b'{"attributes":[{"external_id":"a"}]}')
    finally:
        client.close()


def test_ca_file_adds_a_trusted_authority_and_one_tls_connection_carries_every_request(https_server):
    endpoint, certificate, server = https_server
    client = BrazeClient(settings(endpoint, certificate))
    try:
        # TLS 1.3 session tickets arrive after the handshake: they must not make the idle
        # connection look closed by the server, or every request would pay a new handshake.
        answers = [client.track(b'{"attributes":[{"external_id":"a"}]}') for _ in range(5)]
    finally:
        client.close()
    assert [answer.status for answer in answers] == [201] * 5
    assert server.connections == 1
