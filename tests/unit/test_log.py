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
