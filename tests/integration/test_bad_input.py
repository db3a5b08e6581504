"""Bad input end to end: each bad export gets a clear message, and nothing else is lost.

Every case is delivered with `process_folders` to the Braze sandbox over real HTTP, then the
state file, the dead-letter CSV and the sandbox's profiles are read back.
"""

import dataclasses
import os
import stat
import shutil
import subprocess
import sys

import pytest

from daemon_helpers import API_KEY, deadletter_rows, environment, local_source, write_config
from rpi2braze.config import load_settings
from rpi2braze.process import process_folders
from rpi2braze.sandbox.server import SandboxServer
from rpi2braze.state import StateStore

UPSERT = "Braze Onboarding and Upsert"
HEADER = b"external_id,email,Note\n"
GOOD = b"ok-1,one@example.com,a\nok-2,two@example.com,b\n"

# name, file content, expected status, rows delivered, rows rejected, words in the reason
CASES = [
    ("empty file", b"", "quarantined", 0, 0, "empty"),
    ("header only", HEADER, "delivered", 0, 0, None),
    ("no external_id column", b"email,Note\none@example.com,a\n", "quarantined", 0, 0, "external_id"),
    ("duplicate headers", b"external_id,Email,email\nx,a@example.com,b@example.com\n", "quarantined", 0, 0, "email"),
    ("ragged row", HEADER + GOOD + b"bad-1,x@example.com,a,extra\n", "delivered", 2, 1, "fields"),
    ("short row", HEADER + GOOD + b"bad-1,x@example.com\n", "delivered", 2, 1, "fields"),
    # two cells too many look like RPI's two prepended IDs, but the file's other rows do not have them
    ("two cells too many", HEADER + GOOD + b"bad-1,x@example.com,Spring, Gold, VIP\n", "delivered", 2, 1, "fields"),
    ("a row without RPI's IDs in a file with them", HEADER + b"81,5719,ok-1,one@example.com,a\n"
     b"82,5719,ok-2,two@example.com,b\nbad-1,x@example.com,a\n", "delivered", 2, 1, "RPI's two IDs"),
    ("invalid UTF-8", HEADER + GOOD + b"bad-1,x@example.com,caf\xe9\n", "delivered", 2, 1, "UTF-8"),
    ("NUL byte", HEADER + GOOD + b"bad-1,x@example.com,a\x00b\n", "delivered", 2, 1, "NUL"),
    ("1 MB field", HEADER + GOOD + b"bad-1,x@example.com," + b"y" * 1_000_000 + b"\n", "delivered", 2, 1, "255"),
    ("row without an id", HEADER + GOOD + b",x@example.com,a\n", "delivered", 2, 1, "external_id"),
    ("bad email", HEADER + GOOD + b"bad-1,not-an-email,a\n", "delivered", 2, 1, "email"),
    # every problem of a row is named, so that one round of fixing the dead-letter file suffices
    ("bad email and a value over 255 characters", HEADER + GOOD + b"bad-1,not-an-email," + b"z" * 256 + b"\n",
     "delivered", 2, 1, "email 'not-an-email' is not a valid email address | rpi_cdp_attributes.note 'zz"),
    ("value over 255 characters", HEADER + GOOD + b"bad-1,x@example.com," + b"z" * 256 + b"\n", "delivered", 2, 1, "255"),
    # a trailing delimiter on every line: an unnamed last column, empty but in one row
    ("trailing delimiter", b"external_id,email,Note,\nok-1,one@example.com,a,\nok-2,two@example.com,b,\n"
     b"bad-1,x@example.com,c,oops\n", "delivered", 2, 1, "leaves unnamed"),
    ("trailing delimiter on the header only", b"external_id,email,Note,\nok-1,one@example.com,a\n"
     b"ok-2,two@example.com,b\nbad-1,not-an-email,c\n", "delivered", 2, 1, "email"),
    # the quote runs to the end of the file: every row after it would be one rejected cell
    ("stray quote", HEADER + b'bad-1,x@example.com,"oops\n' + GOOD, "quarantined", 0, 0, "stray quote"),
]


@pytest.fixture(scope="module")
def sandbox():
    with SandboxServer(api_key=API_KEY) as server:
        yield server


