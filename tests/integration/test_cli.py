"""The command line as a user runs it: exit codes, messages, -c placement, the sandbox, progress."""

import csv
import glob
import json
import os
import pty
import shutil
import signal
import subprocess
import sys

import httpx
import pytest

from daemon_helpers import API_KEY, environment, local_source, wait_for, write_config
from rpi2braze.locks import WorkflowLocks
from rpi2braze.model import WorkflowKey
from rpi2braze.sandbox.faults import Faults
from rpi2braze.sandbox.server import SandboxServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UPSERT = "Braze Onboarding and Upsert"


def rpi2braze(*arguments, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "rpi2braze", *arguments], capture_output=True, text=True,
                          env=env or environment(), timeout=60, **kwargs)


@pytest.mark.parametrize("example", sorted(glob.glob(os.path.join(ROOT, "config", "*.yaml"))),
                         ids=os.path.basename)
def test_example_configs_pass_check_config(example, tmp_path):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "braze_api_key").write_text("key-from-credentials\n")
    env = {**environment(), "BRAZE_API_KEY": "k", "RPI2BRAZE_TOKEN": "t", "CREDENTIALS_DIRECTORY": str(credentials),
           "STATE_DIRECTORY": str(tmp_path / "state"), "SFTP_KEY_PASSPHRASE": "p", "FTP_PASSWORD": "p"}
    result = rpi2braze("check-config", "-c", example, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config OK")


def test_check_config_notes_a_local_source_folder_that_is_not_there(tmp_path):
    config = write_config(str(tmp_path), "http://127.0.0.1:9", local_source(str(tmp_path / "typo-drop")))
    result = rpi2braze("-c", config, "check-config")
    assert result.returncode == 0 and result.stdout.startswith("config OK")
    assert f"note: sources[0].path: {tmp_path / 'typo-drop'} is not a folder (yet?)" in result.stdout
    (tmp_path / "typo-drop").mkdir()
    assert "note:" not in rpi2braze("-c", config, "check-config").stdout


def test_check_config_reports_every_problem_at_once_with_exit_2(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("braze:\n  rest_endpoint: http://example.com\n  api_key: super-secret-value\n"
                      "  concurrency: 0\nstate: {path: x.db}\nsources:\n  - name: a\n    type: nfs\n    path: /x\n"
                      "    settle_secs: 3\n")
    result = rpi2braze("-c", str(config), "check-config")
    assert result.returncode == 2
    for expected in ("braze.rest_endpoint", "braze.concurrency", "sources[0].type", "sources[0].settle_secs"):
        assert expected in result.stderr
    assert "super-secret-value" not in result.stderr + result.stdout


def test_print_schema_is_json_schema():
    result = rpi2braze("check-config", "--print-schema")
    schema = json.loads(result.stdout)
    assert result.returncode == 0 and {"braze", "sources", "state"} <= set(schema["properties"])


def test_sandbox_command_serves_braze_and_stops_on_sigterm():
    process = subprocess.Popen([sys.executable, "-m", "rpi2braze", "sandbox", "--port", "0", "--api-key", "k"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment())
    try:
        url = process.stdout.readline().strip().split()[-1]
        answer = httpx.post(f"{url}/users/track", json={"attributes": [{"external_id": "a", "first_name": "A"}]},
                            headers={"Authorization": "Bearer k"})
        assert answer.status_code == 201
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def process_on_a_terminal(config: str, folder) -> tuple[int, bytes]:
    """Run `process FOLDER` with its stderr on a pseudo-terminal; its exit code and what it showed."""
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run([sys.executable, "-m", "rpi2braze", "-c", config, "process", str(folder)],
                                stdout=subprocess.PIPE, stderr=terminal, env=environment(), timeout=60)
        os.close(terminal)
        terminal = None
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        if terminal is not None:
            os.close(terminal)
    return result.returncode, shown


def write_small_export(tmp_path):
    folder = tmp_path / "exports" / UPSERT / "Offer" / "42"
    folder.mkdir(parents=True)
    (folder / "RPI_Export_42.txt").write_text("external_id,email\nok-1,one@example.com\nok-2,two@example.com\n")
    return folder


def test_process_shows_progress_on_a_terminal(tmp_path):
    folder = write_small_export(tmp_path)
    with SandboxServer(api_key=API_KEY) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "exports")))
        code, shown = process_on_a_terminal(config, folder)
    assert code == 0
    assert b"2 rows delivered, 0 rejected" in shown and b"rows/s" in shown


