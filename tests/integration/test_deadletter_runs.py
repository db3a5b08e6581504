"""A dead-letter file holds one delivery run's rejections: a run that starts from batch 0 (after
`retry --force`, or after the files changed under a half-delivered workflow) sets the earlier
run's file aside as `.previous`, and the real commands show the counts the file holds."""

import csv
import os
import re
import signal
import subprocess
import sys

from daemon_helpers import API_KEY, cli, environment, local_source, status, wait_for, write_config
from rpi2braze.sandbox import Faults, SandboxServer

UPSERT = "Braze Onboarding and Upsert"
WORKFLOW_ID = "42"
DATA_FILE = f"RPI_Export_{WORKFLOW_ID}.txt"


def export(folder, rows: list[tuple[str, str]]) -> None:
    lines = ["external_id,email,Output Name", *(f"{user},{email},A" for user, email in rows)]
    (folder / DATA_FILE).write_text("\n".join(lines) + "\n")


def deadletter_rows(path: str) -> list[tuple[str, str, str]]:
    """(line, external_id, email) of each rejected row in the file at `path`."""
    with open(path, newline="", encoding="utf-8") as stream:
        return [(row["line"], row["external_id"], row["email"]) for row in csv.DictReader(stream)]


def shown_file(config: str) -> str:
    """The dead-letter file `status` names for the workflow."""
    [path] = re.findall(r"rejected rows: (\S+)", cli(config, "status").stdout)
    return path


def process(config: str, folder) -> subprocess.CompletedProcess:
    result = cli(config, "process", str(folder))
    assert result.returncode == 0, result.stderr
    return result


def test_a_forced_rerun_sets_the_earlier_runs_file_aside_and_writes_only_its_own(tmp_path):
    folder = tmp_path / "exports" / UPSERT / "Offer" / WORKFLOW_ID
    folder.mkdir(parents=True)
    export(folder, [("d1", "bad-one"), ("d2", "d2@example.com")])
    with SandboxServer(api_key=API_KEY) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "exports")))
        process(config, folder)
        path = shown_file(config)
        assert deadletter_rows(path) == [("2", "d1", "bad-one")]

        export(folder, [("d1", "d1@example.com"), ("d2", "bad-two")])   # fixed at the source, another row broken
        assert cli(config, "retry", WORKFLOW_ID, "--force").returncode == 0
        second = process(config, folder)
        [record] = status(config)
        assert (record["rows_delivered"], record["rows_rejected"]) == (1, 1)
        assert shown_file(config) == path
        assert deadletter_rows(path) == [("3", "d2", "bad-two")]
        assert deadletter_rows(path + ".previous") == [("2", "d1", "bad-one")]
        [warning] = [line for line in second.stderr.splitlines() if "deadletter_set_aside" in line]
        assert path in warning and path + ".previous" in warning

        export(folder, [("d1", "d1@example.com"), ("d2", "d2@example.com")])   # a third run rejects nothing
        assert cli(config, "retry", WORKFLOW_ID, "--force").returncode == 0
        process(config, folder)
        assert [(r["rows_delivered"], r["rows_rejected"]) for r in status(config)] == [(2, 0)]
        assert sandbox.store.all()["d2"]["email"] == "d2@example.com"
    assert not os.path.exists(path)   # no stale rows for the operator to resend over newer values
    assert deadletter_rows(path + ".previous.1") == [("3", "d2", "bad-two")]
    assert deadletter_rows(path + ".previous") == [("2", "d1", "bad-one")]


def test_files_changed_under_a_half_delivered_workflow_restart_it_with_a_new_file(tmp_path):
    folder = tmp_path / "exports" / UPSERT / "Offer" / WORKFLOW_ID
    folder.mkdir(parents=True)
    good = [(f"g{number}", f"g{number}@example.com") for number in range(6)]
    export(folder, [("d1", "bad-one"), *good])
    # One object a request, half a second each: a stop after the first answer leaves most of it undelivered.
    with SandboxServer(api_key=API_KEY, faults=Faults(latency_seconds=0.5)) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "exports")),
                              braze_extra="  concurrency: 1\n  max_objects_per_request: 1\n")
        stopped = subprocess.Popen([sys.executable, "-m", "rpi2braze", "-c", config, "process", str(folder)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment())
        try:
            wait_for(lambda: sandbox.requests, timeout=30, interval=0.05, what="the first request")
            stopped.send_signal(signal.SIGTERM)
            assert stopped.wait(30) == 128 + signal.SIGTERM
        finally:
            if stopped.poll() is None:
                stopped.kill()
                stopped.wait(10)
        [record] = status(config)
        assert (record["status"], record["rows_rejected"]) == ("pending", 1)
        assert record["rows_delivered"] < len(good)
        path = shown_file(config)
        assert deadletter_rows(path) == [("2", "d1", "bad-one")]

        # The export is written again, differently: line 2 is rejected again, for another value.
        export(folder, [("d1", "bad-again"), ("d2", "bad-two"), *good])
        second = process(config, folder)
    assert "workflow_restarted" in second.stderr
    [record] = status(config)
    assert (record["status"], record["rows_delivered"], record["rows_rejected"]) == ("delivered", 6, 2)
    assert deadletter_rows(path) == [("2", "d1", "bad-again"), ("3", "d2", "bad-two")]
    assert deadletter_rows(path + ".previous") == [("2", "d1", "bad-one")]
