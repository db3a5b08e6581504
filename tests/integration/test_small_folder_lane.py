"""Folders and workers: a small folder is not held up by big ones, and a queued folder says it waits."""

import contextlib
import threading
import time

import pytest

from daemon_helpers import API_KEY, local_source, wait_for, write_config
from delivery_helpers import export_rows, write_export
from rpi2braze import folderqueue
from rpi2braze.config import load_settings
from rpi2braze.engine import Engine
from rpi2braze.model import WorkflowKey, WorkflowStatus
from rpi2braze.sandbox import SandboxServer

pytestmark = pytest.mark.slow

UPSERT = "Braze Onboarding and Upsert"
BIG = WorkflowKey("drop", UPSERT, "Big", "101")


@contextlib.contextmanager
def one_worker_on_a_big_folder(tmp_path, monkeypatch):
    """An engine with one folder worker, busy on BIG: 600 rows at one request a second take 8 s.
    Folders under 5,000 bytes are small. Yields the drop folder, the state store and the sandbox."""
    monkeypatch.setattr(folderqueue, "SMALL_FOLDER_BYTES", 5_000)
    drop = tmp_path / "drop"
    with SandboxServer(api_key=API_KEY) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(drop), settle=0.2),
                              braze_extra="  rate_limit: {requests: 1, per_seconds: 1}\n", extra="workers: 1\n")
        engine = Engine(load_settings(config, {"TEST_BRAZE_API_KEY": API_KEY})).start()
        state = engine.pipeline.context.state
        try:
            write_export(drop, BIG.offer, BIG.workflow_id, export_rows("b", 600))
            wait_for(lambda: (record := state.get(BIG)) and record.status == WorkflowStatus.IN_PROGRESS,
                     timeout=30, interval=0.05, what="the big folder under way")
            yield drop, state, sandbox
        finally:
            engine.drain(time.monotonic() + 10, threading.Event())
            engine.close(timeout=5)


def test_a_small_folder_does_not_wait_for_the_big_one_every_worker_is_on(tmp_path, monkeypatch):
    small = WorkflowKey("drop", UPSERT, "Small", "102")
    with one_worker_on_a_big_folder(tmp_path, monkeypatch) as (drop, state, sandbox):
        write_export(drop, small.offer, small.workflow_id, export_rows("s", 3))
        wait_for(lambda: (record := state.get(small)) and record.status == WorkflowStatus.DELIVERED,
                 timeout=30, interval=0.05, what="the small folder delivered")
        big_then = state.get(BIG)
    assert big_then.status == WorkflowStatus.IN_PROGRESS and big_then.rows_delivered < 600
    assert {f"s-{number:06d}" for number in range(3)} <= set(sandbox.store.all())


def test_a_folder_waiting_for_a_worker_says_so_until_one_takes_it(tmp_path, monkeypatch):
    second = WorkflowKey("drop", UPSERT, "Big", "202")
    with one_worker_on_a_big_folder(tmp_path, monkeypatch) as (drop, state, _):
        write_export(drop, second.offer, second.workflow_id, export_rows("c", 600))
        queued = wait_for(lambda: (record := state.get(second)) and record.reason and record,
                          timeout=30, interval=0.05, what="the second folder queued")
    assert queued.status == WorkflowStatus.PENDING
    assert queued.reason == "queued: waiting for a folder worker (1 delivering, 0 queued ahead)"
