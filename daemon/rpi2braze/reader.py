"""Streaming, constant-memory reading of one export file into raw rows.

The file is read through io.TextIOWrapper and csv.reader, one record at a time, so a 5 GB export
costs no more memory than a small one. Undecodable bytes are kept as surrogates
("surrogateescape"), so one bad byte rejects one row instead of the whole file; but a file whose
first rows are undecodable is in another encoding, and is bad as a whole. Problems with the
whole file (empty, undecodable header or first rows, UTF-16 without a BOM) raise BadFileError;
problems with one record are returned as a RawRow carrying `error` and its values (bad bytes
shown as \\xNN), for the dead-letter file.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import itertools
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from rpi2braze.errors import BadFileError, ConfigError, SourceUnavailable
from rpi2braze.model import RawRow
from rpi2braze.settings import ReadingSettings

# The mapper rejects values over Braze's limits with a clear reason; the reader only guards memory.
FIELD_SIZE_LIMIT = 64 * 1024 * 1024
csv.field_size_limit(FIELD_SIZE_LIMIT)

# A longer line is unreadable; without a bound, a file with no line breaks is held whole.
LINE_LIMIT = FIELD_SIZE_LIMIT
SNIFF_BYTES = 4096
BUFFER_BYTES = 256 * 1024
DELIMITERS = (",", "\t", "|", ";")
# The first records, which producer.py plans a file's layout from before anything is sent: if two
# of them (or the only one) cannot be decoded, the file is in another encoding, not one bad row.
SAMPLE_ROWS = 100
# Lone surrogates only come from surrogateescape, i.e. from bytes the codec could not decode.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_SUSPECT = re.compile("[\x00\udc80-\udcff]")
# The start of the reasons _row_problem gives, and the \xNN placeholders _escaped writes for the
# dead-letter file: resent unedited, a placeholder would reach Braze as text (resend_rows.py).
BYTES_PROBLEM = re.compile(r"invalid .* bytes in line |NUL byte in field ")
BYTE_PLACEHOLDER = re.compile(r"\\x[0-9a-f]{2}")
# Codecs whose strict decoding never yields a lone surrogate (tests/unit/test_reader.py checks).
SURROGATE_FREE_CODECS = frozenset({"utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be",
                                   "utf-32", "utf-32-le", "utf-32-be", "ascii", "iso8859-1",
                                   "cp1252"})
_QUOTED = re.compile('"[^"]*(?:"|$)')
# Rows of accented names rejected as invalid UTF-8 are most often a whole file in a Windows code page.
_OTHER_ENCODING_HINT = " (if the file is in another encoding, set reading.encoding, e.g. cp1252)"
# Errors that mean the bytes themselves are broken from some point on (not the source failing).
_BROKEN_DATA = (csv.Error, UnicodeDecodeError, EOFError, zlib.error, gzip.BadGzipFile)


@dataclass(frozen=True)
class Table:
    """One export file opened for reading: its header and its records, read lazily."""

    header: tuple[str, ...]
    rows: Iterator[RawRow]
    delimiter: str
    encoding: str


def open_data_stream(stream: BinaryIO, file_name: str) -> BinaryIO:
    """Given an open binary stream and its file name, return a stream of the file's plain bytes:
    gunzipped when the name ends with ".gz" (any case). Closing the result leaves `stream` open."""
    if file_name.lower().endswith(".gz"):
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    return stream


def read_table(stream: BinaryIO, reading: ReadingSettings, file_name: str = "") -> Table:
    """Given a binary stream positioned at the start of an export file, return its Table.

    The header is read now; the records are read as `rows` is consumed. Raise BadFileError if
    the file is empty, has no header, cannot be decoded at the header, or looks like UTF-16
    without a byte order mark; from `rows`, if a record cannot be read, or a quote runs over
    whole rows (a stray quote, `_runaway_quote`), or if two of the first SAMPLE_ROWS records, or
    the only one, cannot be decoded (`_wrong_encoding`). Raise ConfigError if `reading.encoding`
    names no codec. Raise SourceUnavailable, here or from `rows`, if reading the stream fails with an OSError.
    """
    label = file_name or "the export file"
    head = _read_head(stream, label)
    encoding = _choose_encoding(head, reading.encoding, label)
    raw = _PrefixedRaw(head, stream, label, encoding)
    text = io.TextIOWrapper(io.BufferedReader(raw, buffer_size=BUFFER_BYTES),
                            encoding=encoding, errors="surrogateescape", newline="")
    last_line = [""]   # the line the csv reader took last: the end of a record over several lines
    lines = _bounded_lines(text, last_line)
    lines_before, header_line = _find_header_line(lines, reading.skip_lines, encoding, label)
    quoted = reading.quoting != "none"
    delimiter = _sniff_delimiter(header_line, quoted) if reading.delimiter == "auto" else reading.delimiter
    reader = csv.reader(itertools.chain([header_line], lines), delimiter=delimiter,
                        quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)
    header = _read_header(reader, encoding, label)
    rows = _records(reader, raw, header, lines_before, encoding, file_name, last_line)
    return Table(header=header, rows=rows, delimiter=delimiter, encoding=encoding)


class _PrefixedRaw(io.RawIOBase):
    """A raw stream serving bytes already read (`head`) and then the rest of `stream`.

    It lets the reader look at the first bytes of a stream that cannot seek (SFTP, gzip, a pipe).
    It also decodes every chunk once more, strictly: `suspect` turns true once the bytes handed
    out hold a NUL or a byte `encoding` cannot decode. Until then no record can hold either, so
    records need no check of their own (a check per record costs more than one per chunk).
    Closing it does not close `stream`: whoever opened that closes it.
    """

    def __init__(self, head: bytes, stream: BinaryIO, label: str, encoding: str):
        self._head = memoryview(head)
        self._stream = stream
        self._label = label
        self._decoder = codecs.getincrementaldecoder(encoding)("strict")
        self._may_decode_to_surrogates = encoding not in SURROGATE_FREE_CODECS
        self.suspect = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            data = bytes(self._head[: len(buffer)])
            self._head = self._head[len(data):]
        else:
            data = _read_some(self._stream, len(buffer), self._label)
        buffer[: len(data)] = data
        if not self.suspect:
            self._inspect(data)
        return len(data)

    def _inspect(self, data: bytes) -> None:
        """Decode the next bytes (none: the end) as the text layer will; note a NUL or bad byte."""
        try:
            text = self._decoder.decode(data, not data)
        except UnicodeDecodeError:
            self.suspect = True
            return
        self.suspect = "\x00" in text or (self._may_decode_to_surrogates
                                          and not (text.isascii() or decoded_cleanly(text)))


def _read_head(stream: BinaryIO, label: str) -> bytes:
    """Read the first SNIFF_BYTES (fewer at end of file), however short the stream's reads are."""
    pieces: list[bytes] = []
    wanted = SNIFF_BYTES
    try:
        while wanted > 0 and (piece := _read_some(stream, wanted, label)):
            pieces.append(piece)
            wanted -= len(piece)
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise BadFileError(f"{label} is not a readable gzip file: {error}") from error
    return b"".join(pieces)


