"""SftpSource against a real OpenSSH sshd on 127.0.0.1 (see conftest.py): no mocks."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time

import pytest

from conftest import SshServer, generate_ssh_key, key_fingerprint, public_key_text
from rpi2braze.errors import SourceError, SourceUnavailable
from rpi2braze.files import data_files
from rpi2braze.model import ExportFolder, WorkflowKey
from rpi2braze.producer import Job, produce
from rpi2braze.secret import Secret
from rpi2braze.settings import MappingSettings, SourceSettings
from rpi2braze.sources.sftp import SftpSource

WORKFLOW = "Braze Append/Offer A/1234"
MEGABYTE = 1024 * 1024


def sftp_settings(server, base: str, **overrides) -> SourceSettings:
    values = dict(name="remote", type="sftp", path=base, host=server.host, port=server.port,
                  username=server.username, private_key_file=server.user_key,
                  known_hosts_file=server.known_hosts)
    values.update(overrides)
    return SourceSettings(**values)


@pytest.fixture
def base(sshd_server) -> str:
    path = os.path.join(sshd_server.root, "exports")
    os.makedirs(os.path.join(path, WORKFLOW))
    return path


@pytest.fixture
def source(sshd_server, base):
    opened = SftpSource(sftp_settings(sshd_server, base))
    yield opened
    opened.close()


def write(base: str, relpath: str, data: bytes) -> None:
    with open(os.path.join(base, relpath), "wb") as target:
        target.write(data)


def read_all(stream, chunk: int = 256 * 1024) -> bytes:
    return b"".join(iter(lambda: stream.read(chunk), b""))


def read_exactly(stream, count: int) -> bytes:
    pieces = []
    while count > 0 and (piece := stream.read(min(count, 256 * 1024))):
        pieces.append(piece)
        count -= len(piece)
    return b"".join(pieces)


def test_lists_a_folder_with_sizes_times_and_kinds(source, base):
    write(base, f"{WORKFLOW}/RPI_Export_1.txt", b"external_id\n1\n")
    os.mkdir(os.path.join(base, WORKFLOW, "sub"))
    os.utime(os.path.join(base, WORKFLOW, "RPI_Export_1.txt"), (1_700_000_000, 1_700_000_000))

    entries = {entry.name: entry for entry in source.list_dir(WORKFLOW)}

    assert set(entries) == {"RPI_Export_1.txt", "sub"}
    assert (entries["RPI_Export_1.txt"].size, entries["RPI_Export_1.txt"].mtime) == (14, 1_700_000_000.0)
    assert (entries["RPI_Export_1.txt"].is_dir, entries["sub"].is_dir) == (False, True)
    assert [entry.name for entry in source.list_dir("")] == ["Braze Append"]


def test_a_missing_folder_lists_empty_but_a_missing_base_is_unavailable(sshd_server, source, base):
    assert source.list_dir("Braze Append/Offer A/9999") == []
    missing_base = SftpSource(sftp_settings(sshd_server, base + "-missing"))
    with pytest.raises(SourceUnavailable, match="does not exist"):
        missing_base.list_dir("")
    missing_base.close()


def test_a_name_that_is_not_utf8_makes_its_folder_unusable_with_a_reason_and_no_more(source, base):
    os.mkdir(os.path.join(os.fsencode(base), b"Braze Append", b"Caf\xe9"))   # Latin-1 "Caf\u00e9"
    with pytest.raises(SourceError, match="not UTF-8; rename it on the server"):
        source.list_dir("Braze Append")
    assert [entry.name for entry in source.list_dir("")] == ["Braze Append"]   # the session goes on


def test_symbolic_links_are_listed_under_their_own_names(source, base):
    os.symlink(os.path.join(base, "Braze Append"), os.path.join(base, "Braze Onboarding and Upsert"))
    os.symlink(os.path.join(base, "nowhere"), os.path.join(base, "dangling"))
    entries = {entry.name: entry.is_dir for entry in source.list_dir("")}
    assert entries == {"Braze Append": True, "Braze Onboarding and Upsert": True}


@contextlib.contextmanager
def sshd_configured(tmp_path, line: str):
    """An sshd with one more line in its configuration, or one replaced (the SFTP subsystem)."""
    server = SshServer(str(tmp_path / "sshd"))
    with open(server._config, encoding="utf-8") as config:
        text = config.read()
    subsystem = next(current for current in text.splitlines() if current.startswith("Subsystem"))
    with open(server._config, "w", encoding="utf-8") as config:
        config.write(text.replace(subsystem, line) if line.startswith("Subsystem") else text + line + "\n")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_channel_the_server_closed_while_idle_is_opened_again(tmp_path):
    with sshd_configured(tmp_path, "ChannelTimeout session:subsystem:sftp=1s session=1s") as server:   # OpenSSH 9.2+
        os.makedirs(os.path.join(server.root, "exports", "Braze Append"))
        source = SftpSource(sftp_settings(server, os.path.join(server.root, "exports")))
        try:
            for _ in range(3):
                assert [entry.name for entry in source.list_dir("")] == ["Braze Append"]
                time.sleep(3)   # the server closes the idle channel; the connection stays
        finally:
            source.close()


def test_a_server_that_starts_no_sftp_subsystem_is_unavailable_not_waited_for(tmp_path, monkeypatch):
    monkeypatch.setattr("rpi2braze.sources.sftp_connect.OPERATION_TIMEOUT_SECONDS", 2.0)
    with sshd_configured(tmp_path, "Subsystem sftp /bin/sleep 600") as server:
        source = SftpSource(sftp_settings(server, "exports"))
        try:
            with pytest.raises(SourceUnavailable):
                source.list_dir("")
        finally:
            source.close()


def test_a_folder_of_more_files_than_the_server_allows_sessions_is_read_one_file_at_a_time(tmp_path):
    with sshd_configured(tmp_path, "MaxSessions 3") as server:   # listing, one file, one closing
        folder = os.path.join(server.root, "exports", WORKFLOW)
        os.makedirs(folder)
        for number in range(4):
            write(os.path.join(server.root, "exports"), f"{WORKFLOW}/RPI_Export_{number}.txt",
                  b"external_id,email\n" + b"".join(b"u%d-%d,u%d@example.com\n" % (number, row, row) for row in range(10)))
        settings = sftp_settings(server, "exports")
        source = SftpSource(settings)
        try:
            key = WorkflowKey("remote", "Braze Append", "Offer A", "1234")
            files = data_files(source.list_dir(key.relpath), settings.data_files)
            job = Job(ExportFolder(key, "append", files, source.describe(key.relpath)), settings, MappingSettings(),
                      75, 4_000_000, 2)
            with produce(job, source) as (headers, batches):
                assert [name for name, _ in headers] == [f"RPI_Export_{number}.txt" for number in range(4)]
                assert sum(batch.row_count for batch in batches) == 40
        finally:
            source.close()


def test_describe_names_user_host_port_and_path(sshd_server, source, base):
    expected = f"sftp://{sshd_server.username}@127.0.0.1:{sshd_server.port}{base}/{WORKFLOW}"
    assert source.describe(WORKFLOW) == expected
    assert source.watch(lambda: None) is None


def test_reads_a_large_file_byte_exact(source, base):
    data = os.urandom(20 * MEGABYTE + 12345)
    write(base, f"{WORKFLOW}/RPI_Export_1.txt", data)

    with source.open_file(f"{WORKFLOW}/RPI_Export_1.txt") as stream:
        received = hashlib.sha256(read_all(stream)).hexdigest()

    assert received == hashlib.sha256(data).hexdigest()


def test_reads_files_open_at_the_same_time_interleaved(source, base):
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


def test_a_file_closed_half_read_leaves_the_source_usable(source, base):
    data = os.urandom(20 * MEGABYTE)
    write(base, f"{WORKFLOW}/RPI_Export_1.txt", data)

    with source.open_file(f"{WORKFLOW}/RPI_Export_1.txt") as stream:
        assert stream.read(MEGABYTE) == data[:MEGABYTE]

    assert [entry.name for entry in source.list_dir(WORKFLOW)] == ["RPI_Export_1.txt"]
    with source.open_file(f"{WORKFLOW}/RPI_Export_1.txt") as stream:
        assert read_all(stream) == data


def test_a_file_that_vanished_is_unavailable(source):
    with pytest.raises(SourceUnavailable, match="vanished"):
        source.open_file(f"{WORKFLOW}/RPI_Export_404.txt")


@pytest.mark.parametrize("relpath", ["../outside", "Braze Append/../../outside", "/etc", "a\x00b", "..\\outside"])
@pytest.mark.parametrize("operation", ["list_dir", "open_file", "move_folder"])
def test_paths_leaving_the_base_are_refused(source, tmp_path, relpath, operation):
    arguments = (relpath, str(tmp_path / "archive")) if operation == "move_folder" else (relpath,)
    with pytest.raises(SourceError) as refused:
        getattr(source, operation)(*arguments)
    assert not isinstance(refused.value, SourceUnavailable)


def test_an_unknown_host_key_is_refused_naming_its_fingerprint(sshd_server, base, tmp_path):
    empty_known_hosts = tmp_path / "empty_known_hosts"
    empty_known_hosts.write_text("")
    stranger = SftpSource(sftp_settings(sshd_server, base, known_hosts_file=str(empty_known_hosts)))

    with pytest.raises(SourceError) as refused:
        stranger.list_dir("")

    assert not isinstance(refused.value, SourceUnavailable)
    message = str(refused.value)
    assert key_fingerprint(sshd_server.host_key) in message
    assert f"127.0.0.1:{sshd_server.port}" in message and "accept_new_host_keys" in message
    assert empty_known_hosts.read_text() == ""


@pytest.mark.parametrize("accept_new_host_keys", [False, True])
def test_a_changed_host_key_is_refused_even_when_accepting_new_keys(sshd_server, base, tmp_path, accept_new_host_keys):
    impostor_key = generate_ssh_key(str(tmp_path / "impostor"))
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd_server.port} {public_key_text(impostor_key)}\n")
    wary = SftpSource(sftp_settings(sshd_server, base, known_hosts_file=str(known_hosts),
                                    accept_new_host_keys=accept_new_host_keys))

    with pytest.raises(SourceError) as refused:
        wary.list_dir("")

    assert not isinstance(refused.value, SourceUnavailable)
    assert "CHANGED" in str(refused.value)
    assert key_fingerprint(sshd_server.host_key) in str(refused.value)
    assert key_fingerprint(impostor_key) in str(refused.value)
    assert known_hosts.read_text().count("\n") == 1


def test_accept_new_host_keys_records_the_key_in_known_hosts(sshd_server, base, tmp_path):
    known_hosts = tmp_path / "new_known_hosts"
    trusting = SftpSource(sftp_settings(sshd_server, base, known_hosts_file=str(known_hosts),
                                        accept_new_host_keys=True))

    assert [entry.name for entry in trusting.list_dir("")] == ["Braze Append"]
    trusting.close()

    assert known_hosts.read_text() == sshd_server.known_hosts_line() + "\n"
    strict = SftpSource(sftp_settings(sshd_server, base, known_hosts_file=str(known_hosts)))
    assert [entry.name for entry in strict.list_dir("")] == ["Braze Append"]
    strict.close()


def _unauthorised_key(server, directory) -> dict:
    return {"private_key_file": generate_ssh_key(str(directory / "stranger_key"))}


def _password_only(server, directory) -> dict:
    return {"private_key_file": None, "password": Secret("hunter2-very-secret")}


def _wrong_passphrase(server, directory) -> dict:
    key = generate_ssh_key(str(directory / "locked_key"), passphrase="the-right-passphrase")
    server.authorize(key)
    return {"private_key_file": key, "private_key_passphrase": Secret("hunter2-very-secret")}


def _missing_passphrase(server, directory) -> dict:
    key = generate_ssh_key(str(directory / "locked_key"), passphrase="hunter2-very-secret")
    server.authorize(key)
    return {"private_key_file": key}


@pytest.mark.parametrize("credentials", [_unauthorised_key, _password_only, _wrong_passphrase, _missing_passphrase])
def test_refused_credentials_are_a_source_error_without_the_secret(sshd_server, base, tmp_path, credentials):
    refused_source = SftpSource(sftp_settings(sshd_server, base, **credentials(sshd_server, tmp_path)))

    with pytest.raises(SourceError) as refused:
        refused_source.list_dir("")

    assert not isinstance(refused.value, SourceUnavailable)
    assert "hunter2" not in str(refused.value) and "hunter2" not in repr(refused.value)


@pytest.mark.parametrize("key_type, passphrase", [("ecdsa", ""), ("rsa", ""), ("ed25519", "correct horse")])
def test_logs_in_with_each_key_type_and_a_passphrase(sshd_server, base, tmp_path, key_type, passphrase):
    key = generate_ssh_key(str(tmp_path / f"{key_type}_key"), key_type, passphrase)
    sshd_server.authorize(key)
    keyed = SftpSource(sftp_settings(sshd_server, base, private_key_file=key,
                                     private_key_passphrase=Secret(passphrase) if passphrase else None))

    assert [entry.name for entry in keyed.list_dir("")] == ["Braze Append"]
    keyed.close()


def test_a_stopped_server_is_unavailable_and_the_source_reconnects(sshd_server, source):
    assert source.list_dir("") != []
    sshd_server.stop()

    with pytest.raises(SourceUnavailable):
        source.list_dir("")

    sshd_server.start()
    assert [entry.name for entry in source.list_dir("")] == ["Braze Append"]


def test_a_server_killed_mid_read_fails_the_read_and_a_fresh_read_is_exact(sshd_server, source, base):
    data = os.urandom(20 * MEGABYTE)
    write(base, f"{WORKFLOW}/RPI_Export_1.txt", data)

    with source.open_file(f"{WORKFLOW}/RPI_Export_1.txt") as stream:
        # At most 8 MB are requested ahead of the reader: after 5 MB, the last 7 MB of the 20 were
        # never asked for, so they cannot arrive once the server stops.
        assert read_exactly(stream, 5 * MEGABYTE) == data[: 5 * MEGABYTE]
        sshd_server.stop()
        with pytest.raises(SourceUnavailable):
            read_all(stream)

    sshd_server.start()
    with source.open_file(f"{WORKFLOW}/RPI_Export_1.txt") as stream:
        assert read_all(stream) == data


def test_move_folder_creates_parents_and_never_overwrites(source, base, tmp_path):
    archive = str(tmp_path / "archive" / "delivered")
    write(base, f"{WORKFLOW}/RPI_Export_1.txt", b"first")

    first_target = source.move_folder(WORKFLOW, archive)
    os.makedirs(os.path.join(base, WORKFLOW))
    write(base, f"{WORKFLOW}/RPI_Export_1.txt", b"second")
    second_target = source.move_folder(WORKFLOW, archive)

    assert first_target == f"{archive}/{WORKFLOW}"
    assert second_target == f"{archive}/{WORKFLOW}.1"
    with open(os.path.join(second_target, "RPI_Export_1.txt"), "rb") as moved:
        assert moved.read() == b"second"
    assert source.list_dir(WORKFLOW) == []


def test_move_folder_to_a_path_relative_to_the_login_folder(sshd_server, source, base):
    target = source.move_folder(WORKFLOW, "archive")

    assert target == f"archive/{WORKFLOW}"
    assert os.path.isdir(os.path.join(sshd_server.root, "archive", WORKFLOW))


def test_moving_the_base_itself_is_refused(source, tmp_path):
    with pytest.raises(SourceError, match="base folder"):
        source.move_folder("", str(tmp_path / "archive"))