def setup(tmp_path, sandbox, content: bytes, channel: str = UPSERT):
    folder = tmp_path / "exports" / channel / "Offer" / "42"
    folder.mkdir(parents=True)
    (folder / "RPI_Export_42.txt").write_bytes(content)
    config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "exports")))
    os.environ["TEST_BRAZE_API_KEY"] = API_KEY
    return load_settings(config), config, folder


@pytest.mark.parametrize("name, content, expected, delivered, rejected, words", CASES, ids=[case[0] for case in CASES])
def test_bad_input(tmp_path, sandbox, name, content, expected, delivered, rejected, words):
    sandbox.reset()
    settings, _, folder = setup(tmp_path, sandbox, content)
    code = process_folders(settings, [str(folder)])
    with StateStore(settings.state.path) as state:
        [record] = state.records()
    assert (record.status, record.rows_delivered, record.rows_rejected) == (expected, delivered, rejected)
    assert code == (0 if expected == "delivered" else 1)
    assert sorted(sandbox.store.all()) == (["ok-1", "ok-2"] if delivered else [])
    if expected == "quarantined":
        assert words.lower() in record.reason.lower()
    if rejected:
        [row] = deadletter_rows(tmp_path)
        assert words.lower() in row["reason"].lower(), row["reason"]
        assert row["line"] == "4"


def test_unknown_channel_folder_is_refused_with_a_reason(tmp_path, sandbox, capsys):
    sandbox.reset()
    settings, _, folder = setup(tmp_path, sandbox, HEADER + GOOD, channel="Some Email Channel")
    assert process_folders(settings, [str(folder)]) == 1
    assert "not a configured channel" in capsys.readouterr().err
    assert sandbox.store.all() == {}


@pytest.mark.skipif(not shutil.which("setpriv") and os.geteuid() == 0, reason="root reads any file; needs setpriv to drop that")
def test_unreadable_file_is_quarantined(tmp_path, sandbox):
    sandbox.reset()
    _, config, folder = setup(tmp_path, sandbox, HEADER + GOOD)
    os.chmod(folder / "RPI_Export_42.txt", 0)
    # root reads any file: drop the capabilities that allow it, so the permission bits count
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    result = subprocess.run(prefix + [sys.executable, "-m", "rpi2braze", "-c", config, "process", str(folder)],
                            capture_output=True, text=True, env=environment(), timeout=60)
    assert result.returncode == 1
    assert "quarantined" in result.stdout and "Permission denied" in result.stdout
    assert sandbox.store.all() == {}



def test_a_bad_second_file_quarantines_the_folder_before_anything_is_sent(tmp_path, sandbox):
    sandbox.reset()
    settings, _, folder = setup(tmp_path, sandbox, HEADER + GOOD)
    (folder / "RPI_Export_43.txt").write_bytes(b"email,Note\nthree@example.com,c\n")
    assert process_folders(settings, [str(folder)]) == 1
    with StateStore(settings.state.path) as state:
        [record] = state.records()
    assert record.status == "quarantined"
    assert "RPI_Export_43.txt" in record.reason and "external_id" in record.reason
    assert sandbox.requests == [] and sandbox.store.all() == {}


def test_a_data_file_that_leads_out_of_the_source_is_quarantined_not_read(tmp_path, sandbox):
    sandbox.reset()
    settings, _, folder = setup(tmp_path, sandbox, HEADER + GOOD)
    (tmp_path / "outside.txt").write_bytes(HEADER + b"secret-1,leak@example.com,x\n")
    (folder / "RPI_Export_43.txt").symlink_to(tmp_path / "outside.txt")
    assert process_folders(settings, [str(folder)]) == 1
    with StateStore(settings.state.path) as state:
        [record] = state.records()
    assert record.status == "quarantined" and "leaves the source base" in record.reason
    assert sandbox.store.all() == {}


