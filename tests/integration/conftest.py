"""Real servers on 127.0.0.1 for the remote source tests: OpenSSH's sshd and pyftpdlib (FTP, FTPS).

Without /usr/sbin/sshd (or ssh-keygen, openssl) the tests that need it are skipped, except in CI
(`CI` set), where a missing server is a broken setup and fails the test.
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
FTP_USER = "rpi"
FTP_PASSWORD = "ftp-test-password"
START_TIMEOUT_SECONDS = 10.0


def need_tool(path: str, why: str) -> str:
    """Return the full path of the program `path`; skip the test if it is missing (fail in CI)."""
    found = path if os.path.isabs(path) and os.access(path, os.X_OK) else _which(path)
    if found:
        return found
    message = f"{path} is not installed: {why}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must install it)")
    pytest.skip(message)


def _which(name: str) -> str | None:
    for folder in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def generate_ssh_key(path: str, key_type: str = "ed25519", passphrase: str = "") -> str:
    """Create an OpenSSH key pair at `path` (and `path`.pub); return `path`."""
    extra = ["-b", "2048"] if key_type == "rsa" else []
    subprocess.run([need_tool(SSH_KEYGEN, "it makes the test keys"), "-q", "-t", key_type, *extra,
                    "-N", passphrase, "-C", "rpi2braze-test", "-f", path], check=True, timeout=60)
    return path


def public_key_text(private_key_path: str) -> str:
    """Return "type base64" of the key pair's public half (without the comment)."""
    with open(private_key_path + ".pub", encoding="ascii") as public:
        key_type, key_base64 = public.read().split()[:2]
    return f"{key_type} {key_base64}"


def key_fingerprint(private_key_path: str) -> str:
    """Return the SHA256 fingerprint OpenSSH prints for the key pair, e.g. "SHA256:abc..."."""
    listing = subprocess.run([need_tool(SSH_KEYGEN, "it prints fingerprints"), "-l", "-E", "sha256",
                              "-f", private_key_path + ".pub"], check=True, capture_output=True, text=True)
    return listing.stdout.split()[1]