def test_process_on_a_terminal_leaves_a_workflow_another_process_delivers_alone(tmp_path):
    folder = write_small_export(tmp_path)
    with SandboxServer(api_key=API_KEY) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "exports")))
        (tmp_path / "state").mkdir(mode=0o700)
        locks = WorkflowLocks(str(tmp_path / "state"))   # as the daemon holds it while delivering
        try:
            with locks.hold(WorkflowKey("drop", UPSERT, "Offer", "42")) as held:
                assert held
                code, shown = process_on_a_terminal(config, folder)
        finally:
            locks.close()
        assert not sandbox.requests
    assert code == 1
    assert b"being delivered by another rpi2braze process" in shown and b"rows delivered" not in shown
    listed = rpi2braze("-c", config, "status", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []   # its record is the other process's


def test_status_and_retry_refuse_a_missing_state_file_without_creating_it(tmp_path):
    config = write_config(str(tmp_path), "http://127.0.0.1:9", local_source(str(tmp_path / "drop")))
    for arguments in (("status", "--json"), ("retry", "1")):
        result = rpi2braze("-c", config, *arguments)
        assert result.returncode == 1 and "no state file" in result.stderr
    assert not (tmp_path / "state").exists()


def delivered_workflow(tmp_path, workflow_id: str, channel: str = UPSERT):
    """A one-row workflow delivered by `process` (the sandbox is gone afterwards); its config and folder."""
    folder = tmp_path / "exports" / channel / "Offer" / workflow_id
    folder.mkdir(parents=True)
    (folder / f"RPI_Export_{workflow_id}.txt").write_text("external_id\nu-1\n")
    with SandboxServer(api_key=API_KEY) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "exports")))
        assert rpi2braze("-c", config, "process", str(folder)).returncode == 0
    return config, folder


def test_status_lists_delivered_workflows_with_rejected_rows_and_where_they_are(tmp_path):
    config, _ = delivered_workflow(tmp_path, "11")
    folder = tmp_path / "exports" / UPSERT / "Offer" / "12"
    folder.mkdir(parents=True)
    (folder / "RPI_Export_12.txt").write_text("external_id,email\nu-1,one@example.com\nu-2,not-an-email\n")
    with SandboxServer(api_key=API_KEY) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "exports")))
        processed = rpi2braze("-c", config, "process", str(folder))
        assert processed.returncode == 0
    table = rpi2braze("-c", config, "status").stdout
    assert "Offer/12  delivered 1, rejected 1" in table and "Offer/11" not in table
    [listed] = [line.split("rejected rows: ")[1] for line in table.splitlines() if "rejected rows: " in line]
    assert processed.stdout.strip().endswith(f"1 rows delivered, 1 rejected; rejected rows: {listed}")
    with open(listed, newline="", encoding="utf-8") as deadletter:
        assert [row["external_id"] for row in csv.DictReader(deadletter)] == ["u-2"]
    assert "Offer/11" in rpi2braze("-c", config, "status", "--all").stdout


def test_retry_needs_force_for_a_delivered_workflow(tmp_path):
    config, _ = delivered_workflow(tmp_path, "7")
    refused = rpi2braze("-c", config, "retry", "7")
    assert refused.returncode == 1 and "--force" in refused.stderr
    forced = rpi2braze("-c", config, "retry", "7", "--force")
    assert forced.returncode == 0 and "re-queued" in forced.stdout
    assert json.loads(rpi2braze("-c", config, "status", "--json").stdout)[0]["status"] == "pending"


