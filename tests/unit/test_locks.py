"""Workflow locks between rpi2braze processes: held by one, refused to another, dropped when it dies."""

import os
import signal
import stat
import subprocess
import sys

import pytest

from rpi2braze.locks import LOCK_FILE, WorkflowLocks
from rpi2braze.model import WorkflowKey

KEY = WorkflowKey("drop", "Braze Append", "Offer", "42")
OTHER = WorkflowKey("drop", "Braze Append", "Offer", "43")
HOLDER = """
import sys
from rpi2braze.locks import WorkflowLocks
from rpi2braze.model import WorkflowKey
locks = WorkflowLocks(sys.argv[1])
with locks.hold(WorkflowKey("drop", "Braze Append", "Offer", "42")) as held:
    print("held" if held else "busy", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding KEY's lock until it is killed or its stdin closes."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait(10)


def test_a_workflow_held_by_another_process_is_refused_and_others_are_free(tmp_path, holder):
    locks = WorkflowLocks(str(tmp_path))
    try:
        with locks.hold(KEY) as held:
            assert held is False
        with locks.hold(OTHER) as held:
            assert held is True
    finally:
        locks.close()


def test_the_lock_is_dropped_when_its_process_is_killed(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    locks = WorkflowLocks(str(tmp_path))
    try:
        with locks.hold(KEY) as held:
            assert held is True
    finally:
        locks.close()


def test_a_lock_released_here_can_be_taken_by_another_process(tmp_path):
    locks = WorkflowLocks(str(tmp_path))
    try:
        with locks.hold(KEY) as held:
            assert held is True
            busy = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path)], input="", capture_output=True, text=True)
            assert busy.stdout.strip() == "busy"
        after = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path)], input="", capture_output=True, text=True)
        assert after.stdout.strip() == "held"
    finally:
        locks.close()
    assert stat.S_IMODE(os.stat(tmp_path / LOCK_FILE).st_mode) == 0o600
    assert os.path.getsize(tmp_path / LOCK_FILE) == 0    # locks lie beyond the end: the file never grows
