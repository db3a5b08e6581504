"""GroupCommit with real threads: grouping, per-item errors, a failing commit, no lost wake-up."""

import threading
import time

import pytest

from rpi2braze.groupcommit import GroupCommit

DEADLINE_SECONDS = 10


def wait_until(condition, what):
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


class Recorder:
    """A commit function that records its groups and can be held inside its first call."""

    def __init__(self, outcome=lambda item: item * 2):
        self.groups = []
        self.hold = threading.Event()
        self.hold.set()
        self.inside = threading.Event()
        self.outcome = outcome

    def __call__(self, items):
        self.groups.append(list(items))
        self.inside.set()
        assert self.hold.wait(DEADLINE_SECONDS)
        return [self.outcome(item) for item in items]


def submit_in_threads(group_commit, items):
    results, threads = {}, []
    for item in items:
        def run(item=item):
            try:
                results[item] = group_commit.submit(item)
            except Exception as error:
                results[item] = error
        threads.append(threading.Thread(target=run))
        threads[-1].start()
    return results, threads


def test_a_lone_item_is_committed_alone_and_gets_its_result():
    recorder = Recorder()
    assert GroupCommit(recorder).submit(21) == 42
    assert recorder.groups == [[21]]


def test_items_that_arrive_during_a_commit_share_the_next_one():
    recorder = Recorder()
    recorder.hold.clear()
    group_commit = GroupCommit(recorder)
    first, first_threads = submit_in_threads(group_commit, [1])
    assert recorder.inside.wait(DEADLINE_SECONDS)
    later, later_threads = submit_in_threads(group_commit, [2, 3, 4])
    wait_until(lambda: len(group_commit._queued) == 3, "three queued items")
    recorder.hold.set()
    for thread in first_threads + later_threads:
        thread.join(DEADLINE_SECONDS)
    assert recorder.groups[0] == [1]
    assert sorted(recorder.groups[1]) == [2, 3, 4]
    assert len(recorder.groups) == 2
    assert first | later == {1: 2, 2: 4, 3: 6, 4: 8}


def test_an_exception_outcome_is_raised_only_in_its_own_caller():
    def outcome(item):
        return ValueError(f"bad {item}") if item == 3 else item
    recorder = Recorder(outcome)
    recorder.hold.clear()
    group_commit = GroupCommit(recorder)
    _, first_threads = submit_in_threads(group_commit, [1])
    assert recorder.inside.wait(DEADLINE_SECONDS)
    results, threads = submit_in_threads(group_commit, [2, 3, 4])
    wait_until(lambda: len(group_commit._queued) == 3, "three queued items")
    recorder.hold.set()
    for thread in first_threads + threads:
        thread.join(DEADLINE_SECONDS)
    assert results[2] == 2 and results[4] == 4
    assert isinstance(results[3], ValueError) and str(results[3]) == "bad 3"


def test_a_failing_commit_fails_its_whole_group_and_the_next_one_still_runs():
    calls = []

    def commit(items):
        calls.append(list(items))
        if len(calls) == 1:
            raise OSError("disk full")
        return list(items)
    group_commit = GroupCommit(commit)
    with pytest.raises(OSError, match="disk full"):
        group_commit.submit("a")
    assert group_commit.submit("b") == "b"
    assert calls == [["a"], ["b"]]


def test_a_commit_returning_the_wrong_number_of_outcomes_is_an_error():
    group_commit = GroupCommit(lambda items: [])
    with pytest.raises(RuntimeError, match="0 outcomes for 1 items"):
        group_commit.submit("a")


def test_many_threads_each_get_their_own_result_and_commits_never_overlap():
    active, overlaps, groups = [0], [], []
    lock = threading.Lock()

    def commit(items):
        with lock:
            active[0] += 1
            overlaps.append(active[0] > 1)
        groups.append(len(items))
        time.sleep(0.0005)   # a commit takes a moment, as an fsync does, so others queue
        with lock:
            active[0] -= 1
        return [(item, "done") for item in items]

    group_commit = GroupCommit(commit)
    results, errors = {}, []

    def sender(offset):
        for number in range(offset * 100, offset * 100 + 100):
            answer = group_commit.submit(number)
            if answer != (number, "done"):
                errors.append((number, answer))
            results[number] = answer

    threads = [threading.Thread(target=sender, args=(offset,)) for offset in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_SECONDS * 3)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert sorted(results) == list(range(1600))
    assert sum(groups) == 1600
    assert not any(overlaps)
    assert max(groups) > 1   # 16 threads and a slow commit: some waited and were grouped
