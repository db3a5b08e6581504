"""Reading export files: encodings, delimiters, line numbers, bad bytes, and streaming."""

import codecs
import gzip
import io

import pytest

from rpi2braze.errors import BadFileError, SourceUnavailable
from rpi2braze.model import RawRow
from rpi2braze.reader import SURROGATE_FREE_CODECS, open_data_stream, read_table
from rpi2braze.settings import ReadingSettings

AUTO = ReadingSettings()
HINT = " (if the file is in another encoding, set reading.encoding, e.g. cp1252)"


def read(data: bytes, reading: ReadingSettings = AUTO, name: str = "RPI_Export_1.txt"):
    table = read_table(io.BytesIO(data), reading, name)
    return table, list(table.rows)


def values_and_lines(rows: list[RawRow]) -> list[tuple[int, tuple[str, ...]]]:
    return [(row.line, row.values) for row in rows]


@pytest.mark.parametrize(
    ("data", "delimiter"),
    [
        (b"external_id,email\nu1,a@x.io\n", ","),
        (b"external_id\temail\nu1\ta@x.io\n", "\t"),
        (b"external_id|email\nu1|a@x.io\n", "|"),
        (b"external_id;email\nu1;a@x.io\n", ";"),
        # a comma inside a quoted header name does not outvote the real delimiter
        (b'external_id;"last, first";email\nu1;"Doe, J";a@x.io\n', ";"),
    ],
)
def test_sniffs_each_delimiter(data, delimiter):
    table, rows = read(data)
    assert table.delimiter == delimiter
    assert table.header[0] == "external_id"
    assert rows[0].values[0] == "u1"
    assert rows[0].values[-1] == "a@x.io"


def test_header_without_any_delimiter_is_one_column():
    table, rows = read(b"external_id\nu1\nu2\n")
    assert (table.delimiter, table.header) == (",", ("external_id",))
    assert values_and_lines(rows) == [(2, ("u1",)), (3, ("u2",))]


def test_explicit_delimiter_is_used_as_is():
    table, rows = read(b"a,b|c\n1,2|3\n", ReadingSettings(delimiter="|"))
    assert table.header == ("a,b", "c")
    assert rows[0].values == ("1,2", "3")


TEXT = "external_id,first_name\nu1,Zoë\nu2,Łukasz\n"


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (TEXT.encode("utf-8"), "utf-8"),
        (codecs.BOM_UTF8 + TEXT.encode("utf-8"), "utf-8-sig"),
        (codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le"), "utf-16"),
        (codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be"), "utf-16"),
    ],
)
def test_sniffs_encoding_from_the_byte_order_mark(data, encoding):
    table, rows = read(data)
    assert table.encoding == encoding
    assert table.header == ("external_id", "first_name")
    assert values_and_lines(rows) == [(2, ("u1", "Zoë")), (3, ("u2", "Łukasz"))]


@pytest.mark.parametrize(
    ("configured", "data", "reported"),
    [
        ("latin-1", TEXT.replace("Ł", "L").encode("latin-1"), "iso8859-1"),
        ("utf-16-le", TEXT.encode("utf-16-le"), "utf-16-le"),
        ("UTF8", codecs.BOM_UTF8 + TEXT.encode("utf-8"), "utf-8"),
    ],
)
def test_explicit_encoding(configured, data, reported):
    table, rows = read(data, ReadingSettings(encoding=configured))
    assert table.encoding == reported
    assert table.header == ("external_id", "first_name")
    assert rows[0].values == ("u1", "Zoë")


@pytest.mark.parametrize(
    "data",
    [
        b"id,name\r\nu1,A\r\nu2,B\r\nu3,C",
        b"id,name\nu1,A\nu2,B\nu3,C\n",
        b"id,name\r\nu1,A\nu2,B\r\nu3,C\n",
        b"id,name\ru1,A\ru2,B\ru3,C\r",
    ],
    ids=["crlf-no-final-newline", "lf", "mixed", "cr"],
)
def test_line_endings(data):
    table, rows = read(data)
    assert table.header == ("id", "name")
    assert values_and_lines(rows) == [(2, ("u1", "A")), (3, ("u2", "B")), (4, ("u3", "C"))]


