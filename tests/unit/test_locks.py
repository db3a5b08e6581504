"""Workflow locks between rpi2braze processes: held by one, refused to another, dropped when it dies."""

import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest
import structlog

from rpi2braze import locks as locks_module
from rpi2braze.errors import StateError
from rpi2braze.locks import LOCK_FILE, WorkflowLocks, held_elsewhere
from rpi2braze.model import WorkflowKey

KEY = WorkflowKey("drop", "Braze Append", "Offer", "42")
OTHER = WorkflowKey("drop", "Braze Append", "Offer", "43")
HOLDER = """
import sys
import time
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
    with subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout.readline().strip() == "held"
            yield process
        finally:
            process.kill()


@pytest.fixture
def locks(tmp_path):
    locks = WorkflowLocks(str(tmp_path))
    yield locks
    locks.close()


def another_process_finds(tmp_path) -> str:
    """"held" or "busy": what a new process trying KEY sees."""
    return subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path)], input="", capture_output=True,
                          text=True).stdout.strip()


def test_a_workflow_held_by_another_process_is_refused_and_others_are_free(holder, locks):
    with locks.hold(KEY) as held:
        assert held is False
    with locks.hold(OTHER) as held:
        assert held is True


def test_the_lock_is_dropped_when_its_process_is_killed(holder, locks):
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    with locks.hold(KEY) as held:
        assert held is True


def test_held_elsewhere_sees_another_processs_lock_and_only_while_it_lives(tmp_path, holder):
    assert (held_elsewhere(str(tmp_path), KEY), held_elsewhere(str(tmp_path), OTHER)) == (True, False)
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    assert held_elsewhere(str(tmp_path), KEY) is False


def test_asking_does_not_drop_this_processs_own_locks(tmp_path, locks):
    # Closing any descriptor of the file would drop them: the question goes through the open one.
    with locks.hold(KEY) as held:
        assert held is True
        assert held_elsewhere(str(tmp_path), KEY) is False   # F_GETLK does not see one's own locks
        assert another_process_finds(tmp_path) == "busy"


def test_without_a_lock_file_nothing_is_held(tmp_path):
    assert held_elsewhere(str(tmp_path / "nowhere"), KEY) is False
    assert not (tmp_path / "nowhere").exists()


def test_a_lock_released_here_can_be_taken_by_another_process(tmp_path, locks):
    with locks.hold(KEY) as held:
        assert held is True
        assert another_process_finds(tmp_path) == "busy"
    assert another_process_finds(tmp_path) == "held"
    assert stat.S_IMODE(os.stat(tmp_path / LOCK_FILE).st_mode) == 0o600
    assert os.path.getsize(tmp_path / LOCK_FILE) == 0    # locks lie beyond the end: the file never grows


def test_threads_of_one_process_exclude_each_other_too(tmp_path, locks):
    with locks.hold(KEY) as first:
        with locks.hold(KEY) as second:
            assert (first, second) == (True, False)
        assert another_process_finds(tmp_path) == "busy"   # the refused second hold did not unlock the first
    with locks.hold(KEY) as again:
        assert again is True


def test_closing_while_a_workflow_is_held_is_harmless(tmp_path):
    locks = WorkflowLocks(str(tmp_path))
    with locks.hold(KEY) as held:
        assert held is True
        locks.close()
    with locks.hold(OTHER) as held:
        assert held is False      # closed: nothing more is locked


def test_a_state_directory_that_cannot_hold_the_lock_file_is_a_clear_error(tmp_path):
    (tmp_path / "not-a-directory").write_text("")
    with pytest.raises(StateError, match="cannot open .*workflows.lock: Not a directory; the state directory must"):
        WorkflowLocks(str(tmp_path / "not-a-directory"))


def lock_file_descriptors(tmp_path) -> int:
    """How many descriptors this process has open on the lock file."""
    target = str(tmp_path / LOCK_FILE)
    return sum(1 for fd in os.listdir("/proc/self/fd")
               if os.path.realpath(f"/proc/self/fd/{fd}") == target)


def test_a_workflow_held_while_its_pipeline_closes_stays_locked_for_the_next_pipeline(tmp_path):
    # A reload whose drain timed out: the old pipeline closes while one of its workers still sends.
    old = WorkflowLocks(str(tmp_path))
    with old.hold(KEY) as held:
        assert held is True
        old.close()
        new = WorkflowLocks(str(tmp_path))
        with new.hold(KEY) as taken:
            assert taken is False                           # not sent by both pipelines at once
        assert another_process_finds(tmp_path) == "busy"    # closing did not drop the kernel's lock
        assert lock_file_descriptors(tmp_path) == 1         # the pipelines share one descriptor
    with new.hold(KEY) as taken:
        assert taken is True
    new.close()
    assert lock_file_descriptors(tmp_path) == 0
    assert another_process_finds(tmp_path) == "held"


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_lock_file_deleted_or_replaced_while_held_is_followed_and_the_workflow_stays_held(tmp_path, locks, how):
    # an operator cleaning a "stale" lock file must not let a second process deliver the workflow
    path = tmp_path / LOCK_FILE
    with locks.hold(KEY) as held:
        assert held is True
        if how == "deleted":
            path.unlink()
        else:
            (tmp_path / "fresh").write_text("")
            os.replace(tmp_path / "fresh", path)
        deadline = time.monotonic() + 10
        while another_process_finds(tmp_path) != "busy" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert another_process_finds(tmp_path) == "busy"
    assert another_process_finds(tmp_path) == "held", "and it is let go of in the new file"


def test_a_workflow_locked_after_the_file_was_deleted_is_locked_in_the_file_other_processes_see(tmp_path, monkeypatch):
    monkeypatch.setattr(locks_module, "FOLLOW_SECONDS", 3600.0)   # only `hold` itself may notice
    locks = WorkflowLocks(str(tmp_path))
    try:
        (tmp_path / LOCK_FILE).unlink()
        with subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) as process:
            try:
                assert process.stdout.readline().strip() == "held"   # in the new file
                with locks.hold(KEY) as held:
                    assert held is False
            finally:
                process.kill()
    finally:
        locks.close()


def test_a_state_folder_that_becomes_unusable_is_logged_and_the_locks_go_on(tmp_path, monkeypatch):
    monkeypatch.setattr(locks_module, "FOLLOW_SECONDS", 0.05)
    monkeypatch.setattr(locks_module, "_UNUSABLE_LOG", locks_module.Throttle(60.0))
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    locks = WorkflowLocks(str(state_dir))
    try:
        with structlog.testing.capture_logs() as logs:
            state_dir.rename(tmp_path / "moved")
            state_dir.write_text("")   # the path now names a file: stat fails with ENOTDIR
            with locks.hold(KEY) as held:
                assert held is True    # the lock on the file still open keeps the workflows apart
            time.sleep(0.3)            # several follower rounds
        assert any(thread.name == "workflow-locks" for thread in threading.enumerate())
        unusable = [line for line in logs if line["event"] == "workflow_lock_file_unusable"]
        assert len(unusable) == 1, "once a minute, not every round"
    finally:
        state_dir.unlink()
        (tmp_path / "moved").rename(state_dir)
        locks.close()

