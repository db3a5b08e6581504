"""FtpSource against a real pyftpdlib server on 127.0.0.1, plain and FTPS (see conftest.py)."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from conftest import FtpServer
from rpi2braze.errors import SourceError, SourceUnavailable
from rpi2braze.secret import Secret
from rpi2braze.settings import SourceSettings
from rpi2braze.sources.ftp import FtpSource

WORKFLOW = "Braze Append/Offer A/1234"
MEGABYTE = 1024 * 1024


def ftp_settings(server, **overrides) -> SourceSettings:
    values = dict(name="remote", type="ftp", path="/exports", host=server.host, port=server.port,
                  username=server.username, password=Secret(server.password), tls=False)
    values.update(overrides)
    return SourceSettings(**values)


def make_workflow(server) -> str:
    """Create the workflow folder below the server's /exports; return the local path of /exports."""
    base = os.path.join(server.home, "exports")
    os.makedirs(os.path.join(base, WORKFLOW))
    return base


@pytest.fixture
def source(ftp_server):
    opened = FtpSource(ftp_settings(ftp_server))
    yield opened
    opened.close()


def write(base: str, relpath: str, data: bytes) -> None:
    with open(os.path.join(base, relpath), "wb") as target:
        target.write(data)


def read_all(stream, chunk: int = 256 * 1024) -> bytes:
    return b"".join(iter(lambda: stream.read(chunk), b""))


def test_lists_a_folder_with_sizes_times_and_kinds(ftp_server, source):
    base = make_workflow(ftp_server)
    write(base, f"{WORKFLOW}/RPI_Export_1.txt", b"external_id\n1\n")
    os.mkdir(os.path.join(base, WORKFLOW, "sub"))
    os.utime(os.path.join(base, WORKFLOW, "RPI_Export_1.txt"), (1_700_000_000, 1_700_000_000))

    entries = {entry.name: entry for entry in source.list_dir(WORKFLOW)}

    assert set(entries) == {"RPI_Export_1.txt", "sub"}
    assert (entries["RPI_Export_1.txt"].size, entries["RPI_Export_1.txt"].mtime) == (14, 1_700_000_000.0)
    assert (entries["RPI_Export_1.txt"].is_dir, entries["sub"].is_dir) == (False, True)
    assert [entry.name for entry in source.list_dir("")] == ["Braze Append"]


def test_a_missing_folder_lists_empty_but_a_missing_base_is_unavailable(ftp_server, source):
    with pytest.raises(SourceUnavailable, match="does not exist"):
        source.list_dir("")
    make_workflow(ftp_server)
    assert source.list_dir("Braze Append/Offer A/9999") == []


def test_a_name_that_is_not_utf8_makes_its_folder_unusable_with_a_reason_and_no_more(
        ftp_server, source, monkeypatch):
    monkeypatch.setattr(ftp_server._server.handler, "unicode_errors", "surrogateescape")   # raw bytes, as many servers send
    base = make_workflow(ftp_server)
    os.mkdir(os.path.join(os.fsencode(base), b"Braze Append", b"Caf\xe9"))   # Latin-1 "Caf\u00e9"
    with pytest.raises(SourceError, match="not UTF-8; rename it on the server"):
        source.list_dir("Braze Append")
    assert [entry.name for entry in source.list_dir("")] == ["Braze Append"]   # the connection goes on


def test_a_folder_the_account_may_not_list_is_an_error_not_an_empty_folder(ftp_server, source):
    base = make_workflow(ftp_server)
    write(base, f"{WORKFLOW}/RPI_Export_1.txt", b"external_id\n1\n")
    ftp_server._server.handler.authorizer.override_perm(
        ftp_server.username, os.path.join(base, WORKFLOW), "e", recursive=True)   # no "l": listing refused
    with pytest.raises(SourceError, match="cannot list .*1234: the server refused \\(550"):
        source.list_dir(WORKFLOW)
    assert source.list_dir("Braze Append/Offer A/9999") == []   # a folder that is not there is empty


def test_describe_names_user_host_port_and_path(ftp_server, source):
    assert source.describe(WORKFLOW) == f"ftp://rpi@127.0.0.1:{ftp_server.port}/exports/{WORKFLOW}"
    assert source.watch(lambda: None) is None


def test_reads_a_large_file_byte_exact(ftp_server, source):
    data = os.urandom(20 * MEGABYTE + 12345)
    write(make_workflow(ftp_server), f"{WORKFLOW}/RPI_Export_1.txt", data)

    with source.open_file(f"{WORKFLOW}/RPI_Export_1.txt") as stream:
        received = hashlib.sha256(read_all(stream)).hexdigest()

    assert received == hashlib.sha256(data).hexdigest()


def test_reads_files_open_at_the_same_time_interleaved(ftp_server, source):
    base = make_workflow(ftp_server)
    first, second = os.urandom(3 * MEGABYTE), os.urandom(2 * MEGABYTE + 7)
    write(base, f"{WORKFLOW}/RPI_Export_1.txt", first)
    write(base, f"{WORKFLOW}/RPI_Export_2.txt", second)
    pieces: dict[int, list[bytes]] = {1: [], 2: []}

    with (source.open_file(f"{WORKFLOW}/RPI_Export_1.txt") as one,
          source.open_file(f"{WORKFLOW}/RPI_Export_2.txt") as two):
        while True:
            chunks = {1: one.read(100_000), 2: two.read(70_000)}
            for number, chunk in chunks.items():
                pieces[number].append(chunk)
            if not any(chunks.values()):
                break

    assert (b"".join(pieces[1]), b"".join(pieces[2])) == (first, second)
    assert [entry.name for entry in source.list_dir(WORKFLOW)] == ["RPI_Export_1.txt", "RPI_Export_2.txt"]


