"""Staged downloads (`staging_path`) from a real sshd and a real FTP server: resumed after the server
goes away mid-download, private and never left behind."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat

import pytest

from rpi2braze.errors import SourceUnavailable
from rpi2braze.secret import Secret
from rpi2braze.settings import SourceSettings
from rpi2braze.sources.ftp import FtpSource
from rpi2braze.sources.sftp import SftpSource
from rpi2braze.sources.staging import RESUME_DELAYS_SECONDS, StagedSource

FILE = "Braze Append/Offer/1/RPI_Export_1.txt"


def put_file(root: str, size: int) -> str:
    """Write `size` bytes that differ at every offset below `root`; return their SHA-256."""
    path = os.path.join(root, "exports", FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    block = b"".join(hashlib.sha256(str(n).encode()).digest() for n in range(32768))  # 1 MiB
    with open(path, "wb") as target:
        for start in range(0, size, len(block)):
            target.write(block[: size - start])
    with open(path, "rb") as written:
        return hashlib.file_digest(written, "sha256").hexdigest()


def sftp_source(server) -> SftpSource:
    return SftpSource(SourceSettings(
        name="remote", type="sftp", path="exports", host=server.host, port=server.port,
        username=server.username, private_key_file=server.user_key, known_hosts_file=server.known_hosts))


def ftp_source(server) -> FtpSource:
    return FtpSource(SourceSettings(name="remote", type="ftp", path="/exports", host=server.host, port=server.port,
                                    username=server.username, password=Secret(server.password), tls=False))


class RestartingServer:
    """A real remote source whose first download sees the server killed and restarted after `after`
    bytes (the tests' own trigger; the source and the server are real). Records each open's offset."""

    def __init__(self, remote, server, after: int, while_down=lambda: None):
        self.name = remote.name
        self.offsets: list[int] = []
        self._remote, self._server, self._after, self._while_down = remote, server, after, while_down

    def list_dir(self, relpath: str):
        return self._remote.list_dir(relpath)

    def open_file(self, relpath: str, offset: int = 0):
        self.offsets.append(offset)
        stream = self._remote.open_file(relpath, offset)
        if len(self.offsets) == 1:
            original_read, done = stream.read, [0]

            def read(size=-1):
                if done[0] >= self._after and self._server is not None:
                    self._server.stop()
                    self._while_down()
                    self._server.start()
                    self._server = None
                data = original_read(size)
                done[0] += len(data)
                return data

            stream.read = read
        return stream


def test_a_download_cut_by_a_server_restart_resumes_where_it_stopped(tmp_path, sshd_server):
    size = 24 * 1024 * 1024 + 123  # beyond what the client buffers ahead, so the cut is felt
    digest = put_file(sshd_server.root, size)
    remote = sftp_source(sshd_server)
    flaky = RestartingServer(remote, sshd_server, after=1024 * 1024)
    try:
        with StagedSource(flaky, str(tmp_path / "staging"), sleep=lambda seconds: None).open_file(FILE) as staged:
            assert hashlib.file_digest(staged, "sha256").hexdigest() == digest
            assert len(flaky.offsets) == 2 and 0 < flaky.offsets[1] < size
            details = os.fstat(staged.fileno())
            assert stat.S_IMODE(details.st_mode) == 0o600 and details.st_nlink == 0  # private, unnamed
        assert os.listdir(tmp_path / "staging") == []
    finally:
        remote.close()


@pytest.mark.parametrize("new_size", [4 * 1024 * 1024, 30 * 1024 * 1024], ids=["shorter", "longer"])
def test_a_file_replaced_while_its_download_was_cut_is_not_read(tmp_path, sshd_server, new_size):
    put_file(sshd_server.root, 24 * 1024 * 1024 + 123)
    remote = sftp_source(sshd_server)
    path = os.path.join(sshd_server.root, "exports", FILE)

    def replace():   # RPI wrote the export again while the server was away
        with open(path, "wb") as target:
            target.write(b"x" * new_size)
        os.utime(path, (1_900_000_000, 1_900_000_000))

    flaky = RestartingServer(remote, sshd_server, after=1024 * 1024, while_down=replace)
    try:
        with pytest.raises(SourceUnavailable, match="changed while it was downloaded"):
            StagedSource(flaky, str(tmp_path / "staging"), sleep=lambda seconds: None).open_file(FILE)
        assert len(flaky.offsets) == 2 and os.listdir(tmp_path / "staging") == []
    finally:
        remote.close()


class WithoutSizes:
    """A real remote source whose listing gives no sizes (0), as some FTP servers' MLSD does."""

    def __init__(self, remote):
        self.name, self._remote = remote.name, remote

    def list_dir(self, relpath: str):
        return [dataclasses.replace(entry, size=0) for entry in self._remote.list_dir(relpath)]

    def open_file(self, relpath: str, offset: int = 0):
        return self._remote.open_file(relpath, offset)


def test_a_listing_without_sizes_still_stages_the_file(tmp_path, ftp_server):
    digest = put_file(ftp_server.home, 3 * 1024 * 1024 + 5)
    remote = ftp_source(ftp_server)
    try:
        with StagedSource(WithoutSizes(remote), str(tmp_path / "staging")).open_file(FILE) as staged:
            assert hashlib.file_digest(staged, "sha256").hexdigest() == digest
    finally:
        remote.close()


@pytest.mark.parametrize("protocol", ["sftp", "ftp"])
def test_a_remote_file_opens_at_an_offset(protocol, request):
    server = request.getfixturevalue("sshd_server" if protocol == "sftp" else "ftp_server")
    root = server.root if protocol == "sftp" else server.home
    put_file(root, 3 * 1024 * 1024)
    with open(os.path.join(root, "exports", FILE), "rb") as local:
        expected = local.read()
    source = sftp_source(server) if protocol == "sftp" else ftp_source(server)
    try:
        for offset in (0, 1, 2 * 1024 * 1024 + 7):
            with source.open_file(FILE, offset=offset) as stream:
                assert stream.read() == expected[offset:]
    finally:
        source.close()


def test_a_server_that_stays_away_postpones_after_the_last_attempt(tmp_path, sshd_server):
    put_file(sshd_server.root, 1000)
    remote = sftp_source(sshd_server)
    sshd_server.stop()
    pauses = []
    staged = StagedSource(remote, str(tmp_path / "staging"), sleep=pauses.append)
    try:
        with pytest.raises(SourceUnavailable, match="cannot connect"):
            staged.open_file(FILE)
        assert pauses == list(RESUME_DELAYS_SECONDS)
        assert os.listdir(tmp_path / "staging") == []
    finally:
        remote.close()
        sshd_server.start()  # the fixture stops it at teardown