@pytest.mark.parametrize("in_child", [False, True], ids=["in_process", "child"])
def test_bad_rows_of_files_with_different_headers_are_dead_lettered_under_their_own_columns(
        tmp_path, sandbox, in_child):
    sandbox.reset()
    settings, _, folder = setup(tmp_path, sandbox, HEADER + GOOD + b"bad-1,not-an-email,a\n")
    (folder / "RPI_Export_43.txt").write_bytes(b"Tier,email,external_id\nGold,three@example.com,ok-3\n"
                                                b"Silver,also-not-an-email,bad-2\n")
    if in_child:
        settings = dataclasses.replace(settings, parse_process_min_bytes=0)
    assert process_folders(settings, [str(folder)]) == 0
    assert sorted(sandbox.store.all()) == ["ok-1", "ok-2", "ok-3"]
    rows = sorted(deadletter_rows(tmp_path), key=lambda row: row["external_id"])
    assert [{name: row[name] for name in ("file", "external_id", "email", "Note", "Tier")} for row in rows] == [
        {"file": "RPI_Export_42.txt", "external_id": "bad-1", "email": "not-an-email", "Note": "a", "Tier": ""},
        {"file": "RPI_Export_43.txt", "external_id": "bad-2", "email": "also-not-an-email", "Note": "",
         "Tier": "Silver"}]


def test_bad_rows_of_a_file_with_rpis_unnamed_ids_are_dead_lettered_under_named_columns(tmp_path, sandbox):
    sandbox.reset()
    settings, _, folder = setup(tmp_path, sandbox, HEADER + b"81,5719,ok-1,one@example.com,a\n"
                                                            b"82,5719,bad-1,not-an-email,b\n")
    assert process_folders(settings, [str(folder)]) == 0
    [row] = deadletter_rows(tmp_path)
    assert {name: row[name] for name in ("RPContactID", "ChannelExecutionID", "external_id", "email", "Note")} == {
        "RPContactID": "82", "ChannelExecutionID": "5719", "external_id": "bad-1", "email": "not-an-email",
        "Note": "b"}


def test_a_truncated_export_is_quarantined_not_called_delivered(tmp_path, sandbox):
    import gzip
    sandbox.reset()
    settings, _, folder = setup(tmp_path, sandbox, HEADER + GOOD)
    (folder / "RPI_Export_42.txt").unlink()
    packed = gzip.compress(HEADER + b"".join(b"u-%d,u%d@example.com,x\n" % (n, n) for n in range(20_000)))
    (folder / "RPI_Export_42.txt.gz").write_bytes(packed[: len(packed) // 2])
    assert process_folders(settings, [str(folder)]) == 1
    with StateStore(settings.state.path) as state:
        [record] = state.records()
    assert record.status == "quarantined"
    assert "RPI_Export_42.txt.gz: unreadable from line" in record.reason


@pytest.fixture
def open_umask():
    """Umask 0, as a `process` run by hand may have: a mode seen on disk is the one the code chose."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def test_archive_and_quarantine_folders_are_closed_to_others_whatever_the_umask(tmp_path, sandbox, open_umask):
    sandbox.reset()
    exports = tmp_path / "exports"
    for workflow_id, content in (("1", HEADER + GOOD), ("2", b"")):   # one delivered, one quarantined
        folder = exports / UPSERT / "Offer" / workflow_id
        folder.mkdir(parents=True)
        (folder / f"RPI_Export_{workflow_id}.txt").write_bytes(content)
    kept = f"    archive_path: {tmp_path}/kept/archive\n    quarantine_path: {tmp_path}/kept/quarantine\n"
    config = write_config(str(tmp_path), sandbox.url, local_source(str(exports), extra=kept))
    os.environ["TEST_BRAZE_API_KEY"] = API_KEY
    settings = load_settings(config)
    assert process_folders(settings, [str(exports / UPSERT / "Offer" / "1"), str(exports / UPSERT / "Offer" / "2")]) == 1
    mode = lambda path: stat.S_IMODE(os.stat(path).st_mode)
    for kind, workflow_id in (("archive", "1"), ("quarantine", "2")):
        levels = [tmp_path / "kept", tmp_path / "kept" / kind, tmp_path / "kept" / kind / UPSERT,
                  tmp_path / "kept" / kind / UPSERT / "Offer"]
        assert [mode(level) for level in levels] == [0o750] * 4, kind
        assert (tmp_path / "kept" / kind / UPSERT / "Offer" / workflow_id).is_dir()
    reasons = tmp_path / "state" / "quarantine"
    assert [mode(path) for path in (reasons, *reasons.iterdir())] == [0o700, 0o700]
    [reason] = [path for folder in reasons.iterdir() for path in folder.iterdir()]
    assert (f"to try again after fixing it: move it back to {exports / UPSERT / 'Offer' / '2'}, then "
            f"rpi2braze retry 2 --source drop --channel '{UPSERT}'") in reason.read_text()