def test_a_file_that_vanished_is_unavailable(ftp_server, source):
    make_workflow(ftp_server)
    with pytest.raises(SourceUnavailable):
        source.open_file(f"{WORKFLOW}/RPI_Export_404.txt")


@pytest.mark.parametrize("relpath", ["../outside", "Braze Append/../../outside", "/etc", "a\x00b",
                                     "a\r\nDELE b", "a\nRMD b"])
@pytest.mark.parametrize("operation", ["list_dir", "open_file", "move_folder"])
def test_paths_leaving_the_base_or_smuggling_commands_are_refused(source, relpath, operation):
    arguments = (relpath, "/archive") if operation == "move_folder" else (relpath,)
    with pytest.raises(SourceError) as refused:
        getattr(source, operation)(*arguments)
    assert not isinstance(refused.value, SourceUnavailable)


def test_a_wrong_password_is_a_source_error_without_the_password(ftp_server):
    refused_source = FtpSource(ftp_settings(ftp_server, password=Secret("hunter2-very-secret")))

    with pytest.raises(SourceError) as refused:
        refused_source.list_dir("")

    assert not isinstance(refused.value, SourceUnavailable)
    assert "hunter2" not in str(refused.value)


def test_a_stopped_server_is_unavailable(ftp_server, source):
    make_workflow(ftp_server)
    assert source.list_dir("") != []
    ftp_server.stop()

    with pytest.raises(SourceUnavailable):
        source.list_dir("")


def test_a_control_connection_the_server_dropped_while_idle_is_replaced(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    server = FtpServer(str(home), idle_timeout=0.5)
    try:
        make_workflow(server)
        patient = FtpSource(ftp_settings(server))
        assert [entry.name for entry in patient.list_dir("")] == ["Braze Append"]
        time.sleep(1.5)  # the server drops the silent connection after 0.5 s (checked once a second)
        assert [entry.name for entry in patient.list_dir("")] == ["Braze Append"]
        patient.close()
    finally:
        server.stop()


def test_a_server_stopped_mid_read_fails_the_read(ftp_server, source):
    data = os.urandom(40 * MEGABYTE)
    write(make_workflow(ftp_server), f"{WORKFLOW}/RPI_Export_1.txt", data)

    with source.open_file(f"{WORKFLOW}/RPI_Export_1.txt") as stream:
        assert stream.read(MEGABYTE)
        ftp_server.stop()
        # Whatever was already in socket buffers may still arrive; the end must not look whole.
        with pytest.raises(SourceUnavailable):
            read_all(stream)


def test_move_folder_creates_parents_and_never_overwrites(ftp_server, source):
    base = make_workflow(ftp_server)
    write(base, f"{WORKFLOW}/RPI_Export_1.txt", b"first")

    first_target = source.move_folder(WORKFLOW, "/archive/delivered")
    os.makedirs(os.path.join(base, WORKFLOW))
    write(base, f"{WORKFLOW}/RPI_Export_1.txt", b"second")
    second_target = source.move_folder(WORKFLOW, "archive/delivered")

    assert (first_target, second_target) == (f"/archive/delivered/{WORKFLOW}", f"archive/delivered/{WORKFLOW}.1")
    moved = os.path.join(ftp_server.home, "archive", "delivered", f"{WORKFLOW}.1", "RPI_Export_1.txt")
    with open(moved, "rb") as moved_file:
        assert moved_file.read() == b"second"
    assert source.list_dir(WORKFLOW) == []


def test_moving_the_base_itself_is_refused(source):
    with pytest.raises(SourceError, match="base folder"):
        source.move_folder("", "/archive")


def test_ftps_refuses_a_certificate_it_cannot_verify(ftps_server):
    untrusting = FtpSource(ftp_settings(ftps_server, tls=True))

    with pytest.raises(SourceError) as refused:
        untrusting.list_dir("")

    assert not isinstance(refused.value, SourceUnavailable)
    assert "certificate is not trusted" in str(refused.value)


@pytest.mark.parametrize("trust", ["ca_file", "tls_verify_off"])
def test_ftps_lists_and_reads_over_tls_when_the_certificate_is_trusted(ftps_server, trust):
    settings = {"ca_file": ftps_server.certificate.certificate} if trust == "ca_file" else {"tls_verify": False}
    trusting = FtpSource(ftp_settings(ftps_server, tls=True, **settings))
    data = os.urandom(3 * MEGABYTE)
    write(make_workflow(ftps_server), f"{WORKFLOW}/RPI_Export_1.txt", data)

    assert [entry.name for entry in trusting.list_dir(WORKFLOW)] == ["RPI_Export_1.txt"]
    with trusting.open_file(f"{WORKFLOW}/RPI_Export_1.txt") as stream:
        assert read_all(stream) == data
    assert trusting.describe("").startswith("ftps://")
    trusting.close()


def test_plain_ftp_against_a_server_requiring_tls_is_a_source_error(ftps_server):
    plain = FtpSource(ftp_settings(ftps_server))

    with pytest.raises(SourceError) as refused:
        plain.list_dir("")

    assert not isinstance(refused.value, SourceUnavailable)
