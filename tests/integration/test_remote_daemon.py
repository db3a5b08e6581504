"""Remote shares end to end (issue 4): a real `rpi2braze run` process reading over SFTP from OpenSSH's
sshd and over FTP from pyftpdlib, or polling a folder, and delivering to the Braze sandbox."""

import collections
import os
import time

import httpx
import pytest

from conftest import key_fingerprint
from daemon_helpers import API_KEY, DaemonProcess, local_source, status, wait_for, wait_status, write_config
from rpi2braze.sandbox.server import Faults, SandboxServer

pytestmark = pytest.mark.slow

UPSERT = "Braze Onboarding and Upsert"
OFFER = "Spring Offer"
HEADER = "external_id,first_name,email,country,Output Name,Tier\n"
SCAN = "    settle_seconds: {settle}\n    scan_interval_seconds: 0.5\n"


def export_bytes(rows: int, prefix: str = "u", padding: int = 0) -> bytes:
    """An export of `rows` users; `padding` adds CDP columns of 200 characters each (fatter rows)."""
    header = HEADER.rstrip("\n") + "".join(f",Note {n}" for n in range(padding)) + "\n"
    fill = "".join(f",{'x' * 199}{n}" for n in range(padding))
    body = "".join(f"{prefix}-{n:05d},Name{n},{prefix}{n}@example.com,Germany,Gold,T{n % 3}{fill}\n"
                   for n in range(rows))
    return (header + body).encode()


def write_export(base, workflow_id: str, content: bytes, offer: str = OFFER) -> str:
    folder = os.path.join(base, UPSERT, offer, workflow_id)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"RPI_Export_{workflow_id}.txt"), "wb") as export:
        export.write(content)
    return folder