def test_quoted_fields_keep_delimiters_quotes_and_newlines_and_lines_stay_right():
    data = (
        b'id,note\r\n'
        b'u1,"a, b"\r\n'
        b'u2,"line one\r\nline two\r\nline three"\r\n'
        b'u3,"say ""hi"""\r\n'
        b'\r\n'
        b'u4,"x\ny"\n'
        b'u5,last'
    )
    _, rows = read(data)
    assert values_and_lines(rows) == [
        (2, ("u1", "a, b")),
        (3, ("u2", "line one\r\nline two\r\nline three")),
        (6, ("u3", 'say "hi"')),
        (8, ("u4", "x\ny")),
        (10, ("u5", "last")),
    ]


@pytest.mark.parametrize("data, line, row_line", [
    # the quote is never closed: the rest of the file would be one cell
    (b'id,name,city\nu1,Ann,Boston\nu2,"Bob,Reno\nu3,Cy,Austin\nu4,Di,Lima\n', 3, 4),
    # closed by another stray quote further down: rows in between would be swallowed
    (b'id,name,city\nu1,"Ann,Boston\nu2,Bob,Reno\nu3,Cy,"Austin\nu4,Di,Lima\n', 2, 3),
    # in the last column the record keeps the header's width: only its value shows the rows in it
    (b'id,name,city\nu1,Ann,"Boston\nu2,Bob,Reno\nu3,Cy,Austin\n', 2, 3),
    (b'id,name,city\nu1,Ann,"Boston\nu2,Bob,Reno\nu3,Cy,Austin', 2, 3),              # no final line break
    (b'id,name,city\r\nu1,Ann,"Boston\r\nu2,Bob,Reno\r\nu3,Cy,Austin\r\n', 2, 3),
    # closed inside a later field, which the lenient csv module reads on as text: as wide as a row
    (b'id,name,city\nu1,"Ann,Boston\nu2,Bob,Reno\nu3,Jim "JJ" Jones,Austin\n', 2, 3),
])
def test_a_stray_quote_that_would_swallow_rows_ends_the_file_with_where_and_how_to_fix_it(data, line, row_line):
    table = read_table(io.BytesIO(data), AUTO, "RPI_Export_1.txt")
    with pytest.raises(BadFileError) as error:
        list(table.rows)
    assert f"at line {line}" in str(error.value) and f"(line {row_line}: " in str(error.value)
    assert "stray quote" in str(error.value) and "reading.quoting: none" in str(error.value)


@pytest.mark.parametrize("data", [
    b'id,address,city\nu1,"12 Main St\nApt 4",Boston\n',           # a field over two lines
    b'id,address,city\nu1,"12 Main St\nApt 4",Boston,extra\n',     # ragged for another reason
    b'id,note\nu1,"a, b\nc, d"\n',                                  # one delimiter a line: prose
    b'id,name,note\nu1,Ann,"called, left a message\nagain, no answer"\n',   # fewer than a row has
    b'id,address,city\nu1,"12 Main St\nSuite 5, Springfield, IL 62701",Boston\n',   # a row's worth, well formed
    b'id,address,city\nu1,"12 Main St\nSuite 5, Springfield, IL 62701",Boston,extra\n',   # and ragged: one bad row
    b'id,name,note\nu1,Ann,"Called:\nleft msg, no answer, retry\n"\n',   # a note ending with a line break
    b'id,name,note\nu1,Ann,"said ""hi, there, you""\nand, then, left"\n',   # escaped quotes
])
def test_quoted_line_breaks_that_do_not_swallow_rows_are_read(data):
    _, rows = read(data)
    assert len(rows) == 1 and any("\n" in value for value in rows[0].values)


def test_without_quoting_a_quote_is_an_ordinary_character():
    table, rows = read(b'id;"name";note\nu1;"Bob;5\'11"\nu2;x;y\n', ReadingSettings(quoting="none"))
    assert table.delimiter == ";" and table.header == ("id", '"name"', "note")
    assert values_and_lines(rows) == [(2, ("u1", '"Bob', "5'11\"")), (3, ("u2", "x", "y"))]


