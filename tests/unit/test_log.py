"""Logging: the format a process logs in is what its reading children are told to use."""

import io

import orjson
import pytest
import structlog

from rpi2braze import log


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
