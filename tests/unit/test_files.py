"""Which names in a workflow folder are data, siblings, temporary or other."""

import pytest

from rpi2braze.files import FileKind, all_older_than, classify, data_files, is_temporary, unrecognised
from rpi2braze.model import FileEntry
from rpi2braze.settings import DEFAULT_DATA_FILES


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        # data, in any case, plain or gzipped
        ("RPI_Export_1.txt", FileKind.DATA),
        ("RPI_Export_123456.csv", FileKind.DATA),
        ("rpi_export_7.TXT", FileKind.DATA),
        ("RPI_EXPORT_7.Csv", FileKind.DATA),
        ("RPI_Export_1.txt.gz", FileKind.DATA),
        ("RPI_Export_1.CSV.GZ", FileKind.DATA),
        ("RPI_Export_.txt", FileKind.DATA),
        # RPI's siblings, even where a data glob would match them
        ("RPI_Export_1.txt_summary.xml", FileKind.SIBLING),
        ("RPI_Export_1.txt_summary.txt", FileKind.SIBLING),
        ("RPI_Export_1.txt_summary.json", FileKind.SIBLING),
        ("RPI_Export_1_summary.txt", FileKind.SIBLING),
        ("RPI_Export_1.txt_SUMMARY.XML", FileKind.SIBLING),
        ("RPI_Export_1.txt_sample", FileKind.SIBLING),
        ("RPI_Export_1.TXT_SAMPLE", FileKind.SIBLING),
        ("RPI_Export_99_Content.txt", FileKind.SIBLING),
        ("RPI_Export_99_content.TXT", FileKind.SIBLING),
        ("RPI_Export_99_Source.txt", FileKind.SIBLING),
        ("RPI_Export_99_SOURCE.txt", FileKind.SIBLING),
        # temporary: hidden, editor and copy-tool names; temporary wins over data
        (".RPI_Export_1.txt", FileKind.TEMPORARY),
        (".DS_Store", FileKind.TEMPORARY),
        ("~RPI_Export_1.txt", FileKind.TEMPORARY),
        ("RPI_Export_1.txt~", FileKind.TEMPORARY),
        ("RPI_Export_1.txt.tmp", FileKind.TEMPORARY),
        ("RPI_Export_1.txt.TMP", FileKind.TEMPORARY),
        ("RPI_Export_1.txt.temp", FileKind.TEMPORARY),
        ("RPI_Export_1.txt.part", FileKind.TEMPORARY),
        ("RPI_Export_1.txt.partial", FileKind.TEMPORARY),
        ("RPI_Export_1.txt.filepart", FileKind.TEMPORARY),
        ("RPI_Export_1.txt.crdownload", FileKind.TEMPORARY),
        ("RPI_Export_1.txt.swp", FileKind.TEMPORARY),
        ("RPI_Export_1.txt.lock", FileKind.TEMPORARY),
        ("RPI_Export_1.txt.inprogress", FileKind.TEMPORARY),
        ("RPI_Export_1.txt.writing", FileKind.TEMPORARY),
        ("RPI_Export_1.txt.uploading", FileKind.TEMPORARY),
        (".RPI_Export_1.txt_summary.xml", FileKind.TEMPORARY),
        # other
        ("RPI_Export_1.xlsx", FileKind.OTHER),
        ("RPI_Export_1.txt.bak", FileKind.OTHER),
        ("export_1.txt", FileKind.OTHER),
        ("README", FileKind.OTHER),
        ("RPI_Export_1.txt.gz.zip", FileKind.OTHER),
        ("done.marker", FileKind.OTHER),
    ],
)
def test_classify_with_default_patterns(name, kind):
    assert classify(name, DEFAULT_DATA_FILES) is kind


@pytest.mark.parametrize(
    ("name", "patterns", "kind"),
    [
        ("audience.dat", ("*.dat",), FileKind.DATA),
        ("AUDIENCE.DAT", ("*.dat",), FileKind.DATA),
        ("audience.dat", ("*.txt",), FileKind.OTHER),
        ("RPI_Export_1.txt", (), FileKind.OTHER),
        ("anything_summary.dat", ("*.dat",), FileKind.SIBLING),
        ("part_1.csv", ("part_?.csv", "*.dat"), FileKind.DATA),
        ("part_10.csv", ("part_?.csv",), FileKind.OTHER),
    ],
)
def test_classify_with_configured_patterns(name, patterns, kind):
    assert classify(name, patterns) is kind


@pytest.mark.parametrize(
    ("name", "temporary"),
    [
        (".hidden", True),
        ("~lock.RPI_Export_1.txt#", True),
        ("backup~", True),
        ("file.PART", True),
        ("file.Uploading", True),
        ("RPI_Export_1.txt", False),
        ("tmp_RPI_Export_1.txt", False),
        ("file.partition", False),
        ("file.tmpl", False),
        ("a.b.c", False),
    ],
)
def test_is_temporary(name, temporary):
    assert is_temporary(name) is temporary


def entry(name: str, is_dir: bool = False) -> FileEntry:
    return FileEntry(name=name, is_dir=is_dir, size=10, mtime=1.0)


def test_data_files_keeps_only_data_files_sorted_by_name():
    entries = [
        entry("RPI_Export_2.txt"),
        entry("RPI_Export_2.txt_summary.xml"),
        entry("RPI_Export_10.txt"),
        entry("RPI_Export_1.txt.gz"),
        entry("RPI_Export_3.txt", is_dir=True),
        entry("RPI_Export_4.txt.part"),
        entry("RPI_Export_5_Content.txt"),
        entry(".RPI_Export_6.txt"),
        entry("notes.md"),
    ]
    names = [found.name for found in data_files(entries, DEFAULT_DATA_FILES)]
    assert names == ["RPI_Export_1.txt.gz", "RPI_Export_10.txt", "RPI_Export_2.txt"]


def test_data_files_of_an_empty_folder_is_empty():
    assert data_files([], DEFAULT_DATA_FILES) == ()


@pytest.mark.parametrize("names, expected", [
    (["fixed_rows.csv", "notes.txt", "RPI_Export_1.txt_summary.xml"], ["fixed_rows.csv", "notes.txt"]),
    (["fixed_rows.csv", "RPI_Export_1.txt"], []),          # a data file: the folder is delivered
    (["fixed_rows.csv", "RPI_Export_1.txt.part"], []),     # still being written
    (["RPI_Export_1.txt_summary.xml", "done.ok"], []),     # RPI's sibling and the marker are not exports
    ([], []),
])
def test_unrecognised_names_what_was_saved_instead_of_a_data_file(names, expected):
    entries = [entry(name) for name in names] + [entry("sub", is_dir=True)]
    assert unrecognised(entries, DEFAULT_DATA_FILES, "done.ok") == expected


@pytest.mark.parametrize("mtimes, expected", [((5.0, 9.0), True), ((5.0, 10.0), False), ((), False)])
def test_all_older_than_looks_at_every_data_file_and_needs_one(mtimes, expected):
    entries = [FileEntry(f"RPI_Export_{n}.txt", False, 10, mtime) for n, mtime in enumerate(mtimes)]
    entries.append(FileEntry("notes.txt", False, 10, 99.0))   # not data: its age does not count
    assert all_older_than(entries, DEFAULT_DATA_FILES, 10.0) is expected