def test_retry_refuses_a_folder_that_is_no_longer_where_the_daemon_looks(tmp_path):
    # Requeued, it would stay pending for good: the daemon only looks in the source's base.
    config, folder = delivered_workflow(tmp_path, "9")
    shutil.move(folder, tmp_path / "archived")
    refused = rpi2braze("-c", config, "retry", "9", "--force")
    assert refused.returncode == 1
    assert f"{folder} is not there" in refused.stderr and "move the folder back first" in refused.stderr
    assert json.loads(rpi2braze("-c", config, "status", "--json").stdout)[0]["status"] == "delivered"
    shutil.move(tmp_path / "archived", folder)
    assert rpi2braze("-c", config, "retry", "9", "--force").returncode == 0


@pytest.mark.parametrize("shell_sets_the_name", [True, False])
def test_retry_works_for_a_source_whose_name_comes_from_the_environment(tmp_path, shell_sets_the_name):
    folder = tmp_path / "exports" / UPSERT / "Offer" / "5"
    folder.mkdir(parents=True)
    (folder / "RPI_Export_5.txt").write_text("external_id\nu-1\n")
    with SandboxServer(api_key=API_KEY) as sandbox:
        config = write_config(str(tmp_path), sandbox.url,
                              local_source(str(tmp_path / "exports")).replace("name: drop", "name: ${SITE}-drop"))
        assert rpi2braze("-c", config, "process", str(folder), env={**environment(), "SITE": "prod"}).returncode == 0
    shell = {**environment(), "SITE": "prod"} if shell_sets_the_name else environment()
    retried = rpi2braze("-c", config, "retry", "5", "--force", env=shell)
    assert retried.returncode == 0 and "re-queued prod-drop:" in retried.stdout


def test_a_quarantined_folder_outside_every_source_is_sent_again_with_process_force(tmp_path):
    elsewhere = tmp_path / "elsewhere" / UPSERT / "Offer" / "77"
    elsewhere.mkdir(parents=True)
    (elsewhere / "RPI_Export_77.txt").write_text("first_name\nAnn\n")   # no external_id column
    with SandboxServer(api_key=API_KEY) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "exports")))
        assert rpi2braze("-c", config, "process", str(elsewhere)).returncode == 1
        again = rpi2braze("-c", config, "process", str(elsewhere))
        assert again.returncode == 1 and "after fixing it, run this again with --force" in again.stderr
        assert "retry" not in again.stderr   # the daemon never looks there
        (elsewhere / "RPI_Export_77.txt").write_text("external_id,first_name\nu-77,Ann\n")
        forced = rpi2braze("-c", config, "process", "--force", str(elsewhere))
        assert forced.returncode == 0 and "delivered" in forced.stdout
        assert "u-77" in sandbox.store.all()


def test_retry_of_an_id_two_workflows_share_names_them_and_takes_the_one_chosen(tmp_path):
    # RPI may use one Workflow ID in both channels: retry must not requeue both.
    delivered_workflow(tmp_path, "6")
    config, _ = delivered_workflow(tmp_path, "6", channel="Braze Append")
    refused = rpi2braze("-c", config, "retry", "6", "--force")
    assert refused.returncode == 1 and "2 workflows have ID '6'" in refused.stderr
    assert f"--source 'drop' --channel '{UPSERT}': {UPSERT}/Offer/6 (delivered)" in refused.stderr
    chosen = rpi2braze("-c", config, "retry", "6", "--force", "--channel", "Braze Append")
    assert chosen.returncode == 0 and "re-queued drop: Braze Append/Offer/6" in chosen.stdout
    statuses = {record["channel"]: record["status"] for record in json.loads(rpi2braze("-c", config, "status", "--json").stdout)}
    assert statuses == {UPSERT: "delivered", "Braze Append": "pending"}
    missing = rpi2braze("-c", config, "retry", "6", "--source", "other")
    assert missing.returncode == 1 and "no workflow '6' --source 'other' in" in missing.stderr