@pytest.mark.parametrize(
    ("data", "skip_lines", "header", "lines"),
    [
        (b"Record Count: 2\nid\nu1\nu2\n", 1, ("id",), [2 + 1, 2 + 2]),
        (b"x\ny\nz\nid\nu1\n\n\nu2\n", 3, ("id",), [5, 8]),
        (b"\n\nid\nu1\n", 0, ("id",), [4]),
        (b"Title line\n\nid\n\nu1\n", 1, ("id",), [5]),
        (b'"multi\nline",b\nu1,2\n', 0, ("multi\nline", "b"), [3]),
    ],
)
def test_line_numbers_count_skipped_blank_and_header_lines(data, skip_lines, header, lines):
    table, rows = read(data, ReadingSettings(skip_lines=skip_lines))
    assert table.header == header
    assert [row.line for row in rows] == lines


def test_header_cells_are_stripped_and_empty_ones_kept():
    table, _ = read(b" , ,external_id , Email\n1,2,u1,a@x.io\n")
    assert table.header == ("", "", "external_id", "Email")


def test_rows_are_not_checked_against_the_header_length():
    _, rows = read(b"a,b\n1\n1,2,3\n")
    assert [row.values for row in rows] == [("1",), ("1", "2", "3")]
    assert all(row.error is None for row in rows)


def test_rows_carry_the_file_name():
    _, rows = read(b"id\nu1\n", name="RPI_Export_42.txt")
    assert rows[0].file == "RPI_Export_42.txt"


@pytest.mark.parametrize("name", ["RPI_Export_1.txt.gz", "RPI_Export_1.TXT.GZ"])
def test_gzip_is_unpacked_by_name(name):
    packed = gzip.compress(codecs.BOM_UTF8 + b"id;email\r\nu1;a@x.io\r\n")
    table, rows = read_via_open_data_stream(packed, name)
    assert (table.header, table.delimiter, table.encoding) == (("id", "email"), ";", "utf-8-sig")
    assert values_and_lines(rows) == [(2, ("u1", "a@x.io"))]


def test_plain_file_is_not_unpacked():
    stream = io.BytesIO(b"id\n")
    assert open_data_stream(stream, "RPI_Export_1.txt") is stream


def test_gzip_name_with_plain_content_is_a_bad_file():
    with pytest.raises(BadFileError, match="RPI_Export_1.txt.gz is not a readable gzip file"):
        read_via_open_data_stream(b"id\nu1\n", "RPI_Export_1.txt.gz")


def rows_until_broken(rows) -> tuple[list, BadFileError]:
    """Collect rows until the reader gives up on the file; return them and its error."""
    taken = []
    with pytest.raises(BadFileError) as raised:
        for row in rows:
            taken.append(row)
    return taken, raised.value