class SshServer:
    """OpenSSH's sshd on 127.0.0.1 with its own host key, serving SFTP with public keys only.

    `root` is the SFTP login folder (relative paths resolve there). `stop()` kills the server and
    every connection it serves, like a crash; `start()` brings it back on the same port and key.
    """

    def __init__(self, directory: str):
        self._sshd = need_tool(SSHD, "the SFTP tests need OpenSSH's server (apt-get install openssh-server)")
        self.host = "127.0.0.1"
        self.port = free_port()
        self.username = getpass.getuser()
        self.directory = directory
        self.root = os.path.join(directory, "root")
        os.makedirs(self.root)
        self.host_key = generate_ssh_key(os.path.join(directory, "host_key"))
        self.user_key = generate_ssh_key(os.path.join(directory, "user_key"))
        self.authorized_keys = os.path.join(directory, "authorized_keys")
        self.known_hosts = os.path.join(directory, "known_hosts")
        self.authorize(self.user_key)
        with open(self.known_hosts, "w", encoding="ascii") as known:
            known.write(self.known_hosts_line() + "\n")
        self._config = self._write_config()
        self._process: subprocess.Popen | None = None

    def known_hosts_line(self) -> str:
        return f"[{self.host}]:{self.port} {public_key_text(self.host_key)}"

    def authorize(self, private_key_path: str) -> None:
        with open(self.authorized_keys, "a", encoding="ascii") as authorized:
            authorized.write(public_key_text(private_key_path) + "\n")

    def start(self) -> None:
        # sshd refuses to start without its privilege separation folder.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        log = open(os.path.join(self.directory, "sshd.log"), "ab")
        with log:
            self._process = subprocess.Popen([self._sshd, "-D", "-e", "-f", self._config],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        _wait_for_port(self.host, self.port, self._process, os.path.join(self.directory, "sshd.log"))

    def stop(self) -> None:
        if self._process is None:
            return
        # sshd serves each connection in a child of its own session: kill those too, or the
        # connection under test would outlive "the server".
        sessions = _descendants(self._process.pid)
        self._process.kill()
        self._process.wait(10)
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._process = None

    def _write_config(self) -> str:
        path = os.path.join(self.directory, "sshd_config")
        with open(path, "w", encoding="ascii") as config:
            config.write(f"""ListenAddress {self.host}
Port {self.port}
HostKey {self.host_key}
PidFile {os.path.join(self.directory, "sshd.pid")}
AuthorizedKeysFile {self.authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowUsers {self.username}
Subsystem sftp internal-sftp -d {self.root}
""")
        return path


def _wait_for_port(host: str, port: int, process: subprocess.Popen, log_path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(log_path, encoding="utf-8", errors="replace") as log:
                pytest.fail(f"server exited with {process.returncode}: {log.read()[-2000:]}")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    process.kill()
    pytest.fail(f"server did not listen on {host}:{port} within {START_TIMEOUT_SECONDS} s")


def _descendants(pid: int) -> list[int]:
    """Return the ids of every process below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, pending = [], list(children.get(pid, []))
    while pending:
        child = pending.pop()
        found.append(child)
        pending.extend(children.get(child, []))
    return found


@pytest.fixture
def sshd_server(tmp_path):
    """A running sshd (see SshServer); stopped at teardown."""
    server = SshServer(str(tmp_path / "sshd"))
    server.start()
    yield server
    server.stop()


@dataclass(frozen=True)
class TlsCertificate:
    certificate: str
    private_key: str


@pytest.fixture
def tls_certificate(tmp_path) -> TlsCertificate:
    """A self-signed certificate for 127.0.0.1 (its own CA file)."""
    certificate, private_key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run([need_tool("openssl", "it makes the FTPS test certificate"), "req", "-x509",
                    "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", private_key, "-out", certificate, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return TlsCertificate(certificate, private_key)


class FtpServer:
    """pyftpdlib on 127.0.0.1 in a thread of its own; one user (FTP_USER) whose home is `home`."""

    def __init__(self, home: str, certificate: TlsCertificate | None = None, idle_timeout: float = 300):
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.ioloop import IOLoop
        from pyftpdlib.servers import FTPServer

        self.host, self.username, self.password, self.home = "127.0.0.1", FTP_USER, FTP_PASSWORD, home
        self.certificate = certificate
        authorizer = DummyAuthorizer()
        authorizer.add_user(FTP_USER, FTP_PASSWORD, home, perm="elradfmwMT")
        handler = _handler_class(certificate)
        handler.authorizer = authorizer
        handler.timeout = idle_timeout  # seconds a client may stay silent before being dropped
        self._server = FTPServer((self.host, 0), handler, ioloop=IOLoop())
        self.port = self._server.address[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-ftp-server")
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(10)

    def _serve(self) -> None:
        try:
            while not self._stopping.is_set():
                self._server.ioloop.loop(timeout=0.05, blocking=False)
        finally:
            self._server.close_all()


def _handler_class(certificate: TlsCertificate | None) -> type:
    """A handler class of its own per server: pyftpdlib configures handlers by class attributes."""
    if certificate is None:
        from pyftpdlib.handlers import FTPHandler
        return type("TestFtpHandler", (FTPHandler,), {})
    pytest.importorskip("OpenSSL", reason="pyftpdlib's FTPS server needs pyOpenSSL (pip install pyopenssl)")
    from pyftpdlib.handlers import TLS_FTPHandler
    return type("TestFtpsHandler", (TLS_FTPHandler,), {
        "certfile": certificate.certificate, "keyfile": certificate.private_key,
        "tls_control_required": True, "tls_data_required": True,
    })


@pytest.fixture
def ftp_server(tmp_path):
    """A plain FTP server (see FtpServer); stopped at teardown."""
    home = tmp_path / "ftp-home"
    home.mkdir()
    server = FtpServer(str(home))
    yield server
    server.stop()


@pytest.fixture
def ftps_server(tmp_path, tls_certificate):
    """An FTPS server (explicit AUTH TLS, protected data channel) with a self-signed certificate."""
    home = tmp_path / "ftps-home"
    home.mkdir()
    server = FtpServer(str(home), tls_certificate)
    yield server
    server.stop()


@pytest.fixture
def sandbox():
    """The Braze sandbox on a free loopback port, accepting daemon_helpers.API_KEY."""
    from daemon_helpers import API_KEY
    from rpi2braze.sandbox.server import SandboxServer
    with SandboxServer(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def running(tmp_path):
    """start(config, **env) runs `rpi2braze run` as a real process; every one is stopped at teardown."""
    from daemon_helpers import DaemonProcess
    started = []

    def start(config, **env):
        started.append(DaemonProcess(config, str(tmp_path / "daemon.log"), extra_env=env).start())
        return started[-1]

    yield start
    for daemon in started:
        daemon.stop_quietly()
