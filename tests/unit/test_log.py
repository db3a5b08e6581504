"""Logging: the format a process logs in is what its reading children are told to use."""

import io

import orjson
import pytest
import structlog

from rpi2braze import log
from clocks import FakeClock


@pytest.fixture(autouse=True)
def restore_logging():
    yield
    structlog.reset_defaults()
    log.configure("info", "json")
    structlog.reset_defaults()


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_the_current_format_is_the_configured_one(fmt):
    stream = io.StringIO()
    log.configure("info", fmt, stream)
    log.get_logger("test").info("batch_delivered", rows=75)
    line = stream.getvalue().strip()
    assert log.current_format() == fmt
    if fmt == "json":
        assert orjson.loads(line)["event"] == "batch_delivered"
    else:
        assert "batch_delivered" in line and "rows=75" in line and not line.startswith("{")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_undecodable_bytes_in_a_value_are_written_escaped_not_lost(tmp_path, fmt):
    # A UTF-8 file, as journald's stdout is: a lone surrogate cannot be written to it as it is.
    with open(tmp_path / "log", "w", encoding="utf-8") as stream:
        log.configure("info", fmt, stream)
        log.get_logger("test").warning("folder_unusable", folder="Caf\udce9", files=["a\udcff.txt"], city="Zürich")
    line = (tmp_path / "log").read_text(encoding="utf-8").strip()
    if fmt == "json":
        event = orjson.loads(line)
        assert (event["folder"], event["files"], event["city"]) == ("Caf\\udce9", ["a\\udcff.txt"], "Zürich")
    else:
        assert "Caf\\udce9" in line and "a\\\\udcff.txt" in line and "Zürich" in line


def test_a_throttle_lets_one_line_per_key_through_each_interval_and_counts_the_rest():
    clock = FakeClock(100.0)
    throttle = log.Throttle(10.0, clock)
    assert throttle.admit(429) == 0
    assert [throttle.admit(429) for _ in range(3)] == [None, None, None]
    assert throttle.admit(502) == 0, "another kind of line has its own interval"
    clock.now += 9.9
    assert throttle.admit(429) is None
    clock.now += 0.1
    assert throttle.admit(429) == 4, "the four held back since the last one let through"
    assert throttle.admit(429) is None
    clock.now += 10.0
    assert throttle.admit(502) == 0 and throttle.admit(429) == 1


LIBRARY_LOGGING = """
import logging, warnings
from rpi2braze import log
log.configure("debug", "json")
logging.getLogger("paramiko.transport").error("Socket exception: %s", "Connection reset by peer")
logging.getLogger("paramiko.transport").info("Connected (version 2.0)")   # below WARNING: not shown
warnings.warn("Callback with id 'x' already exists for watch\\nmany folders", RuntimeWarning)
"""


def test_what_libraries_log_and_pythons_warnings_are_json_lines_too():
    # In a child: the root logger and warnings.showwarning are the process's, pytest's included.
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-c", LIBRARY_LOGGING], capture_output=True, text=True, timeout=60)
    assert result.stderr == ""
    events = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [(event["event"], event["level"], event["logger"]) for event in events] == [
        ("library_log", "error", "paramiko.transport"), ("library_log", "warning", "py.warnings")]
    assert events[0]["message"] == "Socket exception: Connection reset by peer"
    assert "RuntimeWarning: Callback with id 'x' already exists" in events[1]["message"]
