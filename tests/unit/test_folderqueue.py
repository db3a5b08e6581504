"""The folders' queue: first come, first served, and a lane that takes only small folders."""

import threading

import pytest

from rpi2braze.folderqueue import SMALL_FOLDER_BYTES, Closed, FolderQueue, is_small
from rpi2braze.model import ChannelMode, ExportFolder, FileEntry, WorkflowKey


def folder(*sizes: int) -> ExportFolder:
    files = tuple(FileEntry(f"RPI_Export_{index}.txt", False, size, 0.0) for index, size in enumerate(sizes))
    return ExportFolder(WorkflowKey("drop", "Braze Append", "Offer", "1"), ChannelMode.APPEND, files, "/x")


@pytest.mark.parametrize("sizes, small", [
    ((100,), True),
    ((SMALL_FOLDER_BYTES - 1,), True),
    ((SMALL_FOLDER_BYTES,), False),
    ((SMALL_FOLDER_BYTES // 2, SMALL_FOLDER_BYTES // 2), False),   # the folder's files together
])
def test_a_folder_is_small_below_the_threshold_over_all_its_files(sizes, small):
    assert is_small(folder(*sizes)) is small


def test_workers_take_the_oldest_folder_and_the_lane_the_oldest_small_one():
    folders = FolderQueue()
    folders.put("big-1", small=False)
    folders.put("big-2", small=False)
    folders.put("small-1", small=True)
    folders.put("small-2", small=True)
    assert folders.get(small_only=True, timeout=0) == "small-1"
    assert [folders.get(small_only=False, timeout=0) for _ in range(2)] == ["big-1", "big-2"]
    assert len(folders) == 1
    assert folders.get(small_only=False, timeout=0) == "small-2"
    assert folders.get(small_only=False, timeout=0) is None
    assert folders.get(small_only=True, timeout=0) is None


def test_the_lane_ignores_big_folders_while_it_waits_and_close_ends_every_wait():
    folders = FolderQueue()
    got = []
    lane = threading.Thread(target=lambda: got.append(folders.get(small_only=True, timeout=30)))
    lane.start()
    folders.put("big", small=False)
    lane.join(0.3)
    assert lane.is_alive(), "the lane took a big folder"
    folders.put("small", small=True)
    lane.join(10)
    assert got == ["small"] and len(folders) == 1
    waiting = []

    def wait() -> None:
        try:
            folders.get(small_only=True, timeout=30)
        except Closed:
            waiting.append("closed")
    waiter = threading.Thread(target=wait)
    waiter.start()
    folders.close()
    waiter.join(10)
    assert waiting == ["closed"]
    with pytest.raises(Closed):
        folders.get(small_only=False, timeout=0)
