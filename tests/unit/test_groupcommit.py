"""GroupCommit with real threads: grouping, per-item errors, a failing commit, an interrupted waiter."""

import os
import signal
import threading
import time

import pytest

from rpi2braze.groupcommit import CommitFailed, GroupCommit

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
        threads.append(threading.Thread(target=run, daemon=True))
        threads[-1].start()
    return results, threads


def join_all(threads):
    for thread in threads:
        thread.join(DEADLINE_SECONDS)
        assert not thread.is_alive(), "a submitting thread never returned"


def test_a_lone_item_is_committed_alone_and_gets_its_result():
    recorder = Recorder()
    assert GroupCommit(recorder).submit(21) == 42
    assert recorder.groups == [[21]]


def submit_behind_a_held_commit(recorder, later_items):
    """Submit 1 and hold its commit; queue `later_items` behind it, then let it go. Return the
    results of 1 and of the later items once every thread returned."""
    recorder.hold.clear()
    group_commit = GroupCommit(recorder)
    first, first_threads = submit_in_threads(group_commit, [1])
    assert recorder.inside.wait(DEADLINE_SECONDS)
    later, later_threads = submit_in_threads(group_commit, later_items)
    wait_until(lambda: len(group_commit._queued) == len(later_items), "the later items queued")
    recorder.hold.set()
    join_all(first_threads + later_threads)
    return first, later


def test_items_that_arrive_during_a_commit_share_the_next_one():
    recorder = Recorder()
    first, later = submit_behind_a_held_commit(recorder, [2, 3, 4])
    assert recorder.groups[0] == [1]
    assert sorted(recorder.groups[1]) == [2, 3, 4]
    assert len(recorder.groups) == 2
    assert first | later == {1: 2, 2: 4, 3: 6, 4: 8}


def test_an_exception_outcome_is_raised_only_in_its_own_caller():
    def outcome(item):
        return ValueError(f"bad {item}") if item == 3 else item
    _, results = submit_behind_a_held_commit(Recorder(outcome), [2, 3, 4])
    assert results[2] == 2 and results[4] == 4
    assert isinstance(results[3], ValueError) and str(results[3]) == "bad 3"


def test_a_failing_commit_fails_its_whole_group_and_the_next_one_still_runs():
    hold, inside, calls = threading.Event(), threading.Event(), []

    def commit(items):
        calls.append(sorted(items))
        if len(calls) == 1:
            inside.set()
            assert hold.wait(DEADLINE_SECONDS)
            return list(items)
        if len(calls) == 2:
            raise OSError("disk full")
        return list(items)

    group_commit = GroupCommit(commit)
    first, first_threads = submit_in_threads(group_commit, [1])
    assert inside.wait(DEADLINE_SECONDS)
    failed, failed_threads = submit_in_threads(group_commit, [2, 3])
    wait_until(lambda: len(group_commit._queued) == 2, "two queued items")
    hold.set()
    join_all(first_threads + failed_threads)
    assert first == {1: 1}
    # the thread that ran the commit raises its error; the other gets CommitFailed, caused by it
    kinds = sorted(type(error).__name__ for error in failed.values())
    assert kinds == ["CommitFailed", "OSError"]
    follower = next(error for error in failed.values() if isinstance(error, CommitFailed))
    assert isinstance(follower.__cause__, OSError) and "disk full" in str(follower)
    assert group_commit.submit(4) == 4
    assert calls == [[1], [2, 3], [4]]


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

    threads = [threading.Thread(target=sender, args=(offset,), daemon=True) for offset in range(16)]
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


def test_an_interrupted_waiter_withdraws_its_item_and_the_next_group_still_commits():
    recorder = Recorder()
    recorder.hold.clear()
    group_commit = GroupCommit(recorder)
    _, leader_threads = submit_in_threads(group_commit, [1])
    assert recorder.inside.wait(DEADLINE_SECONDS)

    def interrupt_main_thread_once_it_waits():
        wait_until(lambda: len(group_commit._queued) == 1, "the main thread's item queued")
        os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C: Python raises KeyboardInterrupt in the main thread
    interrupter = threading.Thread(target=interrupt_main_thread_once_it_waits, daemon=True)
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        group_commit.submit(2)   # the main thread waits behind the held commit
    interrupter.join(DEADLINE_SECONDS)
    later, later_threads = submit_in_threads(group_commit, [3])
    wait_until(lambda: len(group_commit._queued) == 1, "a later item queued")
    recorder.hold.set()
    join_all(leader_threads + later_threads)
    assert later == {3: 6}
    assert recorder.groups == [[1], [3]]   # item 2 was withdrawn, never committed
    assert group_commit.submit(5) == 10


def test_an_interrupt_while_the_next_group_is_handed_over_strands_no_thread():
    # Whichever moment the interrupt lands (before, during or after the hand-over of the next
    # group to the main thread), the other thread of that group must return, and later items commit.
    hold, calls = threading.Event(), []

    def commit(items):
        calls.append(sorted(items))
        if len(calls) == 1:
            assert hold.wait(DEADLINE_SECONDS)
            os.kill(os.getpid(), signal.SIGINT)
        return list(items)

    group_commit = GroupCommit(commit)
    _, leader_threads = submit_in_threads(group_commit, [1])
    wait_until(lambda: calls, "the first commit")
    other = {}

    def queue_another_then_release():
        wait_until(lambda: len(group_commit._queued) == 1, "the main thread's item queued")
        results, threads = submit_in_threads(group_commit, [3])
        other["results"], other["threads"] = results, threads
        wait_until(lambda: len(group_commit._queued) == 2, "a second item queued")
        hold.set()
    helper = threading.Thread(target=queue_another_then_release, daemon=True)
    helper.start()
    with pytest.raises(KeyboardInterrupt):
        group_commit.submit(2)
        time.sleep(DEADLINE_SECONDS)   # committed before the interrupt landed: it lands here
    helper.join(DEADLINE_SECONDS)
    join_all(leader_threads + other["threads"])
    assert 3 in other["results"]
    assert group_commit.submit(4) == 4
    assert calls[0] == [1] and calls[-1] == [4]