def test_status_tells_a_workflow_being_delivered_from_one_a_killed_process_left_in_progress(tmp_path):
    folder = tmp_path / "exports" / UPSERT / "Offer" / "13"
    folder.mkdir(parents=True)
    (folder / "RPI_Export_13.txt").write_text("external_id\n" + "".join(f"u-{n}\n" for n in range(400)))
    with SandboxServer(api_key=API_KEY, faults=Faults(error_rate=1.0)) as sandbox:   # never delivered
        config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "exports")))
        delivering = subprocess.Popen([sys.executable, "-m", "rpi2braze", "-c", config, "process", str(folder)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment())
        try:
            def listed():
                records = json.loads(rpi2braze("-c", config, "status", "--json").stdout or "[]")
                return records and records[0]["status"] == "in_progress" and records[0]
            assert wait_for(listed, 30, what="the workflow in progress")["being_delivered"] is True
            assert "no process is delivering it" not in rpi2braze("-c", config, "status").stdout
        finally:
            delivering.kill()
            delivering.wait(10)
        [record] = json.loads(rpi2braze("-c", config, "status", "--json").stdout)
        assert (record["status"], record["being_delivered"]) == ("in_progress", False)
        assert "no process is delivering it now: the one that was ended without finishing" in rpi2braze(
            "-c", config, "status").stdout


def test_forget_drops_a_workflow_whose_folder_is_gone_and_nothing_else(tmp_path):
    # A folder deleted before delivery would stay pending for good, its age alert firing.
    config, folder = delivered_workflow(tmp_path, "21")
    refused = rpi2braze("-c", config, "forget", "21")
    assert refused.returncode == 1 and "was delivered; its record is what keeps it from being sent again" in refused.stderr
    assert rpi2braze("-c", config, "retry", "21", "--force").returncode == 0   # pending now
    shutil.rmtree(folder)
    locks = WorkflowLocks(str(tmp_path / "state"))
    try:
        with locks.hold(WorkflowKey("drop", UPSERT, "Offer", "21")) as held:   # a process delivering it
            assert held
            busy = rpi2braze("-c", config, "forget", "21")
            assert busy.returncode == 1 and "is being delivered now" in busy.stderr
    finally:
        locks.close()
    forgot = rpi2braze("-c", config, "forget", "21")
    assert forgot.returncode == 0 and f"forgot drop: {UPSERT}/Offer/21 (was pending)" in forgot.stdout
    assert json.loads(rpi2braze("-c", config, "status", "--json").stdout) == []


def test_status_and_retry_work_without_the_services_secrets(tmp_path):
    # As an operator runs them in a shell: the key's variable (systemd's credentials) is not set.
    config, folder = delivered_workflow(tmp_path, "9")
    shell = {name: value for name, value in os.environ.items() if name != "TEST_BRAZE_API_KEY"}
    assert rpi2braze("-c", config, "check-config", env=shell).returncode == 2   # it needs the key
    listed = rpi2braze("-c", config, "status", "--json", env=shell)
    assert listed.returncode == 0 and [record["status"] for record in json.loads(listed.stdout)] == ["delivered"]
    retried = rpi2braze("-c", config, "retry", "9", "--force", env=shell)
    assert retried.returncode == 0 and "re-queued" in retried.stdout
    reader_gone = subprocess.Popen([sys.executable, "-m", "rpi2braze", "-c", config, "status", "--all"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=shell)
    reader_gone.stdout.close()                      # as `| head` does once it has its lines
    assert reader_gone.wait(30) == 1 and reader_gone.stderr.read() == b""
    reader_gone.stderr.close()


def test_process_says_when_a_folder_is_outside_every_source(tmp_path):
    elsewhere = tmp_path / "elsewhere" / UPSERT / "Offer" / "10"
    elsewhere.mkdir(parents=True)
    (elsewhere / "RPI_Export_10.txt").write_text("external_id\nu-1\n")
    with SandboxServer(api_key=API_KEY) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "exports")))
        result = rpi2braze("-c", config, "process", str(elsewhere))
    assert result.returncode == 0
    assert "is not below a configured local or poll source: read with the default reading settings" in result.stderr
    # the daemon never looks there: requeued, it would stay pending for good
    refused = rpi2braze("-c", config, "retry", "10", "--force")
    assert refused.returncode == 1 and "source 'local' is not in the config" in refused.stderr
    assert f"rpi2braze process --force '{elsewhere}'" in refused.stderr


