import pytest

from rpi2braze.completion import is_complete, observe
from rpi2braze.model import FileEntry
from rpi2braze.settings import DEFAULT_DATA_FILES

DATA = FileEntry("RPI_Export_1.txt", False, 100, 1.0)
SUMMARY = FileEntry("RPI_Export_1.txt_summary.xml", False, 10, 1.0)
MARKER = FileEntry("done.ok", False, 0, 1.0)


def entries(*items):
    return list(items)


def test_unchanged_listing_keeps_its_first_time():
    first = observe(None, entries(DATA), now=10.0)
    second = observe(first, entries(DATA), now=20.0)
    assert second.since == 10.0


def test_growing_file_restarts_the_clock():
    first = observe(None, entries(DATA), now=10.0)
    grown = observe(first, entries(FileEntry(DATA.name, False, 200, 2.0)), now=20.0)
    assert grown.since == 20.0


def test_touched_file_restarts_the_clock():
    first = observe(None, entries(DATA), now=10.0)
    touched = observe(first, entries(FileEntry(DATA.name, False, 100, 5.0)), now=20.0)
    assert touched.since == 20.0


def test_subfolders_do_not_count():
    first = observe(None, entries(DATA), now=10.0)
    with_dir = observe(first, entries(DATA, FileEntry("sub", True, 4096, 9.0)), now=20.0)
    assert with_dir.since == 10.0


@pytest.mark.parametrize("listing, now, marker, expected", [
    ((DATA,), 39.9, None, False),                                  # not settled yet
    ((DATA,), 40.0, None, True),                                   # settled
    ((DATA, SUMMARY), 40.0, None, True),
    ((SUMMARY,), 100.0, None, False),                              # no data file
    ((), 100.0, None, False),                                      # empty folder
    ((DATA, FileEntry("RPI_Export_2.txt.part", False, 5, 1.0)), 100.0, None, False),  # a writer is busy
    ((DATA, FileEntry(".RPI_Export_2.txt.swp", False, 5, 1.0)), 100.0, None, False),
    ((DATA, MARKER), 10.0, "done.ok", True),                       # marker: no need to settle
    ((MARKER,), 10.0, "done.ok", False),                           # marker without data
    ((DATA,), 10.0, "done.ok", False),                             # marker configured, not there, not settled
])
def test_is_complete(listing, now, marker, expected):
    observation = observe(None, entries(*listing), now=10.0)
    assert is_complete(observation, now, 30.0, marker, DEFAULT_DATA_FILES) is expected
