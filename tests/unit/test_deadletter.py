"""Dead-letter files: safe paths, private modes, one header, one run's rows, content that reads back exactly."""

import csv
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest
from structlog.testing import capture_logs

from rpi2braze.deadletter import DeadLetterWriter, deadletter_path
from rpi2braze.errors import StateError
from rpi2braze.model import RawRow, Rejection, WorkflowKey

HEADER = ("external_id", "email", "Output Name")
HEADERS = (("RPI_Export_1.txt", HEADER),)
SAFE_COMPONENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


@pytest.fixture
def open_umask():
    """Umask 0, so a mode seen on disk is the mode the code asked for, not one the umask hid."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def rejection(line, values, reason="bad email", file="RPI_Export_1.txt"):
    return Rejection(RawRow(line, tuple(values), file=file), reason)


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_path_layout(tmp_path):
    key = WorkflowKey("rpi", "Braze Append", "Offer A", "1234")
    path = deadletter_path(str(tmp_path), key)
    expected = re.escape(str(tmp_path)) + r"/rpi/Braze_Append__Offer_A__1234\.[0-9a-f]{12}\.csv"
    assert re.fullmatch(expected, path)
    assert deadletter_path(str(tmp_path), key) == path


HOSTILE = ["..", ".", "/", "\\", "\x00", "../../etc/passwd", "..\\..\\windows", "", "a/../../b",
           ".hidden", "Ünïcødé offer", "lone \udcff surrogate", "x" * 10_000, "/" * 300, "." * 300]


@pytest.mark.parametrize("hostile", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("field", ["source", "channel", "offer", "workflow_id"])
def test_hostile_names_stay_inside(tmp_path, field, hostile):
    parts = {"source": "rpi", "channel": "Braze Append", "offer": "Offer A", "workflow_id": "1"}
    parts[field] = hostile
    directory = str(tmp_path / "deadletter")
    path = deadletter_path(directory, WorkflowKey(**parts))
    relative = os.path.relpath(path, directory)
    components = relative.split(os.sep)
    assert len(components) == 2 and os.path.normpath(path) == path
    assert all(SAFE_COMPONENT.fullmatch(component) for component in components)
    assert all(len(component.encode()) <= 160 for component in components)


@pytest.mark.parametrize(
    "first, second",
    [(("rpi", "a/b", "o", "1"), ("rpi", "a_b", "o", "1")),
     (("rpi", "c", "o", "x" * 500 + "1"), ("rpi", "c", "o", "x" * 500 + "2")),
     (("a/b", "c", "o", "1"), ("a_b", "c", "o", "1")),
     (("rpi", "c\x00", "o", "1"), ("rpi", "c", "\x00o", "1"))],
)
def test_distinct_keys_get_distinct_paths(tmp_path, first, second):
    directory = str(tmp_path)
    assert deadletter_path(directory, WorkflowKey(*first)) != deadletter_path(directory, WorkflowKey(*second))


def test_private_modes_from_the_start(tmp_path, open_umask):
    path = str(tmp_path / "state" / "deadletter" / "rpi" / "w.csv")
    with DeadLetterWriter(path, HEADERS) as writer:
        assert writer.write([rejection(2, ["u1", "bad", "Out"])]) == 1
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    for directory in ("state", "state/deadletter", "state/deadletter/rpi"):
        assert stat.S_IMODE(os.stat(tmp_path / directory).st_mode) == 0o700


def test_nothing_created_without_rejections(tmp_path):
    path = tmp_path / "deadletter" / "w.csv"
    with DeadLetterWriter(str(path), HEADERS) as writer:
        assert writer.write([]) == 0
        assert writer.write(iter(())) == 0
    assert not path.exists() and not path.parent.exists()


def test_header_written_once_across_writers(tmp_path):
    path = str(tmp_path / "w.csv")
    with DeadLetterWriter(path, HEADERS) as writer:
        assert writer.write([rejection(2, ["u1", "a", "O"]), rejection(3, ["u2", "b", "O"])]) == 2
    with DeadLetterWriter(path, HEADERS, resuming=True) as writer:  # a restart appends
        assert writer.write([rejection(4, ["u3", "c", "O"])]) == 1
    rows = read_rows(path)
    assert rows[0] == ["file", "line", "reason", *HEADER]
    assert [row[1] for row in rows[1:]] == ["2", "3", "4"]


FIRST = [rejection(2, ["u1", "a", "O"]), rejection(3, ["u2", "b", "O"])]


def keys(path) -> list[tuple[str, str]]:
    return [(row[0], row[1]) for row in read_rows(path)[1:]]


def test_a_resumed_workflow_gets_only_the_rows_the_file_does_not_hold_yet(tmp_path):
    # A crash between writing a batch's rejections and acknowledging it: the batch comes again.
    path = str(tmp_path / "w.csv")
    with DeadLetterWriter(path, HEADERS) as writer:
        assert writer.write(FIRST) == 2
    with DeadLetterWriter(path, HEADERS, resuming=True) as writer:
        assert writer.write(FIRST + [rejection(4, ["u3", "c", "O"])]) == 1
        assert writer.write([rejection(2, ["u1", "a", "O"], file="RPI_Export_2.txt")]) == 1   # another file's line 2
    assert keys(path) == [("RPI_Export_1.txt", "2"), ("RPI_Export_1.txt", "3"), ("RPI_Export_1.txt", "4"),
                          ("RPI_Export_2.txt", "2")]
    with DeadLetterWriter(path, HEADERS) as writer:   # a retry: the rows may differ now; all are written
        assert writer.write(FIRST) == 2
    assert keys(path) == keys(path + ".previous")[:2]


@pytest.mark.parametrize("before, after, set_aside", [
    ({}, {}, []),
    ({"w.csv": ""}, {"w.csv": ""}, []),   # empty: begun anew in place
    ({"w.csv": "earlier"}, {"w.csv.previous": "earlier"}, [("w.csv", "w.csv.previous")]),
    ({"w.csv": "third", "w.csv.previous": "first", "w.csv.previous.1": "second"},
     {"w.csv.previous": "first", "w.csv.previous.1": "second", "w.csv.previous.2": "third"},
     [("w.csv", "w.csv.previous.2")]),
    # a .cut file is the earlier run's too: left as it is, resend would take it for the current run's
    ({"w.csv": "torn", "w.csv.cut": "cut", "other.csv.cut": "x"},
     {"w.csv.previous": "torn", "w.csv.previous.1": "cut", "other.csv.cut": "x"},
     [("w.csv", "w.csv.previous"), ("w.csv.cut", "w.csv.previous.1")]),
], ids=["none", "empty", "one-earlier-run", "third-run", "next-to-a-cut-file"])
def test_a_new_run_sets_an_earlier_runs_file_aside_at_once_and_never_deletes_one(tmp_path, before, after, set_aside):
    for name, content in before.items():
        (tmp_path / name).write_text(content)
    path = str(tmp_path / "w.csv")
    with capture_logs() as logs, DeadLetterWriter(path, HEADERS):   # before any rejection: none may come
        pass
    assert {name: (tmp_path / name).read_text() for name in os.listdir(tmp_path)} == after
    shown = [(entry["log_level"], entry["path"], entry["kept"]) for entry in logs
             if entry["event"] == "deadletter_set_aside"]
    assert shown == [("warning", str(tmp_path / name), str(tmp_path / kept)) for name, kept in set_aside]


def test_an_earlier_runs_file_that_cannot_be_set_aside_stops_the_new_run_before_it_writes(tmp_path):
    path = tmp_path / ("w" * 250)   # with ".previous" the name is longer than a file name can be
    path.write_text("earlier")
    with pytest.raises(StateError, match="cannot set aside dead-letter file"):
        DeadLetterWriter(str(path), HEADERS)
    assert path.read_text() == "earlier"


def test_a_new_runs_file_holds_its_own_rows_only(tmp_path):
    path = str(tmp_path / "w.csv")
    with DeadLetterWriter(path, HEADERS) as writer:
        writer.write(FIRST)
    with DeadLetterWriter(path, HEADERS) as writer:
        assert writer.write([rejection(3, ["u2", "fixed?", "O"]), rejection(4, ["u3", "c", "O"])]) == 2
    assert read_rows(path)[0] == ["file", "line", "reason", *HEADER]
    assert [(row[1], row[4]) for row in read_rows(path)[1:]] == [("3", "fixed?"), ("4", "c")]
    assert keys(path + ".previous") == [("RPI_Export_1.txt", "2"), ("RPI_Export_1.txt", "3")]


def test_a_resumed_run_sets_nothing_aside(tmp_path):
    path = str(tmp_path / "w.csv")
    with DeadLetterWriter(path, HEADERS) as writer:
        writer.write(FIRST)
    with DeadLetterWriter(path, HEADERS, resuming=True) as writer:
        assert writer.write([rejection(4, ["u3", "c", "O"])]) == 1
    assert keys(path) == [("RPI_Export_1.txt", "2"), ("RPI_Export_1.txt", "3"), ("RPI_Export_1.txt", "4")]
    assert os.listdir(tmp_path) == ["w.csv"]


@pytest.mark.parametrize("torn", ['RPI_Export_1.txt,9,"cut short\r\nin a quoted value', "RPI_Export_1.txt,9,u9,no line end"],
                         ids=["in-quotes", "no-line-end"])
def test_a_file_a_crash_left_unfinished_is_set_aside_whole_and_a_new_one_begun(tmp_path, torn):
    path = str(tmp_path / "w.csv")
    with DeadLetterWriter(path, HEADERS) as writer:
        writer.write(FIRST)
    with open(path, "a", encoding="utf-8", newline="") as end:
        end.write(torn)   # the crash came mid-record
    with open(path, "rb") as before:
        kept = before.read()
    with DeadLetterWriter(path, HEADERS, resuming=True) as writer:   # the torn row's batch comes again too
        assert writer.write(FIRST + [rejection(4, ["u3", "c", "O"]), rejection(9, ["u9", "e", "O"])]) == 2
    with open(path + ".cut", "rb") as set_aside:
        assert set_aside.read() == kept
    assert read_rows(path)[0] == ["file", "line", "reason", *HEADER]
    assert keys(path) == [("RPI_Export_1.txt", "4"), ("RPI_Export_1.txt", "9")]


def test_a_quote_out_of_place_in_the_middle_keeps_the_file_as_it_is(tmp_path):
    path = str(tmp_path / "w.csv")
    with DeadLetterWriter(path, HEADERS) as writer:
        writer.write(FIRST + [rejection(4, ["u3", "c", "O"])])
    with open(path, encoding="utf-8", newline="") as edited:
        text = edited.read().replace("u2,b", 'u2,b"x', 1)   # an operator's edit
    with open(path, "w", encoding="utf-8", newline="") as edited:
        edited.write(text)
    with DeadLetterWriter(path, HEADERS, resuming=True) as writer:
        assert writer.write([rejection(5, ["u4", "d", "O"])]) == 1
    with open(path, encoding="utf-8", newline="") as after:
        assert after.read().startswith(text)
    assert not os.path.exists(path + ".cut")


FAILING_WRITER = """
import resource, signal, sys
from rpi2braze.deadletter import DeadLetterWriter
from rpi2braze.errors import StateError
from rpi2braze.model import RawRow, Rejection
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))   # the disk is full after 4 KiB
with DeadLetterWriter(sys.argv[1], (("f.txt", ("external_id",)),)) as writer:
    for values in (["x" * 10_000], ["small"]):
        try:
            writer.write([Rejection(RawRow(2, tuple(values), file="f.txt"), "bad")])
        except StateError as error:
            print(error)
