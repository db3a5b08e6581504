"""An export in the wrong encoding, end to end with `rpi2braze process`: a whole file is
quarantined with a reason naming the encoding to set, and a single bad row of a good file is
dead-lettered with its values, bad bytes shown, and never sent."""

import pytest

from daemon_helpers import API_KEY, cli, deadletter_rows, local_source, status, write_config
from rpi2braze.sandbox.server import SandboxServer

UPSERT = "Braze Onboarding and Upsert"
CP1252_EXPORT = b"external_id,first_name\r\nu1,J\xfcrgen\r\nu2,Ren\xe9e\r\n"
ONE_BAD_ROW = "external_id,first_name\nu1,Zoë\n".encode() + b"u2,J\xfcrgen\n" + "u3,Łukasz\n".encode()
READING = pytest.mark.parametrize("reading", ["", "parse_process_min_bytes: 0\n"], ids=["in_process", "child"])


@pytest.fixture(scope="module")
def sandbox():
    with SandboxServer(api_key=API_KEY) as server:
        yield server


def process(tmp_path, sandbox, content: bytes, reading: str):
    """Run `rpi2braze process` on a one-file export of `content`; its result and its one workflow."""
    sandbox.reset()
    folder = tmp_path / "exports" / UPSERT / "Offer" / "42"
    folder.mkdir(parents=True)
    (folder / "RPI_Export_42.txt").write_bytes(content)
    config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "exports")), extra=reading)
    result = cli(config, "process", str(folder))
    [record] = status(config)
    return result, record


@READING
def test_a_file_in_another_encoding_is_quarantined_and_nothing_is_sent(tmp_path, sandbox, reading):
    result, record = process(tmp_path, sandbox, CP1252_EXPORT, reading)
    assert result.returncode == 1, result.stderr
    assert record["status"] == "quarantined"
    for words in ("RPI_Export_42.txt", "lines 2 and 3", "UTF-8", "reading.encoding", "cp1252"):
        assert words in record["reason"], record["reason"]
    assert sandbox.store.all() == {}
    assert deadletter_rows(tmp_path) == []


@READING
def test_one_undecodable_row_is_dead_lettered_with_its_values_and_the_rest_delivered(tmp_path, sandbox, reading):
    result, record = process(tmp_path, sandbox, ONE_BAD_ROW, reading)
    assert result.returncode == 0, result.stderr
    assert (record["status"], record["rows_delivered"], record["rows_rejected"]) == ("delivered", 2, 1)
    assert sorted(sandbox.store.all()) == ["u1", "u3"]
    [row] = deadletter_rows(tmp_path)
    assert (row["line"], row["external_id"], row["first_name"]) == ("3", "u2", "J\\xfcrgen")
    assert "invalid UTF-8 bytes in line 3" in row["reason"]