def _read_some(stream: BinaryIO, size: int, label: str) -> bytes:
    """Read up to `size` bytes; an OSError of the source becomes SourceUnavailable (retry later)."""
    try:
        return stream.read(size) or b""
    except gzip.BadGzipFile:
        raise  # an OSError too, but the bytes are broken, not the source
    except OSError as error:
        raise SourceUnavailable(f"{label}: reading failed: {error}") from error


def _choose_encoding(head: bytes, configured: str, label: str) -> str:
    """Return the codec for the file: the configured one, or one sniffed from a byte order mark."""
    if configured != "auto":
        try:
            return codecs.lookup(configured).name
        except LookupError as error:
            raise ConfigError([f"reading.encoding: unknown codec {configured!r}"]) from error
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if _looks_like_utf16(head):
        raise BadFileError(
            f"{label} looks like UTF-16 without a byte order mark (every other byte is NUL); "
            f"set reading.encoding to utf-16-le or utf-16-be"
        )
    return "utf-8"


def _looks_like_utf16(head: bytes) -> bool:
    """True if NULs fill one byte position of each pair and not the other, as ASCII in UTF-16."""
    pairs = len(head) // 2
    even_nuls, odd_nuls = head[0::2].count(0), head[1::2].count(0)
    many, few = max(even_nuls, odd_nuls), min(even_nuls, odd_nuls)
    return pairs > 0 and many * 5 >= pairs * 2 and few * 10 <= many