"""


def test_after_a_failed_write_the_writer_writes_nothing_more(tmp_path):
    # What follows a torn record would be swallowed by it: those batches must not be acknowledged.
    path = tmp_path / "w.csv"
    result = subprocess.run([sys.executable, "-c", FAILING_WRITER, str(path)], capture_output=True, text=True,
                            timeout=60)
    first, second = result.stdout.splitlines()
    assert "File too large" in first and "an earlier write failed" in second
    assert b"small" not in path.read_bytes()


VALUES = ["plain", "comma, inside", 'quote " inside', "new\nline", "carriage\r\nreturn", "", "  spaces  ",
          "Ünïcødé ✓", '"quoted,\nall"', "semi;colon\ttab"]


def test_content_round_trips(tmp_path):
    path = str(tmp_path / "w.csv")
    rejections = [
        rejection(2, VALUES[:3], reason="email is not valid: a,b"),
        rejection(17, VALUES[3:], reason='reason with "quotes"\nand a newline', file="RPI Export, 2.txt"),
        Rejection(RawRow(30, (), error="unterminated quote", file="f.txt"), "unterminated quote"),
    ]
    with DeadLetterWriter(path, HEADERS) as writer:
        assert writer.write(rejections) == 3
    assert read_rows(path)[1:] == [
        ["RPI_Export_1.txt", "2", "email is not valid: a,b", *VALUES[:3]],
        ["RPI Export, 2.txt", "17", 'reason with "quotes"\nand a newline', *VALUES[3:]],
        ["f.txt", "30", "unterminated quote"],
    ]


def test_files_with_different_headers_write_every_column_by_name(tmp_path):
    path = str(tmp_path / "w.csv")
    headers = (("a.txt", ("external_id", "email", "", "")),
               ("b.txt", ("Loyalty Tier", "", "email", "external_id", "", "")))
    with DeadLetterWriter(path, headers) as writer:
        assert writer.write([rejection(2, ["u1", "bad", "p1", "p2"], file="a.txt"),
                             rejection(3, ["Gold", "q1", "worse", "u2", "q2", "q3"], file="b.txt"),
                             rejection(4, ["ragged", "row"], file="b.txt")]) == 3
    assert read_rows(path) == [
        ["file", "line", "reason", "external_id", "email", "", "", "Loyalty Tier", ""],
        ["a.txt", "2", "bad email", "u1", "bad", "p1", "p2", "", ""],
        ["b.txt", "3", "bad email", "u2", "worse", "q1", "q2", "Gold", "q3"],
        ["b.txt", "4", "bad email", "ragged", "row"],
    ]


def test_files_sharing_a_header_write_it_once(tmp_path):
    path = str(tmp_path / "w.csv")
    headers = (("a.txt", HEADER), ("b.txt", HEADER), ("c.txt", HEADER[:2]))
    with DeadLetterWriter(path, headers) as writer:
        writer.write([rejection(2, ["u1", "x", "O"], file="b.txt"), rejection(3, ["u2", "y"], file="c.txt")])
    assert read_rows(path) == [["file", "line", "reason", *HEADER],
                               ["b.txt", "2", "bad email", "u1", "x", "O"],
                               ["c.txt", "3", "bad email", "u2", "y", ""]]


def test_unencodable_value_is_written_visibly(tmp_path):
    path = str(tmp_path / "w.csv")
    with DeadLetterWriter(path, HEADERS) as writer:
        assert writer.write([rejection(2, ["u1", "bad \udcff byte"])]) == 1
    assert read_rows(path)[1][3:] == ["u1", "bad \\udcff byte"]


def test_planted_symlink_is_refused(tmp_path):
    target = tmp_path / "elsewhere.csv"
    target.write_text("")
    link = tmp_path / "w.csv"
    link.symlink_to(target)
    with DeadLetterWriter(str(link), HEADERS) as writer, pytest.raises(StateError, match="dead-letter"):
        writer.write([rejection(2, ["u1"])])
    assert target.read_text() == ""


def test_unwritable_location_raises_state_error(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with DeadLetterWriter(str(blocker / "w.csv"), HEADERS) as writer, pytest.raises(StateError):
        writer.write([rejection(2, ["u1"])])


def test_closed_writer_refuses_writes(tmp_path):
    writer = DeadLetterWriter(str(tmp_path / "w.csv"), HEADERS)
    writer.write([rejection(2, ["u1"])])
    writer.close()
    writer.close()  # harmless
    with pytest.raises(ValueError):
        writer.write([rejection(3, ["u2"])])
    assert len(read_rows(tmp_path / "w.csv")) == 2


@pytest.mark.parametrize("edit", ["replaced", "deleted"])
def test_a_file_replaced_or_deleted_while_the_run_writes_is_put_back_whole(tmp_path, edit):
    # An operator fixing rows with sed -i or vim while the workflow is still being delivered:
    # the writer would append to a file no longer at its name, and those rows would be lost.
    path = tmp_path / "w.csv"
    with capture_logs() as logs, DeadLetterWriter(str(path), HEADERS) as writer:
        writer.write(FIRST)
        if edit == "replaced":
            edited = tmp_path / "edit.tmp"
            edited.write_text(path.read_text().replace("u1", "fixed"))
            os.rename(edited, path)
        else:
            os.unlink(path)
        writer.write([rejection(4, ["u3", "c", "O"])])
    assert keys(str(path)) == [("RPI_Export_1.txt", "2"), ("RPI_Export_1.txt", "3"), ("RPI_Export_1.txt", "4")]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    if edit == "replaced":
        assert "fixed" in (tmp_path / "w.csv.edited").read_text() and "fixed" not in path.read_text()
    assert [entry["event"] for entry in logs if entry["log_level"] == "warning"] == ["deadletter_replaced"]


def test_a_file_replaced_after_the_last_write_is_put_back_when_the_run_ends(tmp_path):
    path = tmp_path / "w.csv"
    with DeadLetterWriter(str(path), HEADERS) as writer:
        writer.write(FIRST)
        os.unlink(path)
    assert keys(str(path)) == [("RPI_Export_1.txt", "2"), ("RPI_Export_1.txt", "3")]


def test_a_file_deleted_with_its_folder_is_put_back_whole(tmp_path):
    folder = tmp_path / "deadletter" / "drop"
    path = folder / "w.csv"
    with DeadLetterWriter(str(path), HEADERS) as writer:
        writer.write(FIRST)
        shutil.rmtree(tmp_path / "deadletter")
        writer.write([rejection(4, ["u3", "c", "O"])])
    assert keys(str(path)) == [("RPI_Export_1.txt", "2"), ("RPI_Export_1.txt", "3"), ("RPI_Export_1.txt", "4")]
