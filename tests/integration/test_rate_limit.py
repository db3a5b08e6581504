"""The shared rate limit, seen from Braze's side: the sandbox's log of arrival times.

One limiter per workspace serves every sender and every folder, so several folders delivered at
once still never pass `rate_limit` in any one-second window. Braze's X-RateLimit-Remaining and
X-RateLimit-Reset headers tighten it further when Braze allows less than the configuration says.
"""

import signal
import threading

import orjson
import pytest

from daemon_helpers import API_KEY, DaemonProcess, local_source, status, wait_for, write_config
from delivery_helpers import MARKER, export_rows, write_export
from rpi2braze.model import Batch, DeliveryResult, RawRow, WorkflowKey
from rpi2braze.ratelimit import RateLimiter
from rpi2braze.sandbox import SandboxServer
from rpi2braze.secret import Secret
from rpi2braze.sender import SenderPool
from rpi2braze.settings import BrazeSettings

pytestmark = pytest.mark.slow

LIMIT = 20
FOLDERS = {"8001": "Spring", "8002": "Summer", "8003": "Autumn"}
USERS_PER_FOLDER = 3000


def busiest_window(arrivals: list[float], seconds: float = 1.0) -> int:
    """The most arrivals in any window of `seconds` (each window starting at an arrival)."""
    arrivals = sorted(arrivals)
    most, first = 0, 0
    for last, arrived in enumerate(arrivals):
        while arrived - arrivals[first] >= seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


@pytest.mark.parametrize("arrivals, expected", [
    ([], 0), ([0.0], 1), ([0.0, 0.5, 0.99], 3), ([0.0, 0.5, 1.0], 2), ([0.0, 1.0, 1.1, 1.2, 3.0], 3),
])
def test_busiest_window_counts_what_a_one_second_window_holds(arrivals, expected):
    assert busiest_window(arrivals) == expected


def test_several_folders_together_never_pass_the_limit(tmp_path):
    drop = tmp_path / "drop"
    with SandboxServer(api_key=API_KEY) as sandbox:
        config = write_config(str(tmp_path), sandbox.url,
                              local_source(str(drop), settle=30, extra=f"    marker_file: {MARKER}\n"),
                              braze_extra=f"  rate_limit: {{requests: {LIMIT}, per_seconds: 1}}\n",
                              extra="workers: 3\n")
        daemon = DaemonProcess(config, str(tmp_path / "daemon.log"))
        try:
            daemon.start()
            for workflow_id, offer in FOLDERS.items():
                write_export(drop, offer, workflow_id, export_rows(f"r{workflow_id}", USERS_PER_FOLDER))
            wait_for(lambda: _all_delivered(config), timeout=60, interval=0.5, what="every folder delivered")
            assert daemon.terminate() == 0
        finally:
            daemon.stop_quietly()
        records = [record for record in sandbox.requests if record.path == "/users/track"]
        profiles = len(sandbox.store.all())

    assert profiles == len(FOLDERS) * USERS_PER_FOLDER
    assert len(records) > 5 * LIMIT
    assert busiest_window([record.monotonic for record in records]) <= LIMIT
    assert _folders_sharing_a_window(records) == set(FOLDERS), "the folders were not delivered at the same time"


def _all_delivered(config) -> bool:
    records = status(config)
    return len(records) == len(FOLDERS) and all(record["status"] == "delivered" for record in records)


def _folders_sharing_a_window(records) -> set[str]:
    """The folders (by external_id prefix) whose requests reached Braze within one second of each other."""
    folders = [(record.monotonic, record.external_ids[0].split("-")[0][1:]) for record in records]
    shared = set()
    for arrived, folder in folders:
        near = {other for when, other in folders if abs(when - arrived) < 1.0}
        if len(near) > 1:
            shared |= near
    return shared


@pytest.mark.parametrize("reset_style", ["epoch", "delta"])
def test_braze_headers_tighten_a_limit_set_too_high(reset_style):
    key = WorkflowKey("drop", "Braze Onboarding and Upsert", "Offer", "9")
    batches = [Batch(key, number, number % 4, (orjson.dumps({"external_id": f"h{number}", "first_name": "H"}),),
                     ((RawRow(number + 2, (f"h{number}",)),),), 60) for number in range(30)]
    done = threading.Semaphore(0)
    outcomes = []

    def on_done(batch, outcome):
        outcomes.append(outcome)
        done.release()

    with SandboxServer(api_key=API_KEY, rate_limit=(10, 1.0), rate_limit_reset=reset_style) as sandbox:
        settings = BrazeSettings(rest_endpoint=sandbox.url, api_key=Secret(API_KEY), allow_insecure_http=True,
                                 timeout_seconds=5, concurrency=4)
        pool = SenderPool(settings, RateLimiter(1000, 1), threading.Event())
        try:
            for batch in batches:
                pool.submit(batch, on_done)
            for _ in batches:
                assert done.acquire(timeout=30)
        finally:
            pool.close()
        statuses = [record.status for record in sandbox.requests]

    assert all(isinstance(outcome, DeliveryResult) and outcome.rows_delivered == 1 for outcome in outcomes)
    assert statuses.count(201) == 30
    assert statuses.count(429) <= 1, f"Braze's remaining-requests header was not heeded: {statuses}"


def test_a_reload_does_not_open_a_fresh_window_beside_the_last_one(tmp_path):
    limit, window = 6, 5.0
    drop = tmp_path / "drop"
    with SandboxServer(api_key=API_KEY) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(drop), settle=0.5),
                              braze_extra=f"  rate_limit: {{requests: {limit}, per_seconds: {window}}}\n"
                                          "  max_objects_per_request: 1\n")
        daemon = DaemonProcess(config, str(tmp_path / "daemon.log"))
        try:
            daemon.start()
            write_export(drop, "Spring", "8101", export_rows("q", 2 * limit))
            wait_for(lambda: _tracked(sandbox) >= limit, timeout=30, interval=0.05, what="a window's requests")
            daemon.process.send_signal(signal.SIGHUP)   # the same config: the same workspace and limit
            wait_for(lambda: "reload_done" in daemon.log(), timeout=30, what="reload_done")
            wait_for(lambda: len(sandbox.store.all()) == 2 * limit, timeout=60, interval=0.2, what="every user")
            assert daemon.terminate() == 0
        finally:
            daemon.stop_quietly()
        arrivals = [record.monotonic for record in sandbox.requests if record.path == "/users/track"]
    assert busiest_window(arrivals, window) <= limit


def _tracked(sandbox) -> int:
    return sum(1 for record in sandbox.requests if record.path == "/users/track")
