"""resend_rows.parse_deadletter: a dead-letter CSV, as written or as a spreadsheet saved it, to rows."""

import pytest

from rpi2braze.errors import SourceError
from rpi2braze.resend_rows import parse_deadletter

WRITTEN = ('file,line,reason,external_id,Notes\r\n'
           'RPI_Export_1.txt,3,"email \'x\' is not a valid email address",u-1,"two\nlines, and a comma"\r\n'
           'RPI_Export_1.txt,9,row has 3 fields,u-2,b\r\n')   # fixed by hand: two values now
EXPECTED = (["external_id", "Notes"], [["u-1", "two\nlines, and a comma"], ["u-2", "b"]])


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


HEADER = "file,line,reason,external_id,first_name\r\n"


@pytest.mark.parametrize("reason", ["invalid UTF-8 bytes in line 4 (another encoding?)", "NUL byte in field 2 (first_name) of the record at line 4"])
def test_a_row_still_holding_undecodable_bytes_is_refused(reason):
    # Sent as it is, "M\xfcller" would reach Braze as those eight characters.
    content = (HEADER + f'a.txt,4,"{reason}",u1,M\\xfcller\r\na.txt,5,"{reason}",u2,Fixed\r\n').encode()
    with pytest.raises(SourceError, match=r"rows whose `line` is 4 still hold bytes .* shown as \\xNN"):
        parse_deadletter(content, "f.csv")


def test_a_row_fixed_in_place_of_its_undecodable_bytes_is_resent():
    content = (HEADER + "a.txt,4,invalid UTF-8 bytes in line 4,u1,Müller\r\n"
               "a.txt,9,email 'x' is not a valid email address,u2,Back\\x41slash\r\n").encode()
    assert parse_deadletter(content, "f.csv")[1] == [["u1", "Müller"], ["u2", "Back\\x41slash"]]


@pytest.mark.parametrize("last", ['a.txt,3,r,u2,Bo', 'a.txt,3,r,u2,"12 High St\r\n'], ids=["mid-line", "in-a-quoted-value"])
def test_a_cut_files_last_record_is_left_out_wherever_the_crash_cut_it(last):
    # A .cut file exists because its last record is unfinished; the next file holds that row whole.
    content = (HEADER + "a.txt,2,r,u1,Ann\r\n" + last).encode()
    assert parse_deadletter(content, "f.csv.cut", cut_short=True)[1] == [["u1", "Ann"]]
    assert parse_deadletter(HEADER.encode() + b"a.txt,2,r,u1,Ann\r\n", "f.csv")[1] == [["u1", "Ann"]]


def test_columns_spelled_differently_in_two_files_become_one():
    content = ("file,line,reason,external_id,Email,External ID,Tier\r\n"
               "a.txt,2,r,u1,a@b.co,,Gold\r\n"
               "b.txt,2,r,,,u2,Silver\r\n").encode()
    assert parse_deadletter(content, "f.csv") == (
        ["external_id", "Email", "Tier"], [["u1", "a@b.co", "Gold"], ["u2", "", "Silver"]])


@pytest.mark.parametrize("row", ["b.txt,3,row has 5 fields,u3,x,y,z,w", "b.txt,3,row has 3 fields,u3,x"])
def test_a_row_not_as_wide_as_the_header_is_refused_naming_its_line(row):
    # Written as it was read, its values would be read under other columns (Tier=EXTRA).
    content = ("file,line,reason,external_id,Email,Tier\r\na.txt,2,r,u1,a@b.co,Gold\r\n" + row + "\r\n").encode()
    with pytest.raises(SourceError, match=r"rows whose `line` is 3 are not as wide as its header \(6 values\)"):
        parse_deadletter(content, "f.csv")


def test_every_reason_to_refuse_a_file_is_given_at_once():
    content = (HEADER + "a.txt,4,invalid UTF-8 bytes in line 4,u1,M\\xfcller\r\n"
               "a.txt,7,row has 3 fields,u2,a,b\r\n").encode()
    with pytest.raises(SourceError, match=r"rows whose `line` is 7 are not as wide .*; the rows whose `line` "
                                          r"is 4 still hold bytes .*; then resend"):
        parse_deadletter(content, "f.csv")
