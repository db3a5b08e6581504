"""`process` run by hand while the daemon delivers the same folder sends nothing twice."""

import signal
import subprocess
import sys

from daemon_helpers import API_KEY, cli, environment, local_source, wait_for, wait_status, write_config
from delivery_helpers import UPSERT, export_rows, write_export
from rpi2braze.sandbox import Faults, SandboxServer

OFFER = "Locked Offer"
USERS = 3000


def test_process_refuses_a_folder_the_daemon_is_delivering(tmp_path):
    drop = tmp_path / "drop"
    folder = write_export(drop, OFFER, "8101", export_rows("l", USERS))
    # Slow answers keep the daemon busy with the folder while `process` is tried.
    with SandboxServer(api_key=API_KEY, faults=Faults(latency_seconds=0.05)) as sandbox:
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
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        sent = [external_id for request in sandbox.requests for external_id in request.external_ids]
    assert record["rows_delivered"] == USERS
    assert len(sent) == len(set(sent)) == USERS      # every user once: nothing from the second process