def assert_profiles(sandbox, rows: int, prefix: str = "u") -> None:
    profiles = sandbox.store.all()
    users = sorted(name for name in profiles if name.startswith(f"{prefix}-"))
    assert users == [f"{prefix}-{n:05d}" for n in range(rows)]
    for n in (0, rows // 2, rows - 1):
        profile = profiles[f"{prefix}-{n:05d}"]
        assert (profile["first_name"], profile["email"], profile["country"]) == (
            f"Name{n}", f"{prefix}{n}@example.com", "DE")
        custom = profile["custom_attributes"]
        assert custom["rpi_audience_outputs"] == ["Gold"] and custom["rpi_offers"] == [OFFER]
        assert custom["rpi_cdp_attributes"]["tier"] == f"T{n % 3}"


def sent_per_user(sandbox) -> collections.Counter:
    assert all(record.status == 201 for record in sandbox.requests), "the sandbox answered something but 201"
    return collections.Counter(user for record in sandbox.requests for user in record.external_ids)


def sftp_source(server, name: str = "remote", settle: float = 2.0, known_hosts: str | None = None,
                extra: str = "") -> str:
    return (f"  - name: {name}\n    type: sftp\n    host: {server.host}\n    port: {server.port}\n"
            f"    username: {server.username}\n    private_key_file: {server.user_key}\n"
            f"    known_hosts_file: {known_hosts or server.known_hosts}\n    path: exports\n"
            + SCAN.format(settle=settle) + extra)


def events(daemon: DaemonProcess, name: str) -> list[dict]:
    return [event for event in daemon.events() if event.get("event") == name]


def sshd_log(server) -> str:
    with open(os.path.join(server.directory, "sshd.log"), encoding="utf-8", errors="replace") as log:
        return log.read()


def http_port(daemon: DaemonProcess) -> int:
    return events(daemon, "daemon_started")[0]["http"]


HTTP = "http:\n  listen: 127.0.0.1:0\n"


def test_a_folder_uploaded_slowly_over_sftp_is_read_only_after_it_settles(tmp_path, sandbox, sshd_server, running):
    config = write_config(str(tmp_path), sandbox.url, sftp_source(sshd_server, settle=3.0))
    daemon = running(config)
    content = export_bytes(400)
    folder = os.path.join(sshd_server.root, "exports", UPSERT, OFFER, "8828")
    os.makedirs(folder)
    step = len(content) // 6 + 1
    with open(os.path.join(folder, "RPI_Export_8828.txt"), "wb") as export:
        for start in range(0, len(content), step):
            assert sandbox.requests == [], "a request was sent before the upload settled"
            export.write(content[start:start + step])
            export.flush()
            time.sleep(0.8)  # pieces 0.8 s apart: the 3 s settle time never passes in between
    record = wait_status(config, "8828", "delivered", timeout=40)
    assert (record["source"], record["rows_delivered"], record["rows_rejected"]) == ("remote", 400, 0)
    assert record["location"].startswith("sftp://")
    assert_profiles(sandbox, 400)
    assert set(sent_per_user(sandbox).values()) == {1}
    assert daemon.terminate() == 0


def test_an_unknown_host_key_is_refused_and_the_daemon_keeps_running(tmp_path, sandbox, sshd_server, running):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")  # the operator has not vouched for this server yet
    source_yaml = sftp_source(sshd_server, settle=0.5, known_hosts=str(known_hosts))
    config = write_config(str(tmp_path), sandbox.url, source_yaml, extra=HTTP)
    write_export(os.path.join(sshd_server.root, "exports"), "7", export_bytes(5))
    daemon = running(config)

    down = wait_for(lambda: events(daemon, "source_down"), 20, what="source_down")[0]
    server_fingerprint = key_fingerprint(sshd_server.host_key)
    assert down["source"] == "remote"
    assert "unknown" in down["reason"] and server_fingerprint in down["reason"]
    health = httpx.get(f"http://127.0.0.1:{http_port(daemon)}/healthz").json()
    assert server_fingerprint in health["down"]["source:remote"]["reason"]
    # sshd logs each connection the daemon gave up during key exchange: it was refused again, later
    wait_for(lambda: sshd_log(sshd_server).count("[preauth]") >= 2, 30, what="a second, refused attempt")
    assert daemon.process.poll() is None and not events(daemon, "thread_died")
    assert sandbox.requests == [] and status(config) == []

    known_hosts.write_text(sshd_server.known_hosts_line() + "\n")  # now vouched for: it comes up by itself
    wait_status(config, "7", "delivered", timeout=40)
    assert events(daemon, "source_up")
    assert daemon.terminate() == 0


def test_sshd_killed_mid_download_loses_nothing_and_sends_nothing_twice(tmp_path, sshd_server, running):
    # Big enough (~21 MB) that the kill lands mid-read: a slow Braze throttles the reader (each
    # sender queues at most two batches), and the client buffers at most 8 MB of the file ahead.
    rows = 24_000
    write_export(os.path.join(sshd_server.root, "exports"), "9", export_bytes(rows, padding=4))
    with SandboxServer(api_key=API_KEY, faults=Faults(latency_seconds=0.05)) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, sftp_source(sshd_server, settle=1.0),
                              braze_extra="  concurrency: 4\n")
        daemon = running(config)
        wait_for(lambda: len(sandbox.requests) >= 2, 30, 0.05, "delivery to start")
        sshd_server.stop()
        postponed = wait_for(lambda: events(daemon, "workflow_postponed"), 60, what="the download to fail")[0]
        assert "source problem" in postponed["reason"]
        assert sent_per_user(sandbox).total() < rows, "the whole file was read before the kill"
        sshd_server.start()

        record = wait_status(config, "9", "delivered", timeout=90)
        assert (record["rows_delivered"], record["rows_rejected"]) == (rows, 0)
        # Batches handed to the senders before the read failed are finished and acknowledged before
        # the folder is postponed, and the retry skips acknowledged batches: every user arrives once.
        per_user = sent_per_user(sandbox)
        assert sorted(per_user) == [f"u-{n:05d}" for n in range(rows)]
        assert [user for user, count in per_user.items() if count > 1] == []
        assert_profiles(sandbox, rows)
        assert daemon.process.poll() is None and not events(daemon, "thread_died")
        assert daemon.terminate() == 0


def remote_share(protocol: str, request, tmp_path) -> tuple[str, str]:
    """Start the server for `protocol`; return (its local root folder, the source's YAML with
    archive_path and staging_path)."""
    archive = "    archive_path: {archive}\n" + f"    staging_path: {tmp_path / 'staging'}\n"
    if protocol == "sftp":
        server = request.getfixturevalue("sshd_server")
        return server.root, sftp_source(server, settle=1.0, extra=archive.format(archive="archive"))
    server = request.getfixturevalue("ftp_server")
    password_file = tmp_path / "ftp_password"
    password_file.write_text(server.password)
    password_file.chmod(0o600)
    return server.home, (f"  - name: remote\n    type: ftp\n    host: {server.host}\n    port: {server.port}\n"
                         f"    username: {server.username}\n    password_file: {password_file}\n    path: /exports\n"
                         "    tls: false\n"
                         + SCAN.format(settle=1.0) + archive.format(archive="/archive"))