def _bounded_lines(text: io.TextIOWrapper, last: list[str]) -> Iterator[str]:
    """Yield the lines of `text`, each also put in last[0]; raise csv.Error at a line longer
    than LINE_LIMIT characters.

    Iterating a TextIOWrapper directly would hold a whole line in memory, however long: a
    file without line breaks would be read at once.
    """
    readline = text.readline
    while line := readline(LINE_LIMIT):
        if len(line) == LINE_LIMIT and line[-1] not in "\r\n":
            raise csv.Error(f"a line is longer than {LINE_LIMIT} characters")
        last[0] = line
        yield line


def _find_header_line(lines: Iterator[str], skip_lines: int, encoding: str, label: str) -> tuple[int, str]:
    """Skip `skip_lines` lines and any blank lines; return (lines passed, the header line)."""
    passed = 0
    saw_content = False
    try:
        for line in itertools.islice(lines, skip_lines):
            passed += 1
            saw_content = saw_content or bool(line.strip())
        for line in lines:
            if line.strip():
                return passed, line.removeprefix("\ufeff")
            passed += 1
    except UnicodeDecodeError as error:
        raise BadFileError(f"{label} cannot be decoded as {_codec_name(encoding)}: {error}") from error
    except _BROKEN_DATA as error:
        raise BadFileError(f"{label}: the header line cannot be read: {error}") from error
    if saw_content:
        raise BadFileError(f"{label} has no header line after the {skip_lines} skipped lines")
    raise BadFileError(f"{label} is empty")


def _sniff_delimiter(header_line: str, quoted: bool = True) -> str:
    """Return the candidate delimiter found most often (outside quotes, if `quoted`); "," when
    there is none."""
    unquoted = _QUOTED.sub("", header_line) if quoted else header_line
    best = max(DELIMITERS, key=unquoted.count)
    return best if best in unquoted else ","


def _read_header(reader, encoding: str, label: str) -> tuple[str, ...]:
    """Parse the header record; raise BadFileError if it is unreadable or holds bad bytes."""
    try:
        cells = next(reader)
    except _BROKEN_DATA as error:
        raise BadFileError(f"{label}: the header line cannot be read: {error}") from error
    joined = "".join(cells)
    if _UNDECODABLE.search(joined):
        raise BadFileError(
            f"{label}: the header line is not valid {_codec_name(encoding)}; "
            f"set reading.encoding to the file's encoding"
        )
    if "\x00" in joined:
        raise BadFileError(f"{label}: the header line contains a NUL byte; is it a text export?")
    return tuple(cell.strip() for cell in cells)


def _records(reader, raw: _PrefixedRaw, header: tuple[str, ...], lines_before: int, encoding: str,
             file_name: str, last_line: list[str]) -> Iterator[RawRow]:
    """Yield each record after the header as a RawRow; blank lines are not records.

    A record the csv module or the codec cannot read ends the file: raise BadFileError, so the
    workflow is quarantined with the line number instead of being called delivered without the
    rest of its rows (the rows before it are already yielded). So does a second undecodable
    record among the first SAMPLE_ROWS, or an only record that is undecodable: the whole file is
    in another encoding. A record with a NUL or an undecodable byte is yielded with `error` and
    its values, those bytes shown as \\xNN.
    """
    consumed = reader.line_num
    records, undecodable = 0, []   # undecodable: the lines of such records among the first SAMPLE_ROWS
    try:
        for values in reader:
            start = lines_before + consumed + 1
            previous, consumed = consumed, reader.line_num
            if not values or (len(values) == 1 and not values[0].strip()):
                continue
            records += 1
            if consumed - previous > 1 and not _closes_cleanly(last_line[0], reader.dialect.delimiter) and (
                    problem := _runaway_quote(values, reader.dialect.delimiter, len(header), start)):
                raise BadFileError(f"{file_name or 'export'}: {problem}")
            if raw.suspect and (problem := _row_problem(values, header, start, encoding)):
                if records <= SAMPLE_ROWS and not decoded_cleanly("".join(values)):
                    undecodable.append(start)
                    if len(undecodable) == 2:
                        raise _wrong_encoding(file_name, undecodable, encoding)
                yield RawRow(start, _escaped(values), problem, file_name)
            else:
                yield RawRow(start, tuple(values), None, file_name)  # positional: measurably faster
    except _BROKEN_DATA as error:
        start = lines_before + consumed + 1
        raise BadFileError(f"{file_name or 'export'}: unreadable from line {start}: {error}") from None
    if records == 1 and undecodable:
        raise _wrong_encoding(file_name, undecodable, encoding)