def test_truncated_gzip_yields_the_rows_before_and_then_gives_up_on_the_file():
    packed = gzip.compress(b"id\n" + b"".join(b"u%d\n" % number for number in range(50_000)))
    stream = open_data_stream(io.BytesIO(packed[: len(packed) // 2]), "RPI_Export_1.txt.gz")
    rows, error = rows_until_broken(read_table(stream, ReadingSettings(), "RPI_Export_1.txt.gz").rows)
    assert rows[0].values == ("u0",)
    assert f"RPI_Export_1.txt.gz: unreadable from line {rows[-1].line + 1}: " in str(error)
    assert all(row.error is None for row in rows)


def read_via_open_data_stream(data: bytes, name: str):
    with open_data_stream(io.BytesIO(data), name) as stream:
        table = read_table(stream, AUTO, name)
        return table, list(table.rows)


@pytest.mark.parametrize(
    ("data", "skip_lines", "message"),
    [
        (b"", 0, "RPI_Export_1.txt is empty"),
        (b"  \r\n\n\t\n", 0, "RPI_Export_1.txt is empty"),
        (codecs.BOM_UTF8, 0, "RPI_Export_1.txt is empty"),
        (codecs.BOM_UTF8 + b"\r\n", 0, "RPI_Export_1.txt is empty"),
        (codecs.BOM_UTF16_LE, 0, "RPI_Export_1.txt is empty"),
        (b"Record Count: 0\n", 1, "RPI_Export_1.txt has no header line after the 1 skipped lines"),
        (b"id,\xff\xfeemail\nu1,a\n", 0, "RPI_Export_1.txt: the header line is not valid UTF-8"),
        (b"id,em\x00ail\nu1,a\n", 0, "RPI_Export_1.txt: the header line contains a NUL byte"),
        ("id,email\nu1,a\n".encode("utf-16-le"), 0, "RPI_Export_1.txt looks like UTF-16 without a byte order mark"),
        ("id,email\nu1,a\n".encode("utf-16-be"), 0, "RPI_Export_1.txt looks like UTF-16 without a byte order mark"),
        (b"x" * (65 * 1024 * 1024), 0, "RPI_Export_1.txt: the header line cannot be read: a line is longer"),
    ],
    ids=[
        "zero-bytes", "whitespace", "utf8-bom-only", "utf8-bom-newline", "utf16-bom-only", "only-skipped",
        "undecodable-header", "nul-in-header", "utf16le-no-bom", "utf16be-no-bom", "header-over-line-limit",
    ],
)
def test_bad_files(data, skip_lines, message):
    with pytest.raises(BadFileError) as raised:
        read_table(io.BytesIO(data), ReadingSettings(skip_lines=skip_lines), "RPI_Export_1.txt")
    assert str(raised.value).startswith(message)


def test_header_only_has_no_rows():
    table, rows = read(b"external_id,email\r\n\r\n")
    assert table.header == ("external_id", "email")
    assert rows == []


@pytest.mark.parametrize(
    ("bad_line", "error", "values"),
    [
        (b"u2,caf\xe9\n", "invalid UTF-8 bytes in line 3" + HINT, ("u2", "caf\\xe9")),
        (b'u2,"ok\n\xff"\n', "invalid UTF-8 bytes in line 4" + HINT, ("u2", "ok\n\\xff")),
        (b"u2,a\x00b\n", "NUL byte in field 2 (email) of the record at line 3", ("u2", "a\\x00b")),
        (b"u2,x,a\x00b\n", "NUL byte in field 3 of the record at line 3", ("u2", "x", "a\\x00b")),
        # a valid character beside the bad byte stays as it is
        ("u2,Zoë".encode() + b" \xc3(\n", "invalid UTF-8 bytes in line 3" + HINT, ("u2", "Zoë \\xc3(")),
    ],
    ids=["latin-1-byte", "bad-byte-on-second-line-of-record", "nul", "nul-beyond-header", "mixed"],
)
def test_a_bad_row_is_reported_with_its_bad_bytes_shown_and_the_others_still_read(bad_line, error, values):
    data = b"external_id,email\nu1,a@x.io\n" + bad_line + b"u3,c@x.io\n"
    _, rows = read(data)
    assert rows[0] == RawRow(2, ("u1", "a@x.io"), None, "RPI_Export_1.txt")
    assert rows[1] == RawRow(3, values, error, "RPI_Export_1.txt")
    assert rows[2].values == ("u3", "c@x.io")
    assert rows[2].line == 3 + bad_line.count(b"\n")


def good_rows(count: int) -> bytes:
    return "".join(f"u{number},Zoë\n" for number in range(count)).encode()


WRONG = ("not valid UTF-8, so the file is in another encoding: set reading.encoding to it (e.g. cp1252) "
         "and retry the workflow")


@pytest.mark.parametrize(
    ("data", "reading", "message"),
    [
        (b"external_id,first_name\r\nu1,J\xfcrgen\r\nu2,Ren\xe9e\r\n", AUTO,
         "RPI_Export_1.txt: the rows at lines 2 and 3 are " + WRONG),
        (b"external_id,first_name\nu1,J\xfcrgen\n", AUTO, "RPI_Export_1.txt: its only row, at line 2, is " + WRONG),
        (codecs.BOM_UTF8 + b"external_id,first_name\nu1,J\xfcrgen\n", AUTO,
         "RPI_Export_1.txt: its only row, at line 2, is " + WRONG),
        # two among the first 100 rows, the second the 100th; blank lines are not rows
        (b"id,name\n" + good_rows(50) + b"\n\nu50,J\xfcrgen\n" + good_rows(48) + b"u99,Ren\xe9e\nu100,\xe9\n",
         AUTO, "RPI_Export_1.txt: the rows at lines 54 and 103 are " + WRONG),
        (b"id\nu\xfc1\nu\xfc2\n", ReadingSettings(encoding="ascii"),
         "RPI_Export_1.txt: the rows at lines 2 and 3 are not valid ascii, so the file is in another encoding: "
         "set reading.encoding to it and retry the workflow"),
    ],
    ids=["cp1252-file", "only-row", "only-row-after-bom", "two-among-the-first-100", "explicit-codec"],
)
def test_a_file_whose_first_rows_cannot_be_decoded_is_bad(data, reading, message):
    with pytest.raises(BadFileError) as raised:
        read(data, reading)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("data", "rejected"),
    [
        (b"id,name\nu1,J\xfcrgen\nu2,ok\n", [2]),   # one of two rows
        (b"id,name\n" + good_rows(99) + b"u99,J\xfcrgen\nu100,Ren\xe9e\n", [101, 102]),   # one in the first 100
        (b"id,name\nu1,a\x00b\nu2,c\x00d\n", [2, 3]),   # a NUL is not a matter of encoding
    ],
    ids=["one-of-two", "second-after-the-first-100-rows", "nul-rows"],
)
def test_rows_that_do_not_show_another_encoding_are_rejected_one_by_one(data, rejected):
    _, rows = read(data)
    assert [row.line for row in rows if row.error] == rejected
    assert all(row.values for row in rows)


class ShortReads(io.RawIOBase):
    """Serves `data` a few bytes per read, as a slow network source may: every multi-byte
    character is split between two reads somewhere."""

    def __init__(self, data: bytes, size: int = 7):
        self._data = data
        self._size = size

    def readable(self):
        return True

    def readinto(self, buffer):
        count = min(len(buffer), self._size, len(self._data))
        buffer[:count], self._data = self._data[:count], self._data[count:]
        return count


def test_bad_bytes_are_found_wherever_they_are_and_split_characters_are_not_bad():
    clean = "".join(f"u{number},Zoë Łukasz 😀 {number}\n" for number in range(3000)).encode()
    data = (b"external_id,name\n" + clean + b"nul,a\x00b\n" + clean + b"bad,caf\xe9!\n" + clean
            + b"last," + "é".encode()[:1])
    table = read_table(ShortReads(data), AUTO, "RPI_Export_1.txt")
    rows = list(table.rows)
    assert [(row.line, row.error) for row in rows if row.error] == [
        (3002, "NUL byte in field 2 (name) of the record at line 3002"),
        (6003, "invalid UTF-8 bytes in line 6003" + HINT),
        (9004, "invalid UTF-8 bytes in line 9004" + HINT),
    ]
    assert len(rows) == 9003 and rows[-2].values == ("u2999", "Zoë Łukasz 😀 2999")


@pytest.mark.parametrize("codec", sorted(SURROGATE_FREE_CODECS))
def test_the_codecs_trusted_to_decode_without_surrogates_never_yield_one(codec):
    # The reader skips its check for surrogates in text these codecs decoded without error.
    if codec in ("ascii", "iso8859-1", "cp1252"):
        decoded = [bytes([byte]).decode(codec, "ignore") for byte in range(256)]
        assert not any("\ud800" <= char <= "\udfff" for text in decoded for char in text)
    else:
        for surrogate in ("\ud800", "\udc80", "\udfff"):
            with pytest.raises(UnicodeDecodeError):
                surrogate.encode(codec, "surrogatepass").decode(codec)


def test_a_codec_that_can_decode_to_surrogates_has_its_rows_checked():
    data = b"id,name\nu1,ok\nu2,\\udc80\nu3,fine\n"  # raw_unicode_escape turns \\udc80 into a surrogate
    table, rows = read(data, ReadingSettings(encoding="raw_unicode_escape"))
    assert [row.error for row in rows] == [None, "invalid raw-unicode-escape bytes in line 3", None]


def test_explicit_codec_reports_bytes_it_cannot_decode_per_row():
    data = b"id,name\nu1,ok\nu2,\x81\nu3,fine\n"  # 0x81 is undefined in cp1252
    table, rows = read(data, ReadingSettings(encoding="cp1252"))
    assert table.encoding == "cp1252"
    assert [row.error for row in rows] == [None, "invalid cp1252 bytes in line 3", None]


def test_undecodable_utf16_gives_up_on_the_file_after_the_rows_before():
    # Past the first chunk the text layer decodes, so the header and early rows are read.
    good = ("id\n" + "".join(f"u{number}\n" for number in range(5000))).encode("utf-16-le")
    data = codecs.BOM_UTF16_LE + good + b"\x00\xdc" + "u2\n".encode("utf-16-le")  # a lone low surrogate
    rows, error = rows_until_broken(read_table(io.BytesIO(data), ReadingSettings()).rows)
    assert rows[0].values == ("u0",)
    assert all(row.error is None for row in rows)
    assert f"unreadable from line {rows[-1].line + 1}: " in str(error)


def test_a_one_megabyte_field_is_read():
    big = "x" * (1024 * 1024)
    _, rows = read(f"id,blob\nu1,{big}\nu2,small\n".encode())
    assert rows[0].values == ("u1", big)
    assert values_and_lines(rows)[1] == (3, ("u2", "small"))


@pytest.mark.parametrize(
    ("huge", "reason"),
    [
        (b"x" * (65 * 1024 * 1024), "a line is longer than"),
        (b'"' + (b"y" * (33 * 1024 * 1024) + b"\n") * 2 + b'"', "field larger than field limit"),
    ],
    ids=["one-long-line", "quoted-field-over-several-lines"],
)
def test_a_record_over_the_limits_gives_up_on_the_file(huge, reason):
    data = b"id,blob\nu1,small\n\nu2," + huge + b"\nu3,never\n"
    rows, error = rows_until_broken(read_table(io.BytesIO(data), ReadingSettings()).rows)
    assert [row.values for row in rows] == [("u1", "small")]
    assert f"unreadable from line 4: {reason}" in str(error)


class CountingStream(io.RawIOBase):
    """A non-seekable stream generated on demand, counting the bytes handed out."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._pending = b""
        self.bytes_read = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        while not self._pending:
            self._pending = next(self._chunks, None)
            if self._pending is None:
                self._pending = b""
                return 0
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        self.bytes_read += count
        return count


def generated_export(rows: int):
    yield b"external_id,email,first_name,cdp_score\r\n"
    for number in range(rows):
        yield b"user-%08d,user%d@example.com,Name %d,%d\r\n" % (number, number, number, number % 97)


def test_reading_streams_instead_of_reading_everything_first():
    total = sum(len(chunk) for chunk in generated_export(100_000))
    stream = CountingStream(generated_export(100_000))
    table = read_table(stream, AUTO, "RPI_Export_1.txt")
    first = [next(table.rows) for _ in range(10)]
    assert [row.line for row in first] == list(range(2, 12))
    assert stream.bytes_read < total // 5
    rest = sum(1 for _ in table.rows)
    assert rest == 100_000 - 10
    assert stream.bytes_read == total


class FailingStream(io.RawIOBase):
    """Serves `data`, then fails like a network mount that went away."""

    def __init__(self, data: bytes):
        self._data = data

    def readable(self):
        return True

    def readinto(self, buffer):
        if not self._data:
            raise OSError(5, "Input/output error")
        count = min(len(buffer), len(self._data))
        buffer[:count], self._data = self._data[:count], self._data[count:]
        return count


@pytest.mark.parametrize("name", ["RPI_Export_1.txt", "RPI_Export_1.txt.gz"])
def test_a_failing_source_is_unavailable_not_a_bad_file(name):
    data = b"id\n" + b"".join(b"u%d\n" % number for number in range(100_000))
    if name.endswith(".gz"):
        data = gzip.compress(data)
    stream = open_data_stream(FailingStream(data[: len(data) // 2]), name)
    table = read_table(stream, AUTO, name)
    with pytest.raises(SourceUnavailable, match=f"{name}: reading failed: .*Input/output error"):
        list(table.rows)


def test_a_source_failing_at_once_is_unavailable():
    with pytest.raises(SourceUnavailable):
        read_table(FailingStream(b""), AUTO, "RPI_Export_1.txt")
