"""resend.parse_deadletter: a dead-letter CSV, as written or as a spreadsheet saved it, to rows."""

import pytest

from rpi2braze.errors import SourceError
from rpi2braze.resend import parse_deadletter

WRITTEN = ('file,line,reason,external_id,Notes\r\n'
           'RPI_Export_1.txt,3,"email \'x\' is not a valid email address",u-1,"two\nlines, and a comma"\r\n'
           'RPI_Export_1.txt,9,row has 3 fields,u-2,b,extra\r\n')
EXPECTED = (["external_id", "Notes"], [["u-1", "two\nlines, and a comma"], ["u-2", "b", "extra"]])


@pytest.mark.parametrize("content", [
    WRITTEN.encode(),
    b"\xef\xbb\xbf" + WRITTEN.replace(",", ";").replace('lines; and a comma', 'lines, and a comma').encode(),
    WRITTEN.replace(",", "\t").replace('lines\t and a comma', 'lines, and a comma').encode(),
    (WRITTEN + "\r\n\r\n").encode(),   # blank lines an editor left at the end
], ids=["as-written", "spreadsheet-semicolons-and-bom", "tabs", "trailing-blank-lines"])
def test_rows_come_back_without_the_three_columns(content):
    assert parse_deadletter(content, "f.csv") == EXPECTED


@pytest.mark.parametrize("content, reason", [
    (b"external_id,email\r\nu-1,a@b.co\r\n", "not a dead-letter file"),
    (b"file,line,reasons,external_id\r\nx,1,r,u-1\r\n", "not a dead-letter file"),
    (b"file,line,reason,external_id\r\n", "holds no rows"),
    (b"", "not a dead-letter file"),
    ("file,line,reason,external_id\r\nx,1,r,Jürgen\r\n".encode("cp1252"), "is not UTF-8 text"),
])
def test_what_is_not_a_deadletter_file_with_rows_is_refused(content, reason):
    with pytest.raises(SourceError, match=reason):
        parse_deadletter(content, "f.csv")
