"""How many reading processes share a folder: one per core this process may use but one, at most 4.
How a reading process ended, in words."""

import os
import signal
import subprocess
import sys

import pytest

from rpi2braze import children
from rpi2braze.children import MAX_PROCESSES, processes_for


@pytest.mark.parametrize("partitions", [1, 2, 3, 64])
def test_never_more_processes_than_partitions_cores_or_the_cap(partitions):
    count = processes_for(partitions)
    assert 1 <= count <= min(partitions, MAX_PROCESSES, max(1, len(os.sched_getaffinity(0)) - 1))


def test_one_allowed_core_means_one_reading_process():
    script = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); " \
             "from rpi2braze.children import processes_for; print(processes_for(64))"
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip() == "1"


@pytest.mark.parametrize("allowed, partitions, expected", [(1, 64, 1), (2, 64, 1), (3, 64, 2), (5, 64, 4),
                                                           (16, 64, MAX_PROCESSES), (16, 3, 3)])
def test_the_count_follows_the_cores_this_process_may_use(monkeypatch, allowed, partitions, expected):
    # The cores a process may use (its affinity, as a container or `taskset` sets it), not the
    # machine's: pretended here, since this machine has too few cores to tell them apart.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(allowed)))
    assert processes_for(partitions) == expected


@pytest.mark.parametrize("status, expected", [
    (1, "exited with status 1"),
    (-signal.SIGSEGV, "was killed by SIGSEGV"),
    (-signal.SIGKILL, "was killed by SIGKILL (out of memory? the kernel's log says: journalctl -k)"),
    (-200, "was killed by signal 200"),
    (None, "closed its output"),
])
def test_how_a_reading_process_ended_is_said_in_words(status, expected):
    assert children._how_ended(status) == expected
