"""sftp_stream's own SFTP reads against a real OpenSSH sshd (see conftest.py): exact bytes from any
offset, answers shorter than asked, a file changing or a server dying while it is read."""

from __future__ import annotations

import io
import os

import paramiko
import pytest

from rpi2braze.errors import SourceUnavailable
from rpi2braze.settings import SourceSettings
from rpi2braze.sources.sftp import SftpSource
from rpi2braze.sources.sftp_connect import connect
from rpi2braze.sources.sftp_stream import (
    LARGEST_REQUEST_BYTES, OPENSSH_REQUEST_BYTES, RECEIVE_BYTES, SftpStream, negotiated_request_bytes,
)
from rpi2braze.sources.sftp_wire import SftpWire

MEGABYTE = 1024 * 1024
NAME = "RPI_Export_1.txt"


def settings(server) -> SourceSettings:
    return SourceSettings(name="remote", type="sftp", path=server.root, host=server.host, port=server.port,
                          username=server.username, private_key_file=server.user_key,
                          known_hosts_file=server.known_hosts)


@pytest.fixture
def source(sshd_server):
    opened = SftpSource(settings(sshd_server))
    yield opened
    opened.close()


@pytest.fixture
def client(sshd_server):
    connected = connect(settings(sshd_server), sshd_server.port, paramiko.HostKeys())
    yield connected
    connected.close()


def put(server, data: bytes) -> str:
    path = os.path.join(server.root, NAME)
    with open(path, "wb") as target:
        target.write(data)
    return path


def read_until_failure(stream, chunk: int = 256 * 1024) -> tuple[bytes, Exception | None]:
    """Return the bytes read before the stream ended or failed, and the failure (None at the end)."""
    pieces = []
    try:
        while piece := stream.read(chunk):
            pieces.append(piece)
    except SourceUnavailable as error:
        return b"".join(pieces), error
    return b"".join(pieces), None


SIZE = 3 * MEGABYTE + 4321
ANSWER = 255 * 1024  # what OpenSSH 8.6+ answers at most per read


@pytest.mark.parametrize("offset", [0, 1, ANSWER - 1, ANSWER, SIZE - 1, SIZE, SIZE + 5])
@pytest.mark.parametrize("chunk", [100_000, MEGABYTE + 1])
def test_reads_exactly_the_bytes_from_the_offset_on(sshd_server, source, offset, chunk):
    data = os.urandom(SIZE)
    put(sshd_server, data)

    with source.open_file(NAME, offset) as stream:
        received, failure = read_until_failure(stream, chunk)

    assert (received, failure) == (data[offset:], None)


def test_small_reads_through_a_buffered_reader_are_exact(sshd_server, source):
    data = os.urandom(SIZE)
    put(sshd_server, data)

    with source.open_file(NAME) as stream:
        buffered = io.BufferedReader(stream, buffer_size=64 * 1024)
        received = b"".join(iter(lambda: buffered.read(4093), b""))

    assert received == data


def test_openssh_announces_a_read_limit_above_64_kib_and_the_connection_uses_aes_gcm(sshd_server, client):
    transport = client.get_transport()
    sftp = paramiko.SFTPClient.from_transport(transport)
    try:
        request_bytes = negotiated_request_bytes(SftpWire(sftp.get_channel(), RECEIVE_BYTES), transport.remote_version)
    finally:
        sftp.close()

    assert OPENSSH_REQUEST_BYTES < request_bytes <= LARGEST_REQUEST_BYTES
    assert transport.remote_cipher == transport.local_cipher == "aes128-gcm@openssh.com"


def test_requests_larger_than_the_server_answers_are_completed(sshd_server, client):
    data = os.urandom(SIZE)
    path = put(sshd_server, data)
    sftp = paramiko.SFTPClient.from_transport(client.get_transport())
    handle = sftp.open(path, "rb")
    # The server answers at most 255 KiB of each 1 MiB asked for: the rest must be asked again.
    stream = SftpStream(sftp, handle, SftpWire(sftp.get_channel(), RECEIVE_BYTES), SIZE, "test file", 12345,
                        request_bytes=LARGEST_REQUEST_BYTES)

    with stream:
        received, failure = read_until_failure(stream, MEGABYTE)

    assert (received, failure) == (data[12345:], None)


def test_a_file_that_shrinks_while_read_is_unavailable_and_stays_so(sshd_server, source):
    data = os.urandom(20 * MEGABYTE)
    path = put(sshd_server, data)

    with source.open_file(NAME) as stream:
        assert stream.read(MEGABYTE) == data[:MEGABYTE]
        os.truncate(path, 10 * MEGABYTE)
        received, failure = read_until_failure(stream)
        with pytest.raises(SourceUnavailable, match="shrank"):
            stream.read(1)

    assert "shrank" in str(failure)
    assert received == data[MEGABYTE: MEGABYTE + len(received)]


def test_a_file_that_grows_while_read_is_read_to_the_size_it_had(sshd_server, source):
    data = os.urandom(2 * MEGABYTE)
    path = put(sshd_server, data)

    with source.open_file(NAME) as stream:
        with open(path, "ab") as target:
            target.write(b"appended later")
        received, failure = read_until_failure(stream)

    assert (received, failure) == (data, None)


def test_a_server_killed_mid_read_fails_every_read_and_the_rest_resumes_exactly(sshd_server, source):
    data = os.urandom(20 * MEGABYTE)
    put(sshd_server, data)

    with source.open_file(NAME) as stream:
        first = stream.read(3 * MEGABYTE)
        sshd_server.stop()
        more, failure = read_until_failure(stream)
        with pytest.raises(SourceUnavailable):
            stream.read(1)
    sshd_server.start()
    received = first + more
    with source.open_file(NAME, offset=len(received)) as stream:
        rest, _ = read_until_failure(stream)

    assert failure is not None and len(received) < len(data)
    assert received + rest == data
