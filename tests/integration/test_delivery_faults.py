"""Delivery through a misbehaving Braze: every profile still arrives exactly as the exports say.

The real daemon, with its real backoff, against a sandbox answering 10% 5xx and 5% 429 (each
pausing every sender for Braze's one-second retry delay), dropping 3% of connections and
answering 1% so late that the request times out after Braze applied it.
"""

import pytest

from daemon_helpers import API_KEY, DaemonProcess, local_source, status, wait_for, write_config
from delivery_helpers import MARKER, applied_ids, expected_profiles, export_rows, profile_mismatches, write_export
from rpi2braze.sandbox import Faults, SandboxServer

pytestmark = pytest.mark.slow

# With this seed the first 100 requests include 5xx, 429s, drops and a slow success (the 34th
# request), so each kind of fault surely happens whatever the threads' timing. Six seconds is
# past the five-second request timeout daemon_helpers configures.
FAULTS = Faults(error_rate=0.10, rate_limited_rate=0.05, drop_rate=0.03, slow_rate=0.01, slow_seconds=6.0, seed=81)
FOLDERS = {"7001": "Spring", "7002": "Summer", "7003": "Autumn"}
USERS_PER_FOLDER = 2000
REPEATS = 2   # each user twice, 2000 rows apart: the two rows travel in different batches


def test_every_profile_arrives_exactly_despite_faults(tmp_path):
    drop = tmp_path / "drop"
    exports = {workflow_id: export_rows(f"w{workflow_id}", USERS_PER_FOLDER, REPEATS) for workflow_id in FOLDERS}
    expected = {}
    with SandboxServer(api_key=API_KEY, faults=FAULTS) as sandbox:
        config = write_config(str(tmp_path), sandbox.url,
                              local_source(str(drop), settle=30, extra=f"    marker_file: {MARKER}\n"),
                              extra="workers: 3\n")
        daemon = DaemonProcess(config, str(tmp_path / "daemon.log"))
        try:
            daemon.start()
            for workflow_id, offer in FOLDERS.items():
                write_export(drop, offer, workflow_id, exports[workflow_id])
                expected.update(expected_profiles(exports[workflow_id], offer))
            wait_for(lambda: _all_delivered(config), timeout=100, interval=0.5, what="every folder delivered")
            assert daemon.terminate() == 0
        finally:
            daemon.stop_quietly()
        records = sandbox.requests
        profiles = sandbox.store.all()

    assert profile_mismatches(profiles, expected) == []
    assert len(profiles) == len(expected)
    for record in status(config):
        assert (record["rows_delivered"], record["rows_rejected"]) == (USERS_PER_FOLDER * REPEATS, 0), record
    faults = {record.fault for record in records}
    assert {"error", "rate_limited", "drop"} <= faults
    assert {record.status for record in records} >= {201, 429} and any(record.status >= 500 for record in records)
    assert any(count > 1 for count in applied_ids(records).values()), "no request timed out after being applied"


def _all_delivered(config) -> bool:
    records = status(config)
    return len(records) == len(FOLDERS) and all(record["status"] == "delivered" for record in records)