def test_process_sends_a_workflow_delivered_before_only_with_force(tmp_path):
    _, folder = delivered_workflow(tmp_path, "3")
    archived = tmp_path / "archive" / UPSERT / "Offer" / "3"
    shutil.copytree(folder, archived)
    with SandboxServer(api_key=API_KEY) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "exports")))
        again = rpi2braze("-c", config, "process", str(folder))
        assert again.returncode == 0 and "already delivered" in again.stdout and "--force" in again.stdout
        copy = rpi2braze("-c", config, "process", str(archived))   # the same workflow, from its archived copy
        assert copy.returncode == 1
        assert (f"workflow {UPSERT}/Offer/3 was delivered from source 'drop' ({folder}); not sent again"
                in copy.stderr)
        assert sandbox.requests == []
        assert rpi2braze("-c", config, "process", "--force", str(archived)).returncode == 0
        assert rpi2braze("-c", config, "process", "--force", str(folder)).returncode == 0
        assert len(sandbox.requests) == 2
    assert {(record["status"], record["rows_delivered"]) for record in json.loads(
        rpi2braze("-c", config, "status", "--json").stdout)} == {("delivered", 1)}


def test_process_with_a_refused_key_exits_1_with_the_reason(tmp_path):
    folder = tmp_path / "exports" / UPSERT / "Offer" / "8"
    folder.mkdir(parents=True)
    (folder / "RPI_Export_8.txt").write_text("external_id\nu-1\n")
    with SandboxServer(api_key="another-key") as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "exports")))
        result = rpi2braze("-c", config, "process", str(folder))
        assert sandbox.store.all() == {}
    assert result.returncode == 1
    assert "pending" in result.stdout and "401" in result.stdout
    # the hint fits a command that gives up, not the daemon that waits for the key
    assert "fix braze.api_key and run the command again" in result.stderr
    assert "SIGHUP" not in result.stderr


@pytest.mark.parametrize("signum, bounded", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGTERM, True)],
                         ids=["ctrl-c", "sigterm", "timeout-as-the-readme-shows"])
def test_process_stopped_by_a_signal_during_an_outage_leaves_the_folder_pending_and_says_so(tmp_path, signum, bounded):
    # Braze answers nothing but 503: without a stop, `process` retries for ever.
    folder = tmp_path / "exports" / UPSERT / "Offer" / "9"
    folder.mkdir(parents=True)
    (folder / "RPI_Export_9.txt").write_text("external_id\nu-1\nu-2\n")
    bound = ["timeout", "--preserve-status", "3"] if bounded else []   # coreutils sends the SIGTERM
    with SandboxServer(api_key=API_KEY, faults=Faults(error_rate=1.0)) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "exports")))
        process = subprocess.Popen([*bound, sys.executable, "-m", "rpi2braze", "-c", config, "process", str(folder)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment())
        try:
            wait_for(lambda: sandbox.requests, timeout=30, interval=0.05, what="the first request")
            if not bounded:
                process.send_signal(signum)
            stdout, stderr = process.communicate(timeout=30)
        finally:
            process.kill()
    assert process.returncode == 128 + signum
    assert f"stopped by {signal.Signals(signum).name}; run the same command again" in stderr
    assert stdout.startswith("pending: ") and "0 rows delivered" in stdout
    (record,) = json.loads(rpi2braze("-c", config, "status", "--json").stdout)
    assert record["status"] == "pending" and record["reason"].startswith("interrupted: rpi2braze stopped")