def _closes_cleanly(last_line: str, delimiter: str) -> bool:
    """Given the last line of a record over several lines, which starts inside the quoted field
    its earlier lines opened: True if that field's closing quote (the first that is not one of a
    "" pair) is followed by a delimiter or the line's end, as in a well-formed record. False if
    there is none (the quote ran to the end of the file) or text follows it (`Jim "JJ" Jones`,
    `"Austin`), which the lenient csv module reads on into the same value."""
    index = last_line.find('"')
    while index != -1 and last_line.startswith('""', index):
        index = last_line.find('"', index + 2)
    return index != -1 and last_line[index + 1:index + 2] in (delimiter, "\r", "\n", "")


def _runaway_quote(values: list[str], delimiter: str, width: int, start: int) -> str | None:
    """Given a broken record spanning several lines, describe the stray quote it looks like: a
    quoted field holding a line with a whole row's delimiters (at least two), which the file's
    quoting joined into one value. None if no field does (a sloppy but harmless `5'11"`)."""
    for value in values:
        lines = value.splitlines()
        for offset, line in enumerate(lines[1:], 1):
            if line.count(delimiter) >= max(2, width - 1):
                return (f"the quote opening a field at line {start} runs over {len(lines)} lines, "
                        f"across what look like whole rows (line {start + offset}: "
                        f"{line[:60]!r}); a stray quote? Fix the file, or set reading.quoting: none "
                        f"if its fields are never quoted, then retry the workflow")
    return None


def decoded_cleanly(text: str) -> bool:
    """True if `text` (a record, a file name) holds no surrogate, i.e. no byte its codec could
    not decode. (Encoding is cheaper than a regex search; ASCII rows never get here.)"""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _row_problem(values: list[str], header: tuple[str, ...], start: int, encoding: str) -> str | None:
    """Describe the first NUL or undecodable byte of a record, with its physical line; None if
    the record has neither."""
    joined = "".join(values)
    if "\x00" not in joined and (joined.isascii() or decoded_cleanly(joined)):
        return None
    for index, value in enumerate(values):
        match = _SUSPECT.search(value)
        if match is None:
            continue
        if match.group() != "\x00":
            before = "".join(values[:index]) + value[: match.start()]
            return (f"invalid {_codec_name(encoding)} bytes in line {start + _line_breaks(before)}"
                    + (_OTHER_ENCODING_HINT if encoding.startswith("utf-8") else ""))
        column = f" ({header[index]})" if index < len(header) and header[index] else ""
        return f"NUL byte in field {index + 1}{column} of the record at line {start}"
    return f"unreadable record at line {start}"


def _escaped(values: list[str]) -> tuple[str, ...]:
    """The values with each NUL and undecodable byte written as \\xNN, as backslashreplace would:
    a rejected row keeps all of its values, and shows what is wrong with them, in the dead-letter
    file (whose values are resent as they are, so nothing there may be lost)."""
    return tuple(_SUSPECT.sub(_byte_escape, value) for value in values)


def _byte_escape(match: re.Match) -> str:
    # surrogateescape decodes the byte 0xNN it cannot decode as U+DCNN
    return f"\\x{ord(match.group()) & 0xFF:02x}"


def _wrong_encoding(file_name: str, lines: list[int], encoding: str) -> BadFileError:
    """The error for a file whose first records (at `lines`) are not in `encoding`."""
    rows = (f"the rows at lines {lines[0]} and {lines[1]} are" if len(lines) > 1
            else f"its only row, at line {lines[0]}, is")
    example = " (e.g. cp1252)" if encoding.startswith("utf-8") else ""
    return BadFileError(f"{file_name or 'export'}: {rows} not valid {_codec_name(encoding)}, so the file is "
                        f"in another encoding: set reading.encoding to it{example} and retry the workflow")


def _line_breaks(text: str) -> int:
    """Count line breaks the way the text layer splits lines: CRLF, LF or a lone CR."""
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _codec_name(encoding: str) -> str:
    """A codec name for people: "utf-8-sig" is UTF-8 with a byte order mark, still UTF-8."""
    return {"utf-8": "UTF-8", "utf-8-sig": "UTF-8", "utf-16": "UTF-16"}.get(encoding, encoding)