@pytest.mark.parametrize("protocol", ["sftp", "ftp"])
def test_a_staged_remote_folder_is_archived_only_after_delivery(protocol, request, tmp_path, running):
    root, source_yaml = remote_share(protocol, request, tmp_path)
    folder = write_export(os.path.join(root, "exports"), "42", export_bytes(1500))
    archived = os.path.join(root, "archive", UPSERT, OFFER, "42", "RPI_Export_42.txt")
    with SandboxServer(api_key=API_KEY, faults=Faults(latency_seconds=0.1)) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, source_yaml, braze_extra="  concurrency: 1\n")
        daemon = running(config)
        deadline = time.monotonic() + 60
        while True:
            # Look at the folder first, then at the state file: a folder already gone must be delivered.
            in_place = os.path.isdir(folder)
            record = next((r for r in status(config) if r["workflow_id"] == "42"), None)
            if not in_place:
                assert record is not None and record["status"] == "delivered", f"moved while {record}"
                break
            assert time.monotonic() < deadline, f"not archived within 60 s: {record}"
        assert record["rows_delivered"] == 1500
        wait_for(lambda: os.path.isfile(archived), 10, what="the archived export")
        names = [event["event"] for event in daemon.events()]
        assert names.index("workflow_delivered") < names.index("remote_folder_moved")
        assert_profiles(sandbox, 1500)
        assert daemon.terminate() == 0
    assert os.listdir(tmp_path / "staging") == []  # the staged copy was unnamed, and is gone


def test_the_same_workflow_id_under_two_sources_is_two_workflows(tmp_path, sandbox, sshd_server, running):
    drop = tmp_path / "drop"
    write_export(str(drop), "100", export_bytes(20, prefix="local"))
    write_export(os.path.join(sshd_server.root, "exports"), "100", export_bytes(30, prefix="remote"))
    sources = local_source(str(drop), settle=0.5) + sftp_source(sshd_server, settle=0.5)
    config = write_config(str(tmp_path), sandbox.url, sources, extra=HTTP)
    daemon = running(config)

    def both_delivered():
        records = [r for r in status(config) if r["workflow_id"] == "100"]
        return records if [r["status"] for r in records] == ["delivered", "delivered"] else None

    records = wait_for(both_delivered, 40, 0.3, "workflow 100 delivered from both sources")
    assert sorted((r["source"], r["rows_delivered"]) for r in records) == [("drop", 20), ("remote", 30)]
    assert_profiles(sandbox, 20, prefix="local")
    assert_profiles(sandbox, 30, prefix="remote")
    assert sorted(e["source"] for e in events(daemon, "workflow_delivered")) == ["drop", "remote"]
    metrics = httpx.get(f"http://127.0.0.1:{http_port(daemon)}/metrics").text
    for source in ("drop", "remote"):
        assert f'rpi2braze_folders_total{{outcome="delivered",source="{source}"}} 1.0' in metrics
    assert daemon.terminate() == 0


def inotify_instances(pid: int) -> int:
    """How many inotify instances the process holds (each is an "anon_inode:inotify" descriptor)."""
    count = 0
    for descriptor in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{descriptor}") == "anon_inode:inotify"
        except OSError:  # closed since listed
            continue
    return count


@pytest.mark.parametrize("kind, watches", [("poll", 0), ("local", 1)])
def test_a_poll_source_delivers_by_listing_alone(kind, watches, tmp_path, sandbox, running):
    share = tmp_path / "share"
    share.mkdir()
    source_yaml = local_source(str(share), settle=0.5).replace("type: local", f"type: {kind}")
    config = write_config(str(tmp_path), sandbox.url, source_yaml)
    daemon = running(config)
    write_export(str(share), "55", export_bytes(10))
    record = wait_status(config, "55", "delivered", timeout=30)
    assert record["rows_delivered"] == 10
    assert_profiles(sandbox, 10)
    # a mounted network share is listed, never watched: inotify does not see other hosts' writes
    assert inotify_instances(daemon.process.pid) == watches
    assert daemon.terminate() == 0
