"""kill -9 at several points of a 100,000-row export: nothing is lost, little is sent twice.

The bound on what is sent again: a sender thread acknowledges its batch in the state file before
it takes the next one, so at any moment at most one batch per sender thread has reached Braze
without being acknowledged. A kill therefore re-sends at most concurrency x max_objects_per_request
objects (8 x 75 = 600 here); batches merely queued for a sender were never sent.
"""

import time

import pytest

from daemon_helpers import API_KEY, DaemonProcess, local_source, status, wait_for, write_config
from delivery_helpers import MARKER, applied_ids, expected_profiles, export_rows, profile_mismatches, write_export
from rpi2braze.sandbox import Faults, SandboxServer

pytestmark = pytest.mark.slow

ROWS = 100_000
CONCURRENCY = 8
MAX_OBJECTS = 75
IN_FLIGHT_WINDOW = CONCURRENCY * MAX_OBJECTS
KILL_AT = (0.10, 0.40, 0.70)   # fractions of the export Braze has applied when the daemon is killed
WORKFLOW_ID = "9100"


def applied_objects(sandbox) -> int:
    return sum(record.object_count for record in sandbox.requests if 200 <= record.status < 300)


def test_sigkill_loses_nothing_and_resends_at_most_the_in_flight_window(tmp_path):
    drop = tmp_path / "drop"
    rows = export_rows("k", ROWS)
    write_export(drop, "Crash Offer", WORKFLOW_ID, rows)
    log_path = str(tmp_path / "daemon.log")
    kills = []
    # Ten milliseconds a request, so every kill lands with requests in flight.
    with SandboxServer(api_key=API_KEY, faults=Faults(latency_seconds=0.01)) as sandbox:
        config = write_config(str(tmp_path), sandbox.url,
                              local_source(str(drop), settle=30, extra=f"    marker_file: {MARKER}\n"),
                              braze_extra=f"  concurrency: {CONCURRENCY}\n  max_objects_per_request: {MAX_OBJECTS}\n")
        for fraction in KILL_AT:
            daemon = DaemonProcess(config, log_path).start()
            try:
                wait_for(lambda: applied_objects(sandbox) >= fraction * ROWS, timeout=60, interval=0.02,
                         what=f"{fraction:.0%} of the export applied")
                assert daemon.process.poll() is None, "the daemon ended before it was killed"
                daemon.kill()
                kills.append(time.monotonic())   # the sandbox stamps arrivals with this clock
            finally:
                daemon.stop_quietly()
        daemon = DaemonProcess(config, log_path).start()
        try:
            wait_for(lambda: any(record["status"] == "delivered" for record in status(config)), timeout=90,
                     interval=0.5, what="the export delivered")
            assert daemon.terminate() == 0
        finally:
            daemon.stop_quietly()
        records = sandbox.requests
        profiles = sandbox.store.all()

    assert profile_mismatches(profiles, expected_profiles(rows, "Crash Offer")) == []
    assert len(profiles) == ROWS
    (record,) = status(config)
    assert (record["status"], record["rows_delivered"], record["rows_rejected"]) == ("delivered", ROWS, 0)
    resent_after_each_kill = _resent_per_run(records, kills)[1:]
    assert all(resent <= IN_FLIGHT_WINDOW for resent in resent_after_each_kill), resent_after_each_kill
    assert sum(count - 1 for count in applied_ids(records).values()) == sum(resent_after_each_kill)


def _resent_per_run(records, kills: list[float]) -> list[int]:
    """For each run of the daemon (the kills divide them), how many objects it sent that an earlier run
    had already delivered."""
    seen: set[str] = set()
    resent = [0] * (len(kills) + 1)
    for record in sorted(records, key=lambda record: record.monotonic):
        if not 200 <= record.status < 300:
            continue
        run = sum(1 for killed in kills if record.monotonic > killed)
        for external_id in record.external_ids:
            resent[run] += external_id in seen
        seen.update(record.external_ids)
    return resent
