"""The daemon as a real process, over real HTTP, against the Braze sandbox (issue: foundation)."""

import csv
import os
import stat
import time

import pytest

from daemon_helpers import API_KEY, DaemonProcess, cli, local_source, status, wait_for, wait_status, write_config
from rpi2braze.sandbox.server import SandboxServer

pytestmark = pytest.mark.slow

UPSERT = "Braze Onboarding and Upsert"
APPEND = "Braze Append"
HEADER = ("RPContactID,ChannelExecutionID,external_Id,first_name,last_name,email,country,dob,gender,home_city,"
          "phone,Output Name,Education,Income,Marital Status\n")
SAMPLE_ROWS = (
    "81,5719,u-001,Ann,Smith,ann@example.com,United States,1980-12-21,Female,Denver,+13035550101,Gold,Masters,85000,Married\n"
    "82,5719,u-002,Bo,Jones,bo@example.com,DEU,1975-01-02,m,Berlin,030 12345678,Gold,,,Single\n"
    '83,5719,u-003,Chen,"Li, Jr.",chen@example.com,fr,,,Paris,,Silver,"PhD\n(two lines)",,\n'
    "84,5719,u-001,Ann,Smith,ann@example.com,US,,,,,Platinum,,90000,\n"
    "85,5719,u-004,Bad,Email,not-an-email,US,,,,,Gold,,,\n"
    "86,5719,,No,Id,noid@example.com,US,,,,,Gold,,,\n"
)
BULK = 300


def export_bytes() -> bytes:
    bulk = "".join(f"{9000 + n},5719,bulk-{n:04d},F{n},L{n},bulk{n}@example.com,US,,,,,Gold,,{n},\n" for n in range(BULK))
    return (HEADER + SAMPLE_ROWS + bulk).encode()


