"""One rpi2braze process delivers a workflow at a time: `process` run by hand while the daemon
delivers the same folder sends nothing twice, and never reopens a workflow that was finished."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import structlog

from daemon_helpers import API_KEY, cli, environment, local_source, wait_for, wait_status, write_config
from delivery_helpers import UPSERT, export_rows, write_export
from rpi2braze.config import load_settings
from rpi2braze.engine import Engine
from rpi2braze.model import WorkflowStatus
from rpi2braze.pipeline import Pipeline
from rpi2braze.process import resolve_folder
from rpi2braze.sandbox import Faults, SandboxServer
from rpi2braze.worker import FolderDelivery

OFFER = "Locked Offer"
USERS = 3000


def test_process_refuses_a_folder_the_daemon_is_delivering(tmp_path):
    drop = tmp_path / "drop"
    folder = write_export(drop, OFFER, "8101", export_rows("l", USERS))
    # Slow answers keep the daemon on the folder for ~6 s (40 batches, 2 at a time, 0.3 s each),
    # several times what starting `process` takes.
    with SandboxServer(api_key=API_KEY, faults=Faults(latency_seconds=0.3)) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(drop), settle=0),
                              braze_extra="  concurrency: 2\n")
        daemon = subprocess.Popen([sys.executable, "-m", "rpi2braze", "-c", config, "run"], env=environment(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: sandbox.requests, timeout=30, what="the daemon's first request")
            by_hand = cli(config, "process", str(folder))
            assert by_hand.returncode == 1
            assert "is being delivered by another rpi2braze process" in by_hand.stderr
            record = wait_status(config, "8101", "delivered", timeout=60)
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(30) == 0
        finally:
            daemon.kill()
            daemon.wait(10)
        sent = [external_id for request in sandbox.requests for external_id in request.external_ids]
    assert record["rows_delivered"] == USERS
    assert len(sent) == len(set(sent)) == USERS      # every user once: nothing from the second process


def test_a_workflow_finished_before_the_lock_was_taken_is_left_as_it_is(tmp_path):
    """The other process delivered and archived the folder between this one's check and its lock."""
    drop = tmp_path / "drop"
    folder = write_export(drop, OFFER, "8102", export_rows("d", 10))
    with SandboxServer(api_key=API_KEY) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(drop), settle=0))
        settings = load_settings(config, environment())
        delivery_folder, source, source_settings = resolve_folder(settings, str(folder))
        pipeline = Pipeline.open(settings, threading.Event())
        try:
            state = pipeline.context.state
            state.record_seen(delivery_folder.key, delivery_folder.location)
            state.begin(delivery_folder.key, 1)
            state.ack_batch(delivery_folder.key, 0, 10, 0)
            state.finish(delivery_folder.key, WorkflowStatus.DELIVERED)
            shutil.rmtree(folder)                                  # archived by the other process
            status = FolderDelivery(delivery_folder, source, source_settings, pipeline.context).run()
            record = state.get(delivery_folder.key)
        finally:
            pipeline.close()
        assert not sandbox.requests
    assert status == WorkflowStatus.DELIVERED
    assert (record.status, record.rows_delivered, record.reason) == (WorkflowStatus.DELIVERED, 10, "")


HOLDER = """
import sys
from rpi2braze.locks import WorkflowLocks
from rpi2braze.model import WorkflowKey
with WorkflowLocks(sys.argv[1]).hold(WorkflowKey("drop", sys.argv[2], sys.argv[3], sys.argv[4])) as held:
    print("held" if held else "busy", flush=True)
    sys.stdin.read()
"""


def test_the_daemon_looks_again_at_a_folder_another_process_holds_without_waiting_longer_each_time(tmp_path):
    drop = tmp_path / "drop"
    write_export(drop, OFFER, "8301", export_rows("h", 5))
    with SandboxServer(api_key=API_KEY) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(drop), settle=0))
        settings = load_settings(config, {"TEST_BRAZE_API_KEY": API_KEY})
        os.makedirs(settings.state.directory, mode=0o700)
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, settings.state.directory, UPSERT, OFFER, "8301"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment())
        try:
            assert holder.stdout.readline().strip() == "held"   # `process` by hand, say
            with structlog.testing.capture_logs() as logs:
                engine = Engine(settings).start()
                try:
                    retries = wait_for(lambda: (found := [line for line in list(logs)
                                                         if line["event"] == "workflow_retry_later"])[2:] and found,
                                       timeout=30, interval=0.05, what="three looks at the held folder")
                finally:
                    engine.drain(time.monotonic() + 10, threading.Event())
                    engine.close(timeout=5)
        finally:
            holder.kill()
            holder.wait(10)
    # scan_interval 0.5 s: each look 1.5 s after the last; a failure would double it each time
    assert [(line["postponed_times"], line["retry_in_seconds"]) for line in retries[:3]] == [(1, 1.5)] * 3