@pytest.fixture
def sandbox():
    with SandboxServer(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def daemon_setup(tmp_path, sandbox):
    drop = tmp_path / "drop"
    drop.mkdir()
    config = write_config(str(tmp_path), sandbox.url, local_source(str(drop), settle=2.0))
    daemons = []

    def start():
        daemons.append(DaemonProcess(config, str(tmp_path / "daemon.log")).start())
        return daemons[-1]

    yield drop, config, start
    for daemon in daemons:
        daemon.stop_quietly()


def write_slowly(path, content: bytes, pieces: int, on_piece) -> None:
    step = len(content) // pieces + 1
    with open(path, "wb") as export:
        for start in range(0, len(content), step):
            export.write(content[start:start + step])
            export.flush()
            on_piece()


def test_daemon_delivers_a_slowly_copied_export_once(daemon_setup, sandbox, tmp_path):
    drop, config, start = daemon_setup
    daemon = start()
    folder = drop / UPSERT / "Spring Offer" / "8828"
    folder.mkdir(parents=True)

    def nothing_sent_yet():
        assert sandbox.requests == [], "a request was sent before the folder settled"
        time.sleep(0.8)  # pieces arrive 0.8 s apart: the 2 s settle time must not pass in between

    write_slowly(folder / "RPI_Export_5719.txt", export_bytes(), pieces=5, on_piece=nothing_sent_yet)
    (folder / "RPI_Export_5719.txt_summary.xml").write_text("<summary/>")
    record = wait_status(config, "8828", "delivered", timeout=40)

    assert record["channel"] == UPSERT and record["offer"] == "Spring Offer"
    assert record["rows_delivered"] == 4 + BULK
    assert record["rows_rejected"] == 2
    profiles = sandbox.store.all()
    assert len(profiles) == 3 + BULK
    ann = profiles["u-001"]
    assert (ann["first_name"], ann["country"], ann["dob"], ann["gender"], ann["home_city"], ann["phone"]) == (
        "Ann", "US", "1980-12-21", "F", "Denver", "+13035550101")
    custom = ann["custom_attributes"]
    assert custom["rpi_audience_outputs"] == ["Gold", "Platinum"]
    assert custom["rpi_offers"] == ["Spring Offer"]
    assert custom["rpi_contact_ids"] == ["81", "84"]
    assert custom["rpi_channel_exec_ids"] == ["5719"]
    assert custom["rpi_cdp_attributes"] == {"education": "Masters", "income": "90000", "marital_status": "Married"}
    bo = profiles["u-002"]
    assert (bo["country"], bo["gender"], bo["phone"]) == ("DE", "M", "+493012345678")
    assert bo["custom_attributes"]["rpi_cdp_attributes"] == {"marital_status": "Single"}
    chen = profiles["u-003"]
    assert chen["last_name"] == "Li, Jr." and chen["country"] == "FR"
    assert chen["custom_attributes"]["rpi_cdp_attributes"] == {"education": "PhD\n(two lines)"}
    assert "u-004" not in profiles
    assert profiles["bulk-0299"]["custom_attributes"]["rpi_cdp_attributes"] == {"income": "299"}

    deadletters = [os.path.join(root, name) for root, _, names in os.walk(tmp_path / "state" / "deadletter") for name in names]
    assert len(deadletters) == 1
    assert stat.S_IMODE(os.stat(deadletters[0]).st_mode) == 0o600
    with open(deadletters[0], newline="", encoding="utf-8") as handle:
        rejected = list(csv.DictReader(handle))
    assert sorted(row["external_Id"] for row in rejected) == ["", "u-004"]
    assert all(row["reason"] for row in rejected)

    requests_before = len(sandbox.requests)
    assert daemon.terminate() == 0
    again = start()
    time.sleep(4)  # several scan intervals, and longer than settle_seconds
    assert len(sandbox.requests) == requests_before, "a delivered workflow was sent again after a restart"
    assert again.terminate() == 0


def test_unreadable_export_is_quarantined_and_the_daemon_goes_on(daemon_setup, sandbox, tmp_path):
    drop, config, start = daemon_setup
    daemon = start()
    bad = drop / UPSERT / "Offer" / "1"
    bad.mkdir(parents=True)
    (bad / "RPI_Export_1.txt").write_text("first_name,email\nAnn,ann@example.com\n")
    good = drop / APPEND / "Offer" / "2"
    good.mkdir(parents=True)
    (good / "RPI_Export_2.txt").write_text("external_id,output_name\nu-9,Winback\n")
    (drop / "Some Other Channel" / "Offer" / "3").mkdir(parents=True)
    (drop / "Some Other Channel" / "Offer" / "3" / "RPI_Export_3.txt").write_text("external_id\nx\n")

    quarantined = wait_status(config, "1", "quarantined")
    assert "external_id" in quarantined["reason"]
    reasons = [os.path.join(r, n) for r, _, names in os.walk(tmp_path / "state" / "quarantine") for n in names]
    assert len(reasons) == 1 and "external_id" in open(reasons[0]).read()
    assert f"to try again after fixing it: rpi2braze retry 1 --source drop --channel '{UPSERT}'\n" in open(
        reasons[0]).read()
    wait_status(config, "2", "delivered")
    assert "u-9" not in sandbox.store.all(), "Braze Append must not create a profile"
    assert [r["workflow_id"] for r in status(config)].count("3") == 0
    assert sum(1 for e in daemon.events() if e.get("event") == "unknown_channel_folder") == 1
    assert daemon.terminate() == 0


def test_process_command_delivers_and_never_twice(tmp_path, sandbox):
    base = tmp_path / "exports"
    folder = base / UPSERT / "Offer" / "77"
    folder.mkdir(parents=True)
    (folder / "RPI_Export_77.txt").write_bytes(export_bytes())
    config = write_config(str(tmp_path), sandbox.url, local_source(str(base)))
    first = cli(config, "process", str(folder))
    assert first.returncode == 0, first.stderr + first.stdout
    assert len(sandbox.store.all()) == 3 + BULK
    sent = len(sandbox.requests)
    second = cli(config, "process", str(folder))
    assert second.returncode == 0 and "already delivered" in second.stdout
    assert len(sandbox.requests) == sent
    missing = cli(config, "process", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "not a folder" in missing.stderr
