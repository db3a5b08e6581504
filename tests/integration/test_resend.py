"""`rpi2braze resend FILE`: the rows of a dead-letter file, fixed by hand, delivered as the real
command does it, against the sandbox."""

import csv
import os
import re
import subprocess
import sys

import pytest

from daemon_helpers import API_KEY, environment, local_source, status, write_config
from rpi2braze.model import WorkflowKey
from rpi2braze.sandbox.server import SandboxServer
from rpi2braze.state import StateStore

UPSERT = "Braze Onboarding and Upsert"
EXPORT = ("external_id,email,phone,Loyalty Tier\n"
          "ok-1,one@example.com,+14155550101,Gold\n"
          "bad-1,not-an-email,+14155550102,Silver\n"
          "bad-2,two@example.com,12,Bronze\n")


def rpi2braze(config, *arguments):
    return subprocess.run([sys.executable, "-m", "rpi2braze", "-c", config, *arguments], capture_output=True,
                          text=True, env=environment(), timeout=60)


@pytest.fixture
def delivered_with_rejections(tmp_path):
    """A sandbox, a config, and a workflow delivered with two rows dead-lettered: (sandbox, config, file)."""
    folder = tmp_path / "exports" / UPSERT / "Spring" / "42"
    folder.mkdir(parents=True)
    (folder / "RPI_Export_42.txt").write_text(EXPORT)
    with SandboxServer(api_key=API_KEY) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "exports")))
        assert rpi2braze(config, "process", str(folder)).returncode == 0
        [record] = status(config)
        assert (record["rows_delivered"], record["rows_rejected"]) == (1, 2)
        yield sandbox, config, deadletter_file(config)


def deadletter_file(config: str, workflow_id: str = "42") -> str:
    shown = rpi2braze(config, "status").stdout
    paths = re.findall(r"rejected rows: (\S+)", shown)
    [path] = [path for path in paths if f"__{workflow_id}." in os.path.basename(path)]
    return path


def fix(path: str, replacements: dict[str, str], saved_as: str = "as written") -> None:
    """Edit the file as an operator would: change values; maybe save it as a spreadsheet does."""
    with open(path, encoding="utf-8", newline="") as stream:
        records = [[replacements.get(value, value) for value in record] for record in csv.reader(stream)]
    if saved_as == "as written":
        with open(path, "w", encoding="utf-8", newline="") as stream:
            csv.writer(stream).writerows(records)
    else:   # a spreadsheet in a locale whose list separator is ";", saving as "CSV UTF-8"
        with open(path, "w", encoding="utf-8-sig", newline="") as stream:
            csv.writer(stream, delimiter=";").writerows(records)


@pytest.mark.parametrize("saved_as", ["as written", "by a spreadsheet"])
def test_fixed_rows_reach_braze_without_the_files_own_three_columns(delivered_with_rejections, saved_as):
    sandbox, config, path = delivered_with_rejections
    fix(path, {"not-an-email": "one.fixed@example.com", "12": "+14155550103"}, saved_as)
    result = rpi2braze(config, "resend", path)
    assert result.returncode == 0, result.stderr
    assert "delivered" in result.stdout and "2 rows delivered, 0 rejected" in result.stdout
    profiles = sandbox.store.all()
    assert profiles["bad-1"]["email"] == "one.fixed@example.com"
    assert profiles["bad-2"]["phone"] == "+14155550103"
    for user in ("bad-1", "bad-2"):
        custom = profiles[user]["custom_attributes"]
        assert custom["rpi_offers"] == ["Spring"]
        assert set(custom["rpi_cdp_attributes"]) == {"loyalty_tier"}   # no file, line or reason
    resent = [record for record in status(config) if record["workflow_id"] != "42"]
    assert [(record["status"], record["rows_delivered"], record["rows_rejected"]) for record in resent] == [
        ("delivered", 2, 0)]
    assert re.fullmatch(r"42\.resend-[0-9a-f]{12}", resent[0]["workflow_id"])
    assert os.listdir(os.path.join(os.path.dirname(path), "..", "..", "resend", UPSERT, "Spring")) == []


def test_the_same_file_resent_again_sends_nothing(delivered_with_rejections):
    sandbox, config, path = delivered_with_rejections
    fix(path, {"not-an-email": "one.fixed@example.com", "12": "+14155550103"})
    assert rpi2braze(config, "resend", path).returncode == 0
    requests = len(sandbox.requests)
    again = rpi2braze(config, "resend", path)
    assert again.returncode == 0 and "already delivered" in again.stdout
    assert len(sandbox.requests) == requests


def test_rows_still_bad_go_to_the_resent_workflows_own_file_which_can_be_resent_in_turn(delivered_with_rejections):
    sandbox, config, path = delivered_with_rejections
    fix(path, {"not-an-email": "one.fixed@example.com"})
    first = rpi2braze(config, "resend", path)
    assert first.returncode == 0 and "1 rows delivered, 1 rejected" in first.stdout
    assert "bad-2" not in sandbox.store.all()
    [resent_id] = [record["workflow_id"] for record in status(config) if record["workflow_id"] != "42"]
    again = deadletter_file(config, resent_id)
    with open(again, encoding="utf-8") as stream:
        assert "bad-2" in stream.read()
    fix(again, {"12": "+14155550103"})
    second = rpi2braze(config, "resend", again)
    assert second.returncode == 0 and "1 rows delivered, 0 rejected" in second.stdout
    assert sandbox.store.all()["bad-2"]["phone"] == "+14155550103"
    ids = {record["workflow_id"] for record in status(config)}
    assert len(ids) == 3 and all(re.fullmatch(r"42(\.resend-[0-9a-f]{12})?", id_) for id_ in ids)


@pytest.mark.parametrize("make, reason", [
    (lambda path, tmp: path, None),
    (lambda path, tmp: _copy(path, tmp / "fixed.csv"), "no workflow in .* has a dead-letter file of that name"),
    (lambda path, tmp: _write(tmp / os.path.basename(path), "external_id\nbad-1\n"),
     "not a dead-letter file .*begin with file,line,reason"),
    (lambda path, tmp: _write(tmp / os.path.basename(path), "file,line,reason,external_id\n"), "holds no rows"),
    (lambda path, tmp: str(tmp / "missing" / os.path.basename(path)), "cannot read"),
    (lambda path, tmp: _copy(path, tmp / (os.path.basename(path) + ".previous")), "an earlier delivery run's file"),
], ids=["unchanged", "renamed", "not-a-deadletter-file", "no-rows", "missing", "earlier-run"])
def test_a_file_resend_cannot_use_is_refused_with_the_reason_and_nothing_sent(
        delivered_with_rejections, tmp_path, make, reason):
    sandbox, config, path = delivered_with_rejections
    requests = len(sandbox.requests)
    given = make(path, tmp_path)
    result = rpi2braze(config, "resend", given)
    if reason is None:   # the file as rpi2braze wrote it: resent, and rejected again for the same reasons
        assert result.returncode == 0 and "0 rows delivered, 2 rejected" in result.stdout
        return
    assert result.returncode == 1
    assert re.search(reason, result.stderr), result.stderr
    assert len(sandbox.requests) == requests


def _copy(source: str, target) -> str:
    with open(source, encoding="utf-8") as stream:
        return _write(target, stream.read())


def _write(target, text: str) -> str:
    target.write_text(text)
    return str(target)


def test_the_file_of_a_workflow_still_being_delivered_is_not_resent(delivered_with_rejections):
    # Its file may still grow; a resend now and another later would send rows twice.
    sandbox, config, path = delivered_with_rejections
    assert rpi2braze(config, "retry", "42", "--force").returncode == 0
    requests = len(sandbox.requests)
    refused = rpi2braze(config, "resend", path)
    assert refused.returncode == 1 and "its workflow is pending, still being delivered" in refused.stderr
    assert len(sandbox.requests) == requests


def test_retry_of_a_resent_workflow_says_to_resend_again(delivered_with_rejections):
    # The daemon never looks at source "resend": requeued, it would stay pending for good.
    sandbox, config, path = delivered_with_rejections
    fix(path, {"not-an-email": "one.fixed@example.com", "12": "+14155550103"})
    assert rpi2braze(config, "resend", path).returncode == 0
    [resent] = [record["workflow_id"] for record in status(config) if record["workflow_id"] != "42"]
    refused = rpi2braze(config, "retry", resent, "--force")
    assert refused.returncode == 1 and "run `rpi2braze resend FILE` again" in refused.stderr
    assert {record["status"] for record in status(config)} == {"delivered"}


def test_after_a_forced_rerun_the_same_fixes_are_resent(delivered_with_rejections):
    # The rerun rejected the same rows again: its dead-letter file, fixed alike, is byte for byte the
    # earlier one, but its rows are this run's, so they are sent.
    sandbox, config, path = delivered_with_rejections
    fixes = {"not-an-email": "one.fixed@example.com", "12": "+14155550103"}
    with open(path, "rb") as stream:
        unfixed = stream.read()
    fix(path, fixes)
    assert rpi2braze(config, "resend", path).returncode == 0
    assert rpi2braze(config, "retry", "42", "--force").returncode == 0
    folder = os.path.join(os.path.dirname(config), "exports", UPSERT, "Spring", "42")
    assert rpi2braze(config, "process", folder).returncode == 0
    with open(path, "rb") as stream:
        assert stream.read() == unfixed
    fix(path, fixes)
    requests = len(sandbox.requests)
    again = rpi2braze(config, "resend", path)
    assert again.returncode == 0 and "2 rows delivered, 0 rejected" in again.stdout
    assert len(sandbox.requests) > requests


def test_a_changed_file_waits_for_an_unfinished_resend_to_be_forgotten(delivered_with_rejections, tmp_path):
    sandbox, config, path = delivered_with_rejections
    unfinished = WorkflowKey("resend", UPSERT, "Spring", "42.resend-0123456789ab")   # cut short, an earlier file
    with StateStore(str(tmp_path / "state" / "state.db")) as state:
        state.record_seen(unfinished, "x")
    copy = tmp_path / "state" / "resend" / UPSERT / "Spring" / unfinished.workflow_id
    copy.mkdir(parents=True)
    (copy / "RPI_Export_resend.txt").write_text("external_id\nbad-1\n")
    fix(path, {"not-an-email": "one.fixed@example.com", "12": "+14155550103"})
    refused = rpi2braze(config, "resend", path)
    assert refused.returncode == 1 and "an earlier resend of this workflow's rows, 42.resend-0123456789ab" in refused.stderr
    forgot = rpi2braze(config, "forget", unfinished.workflow_id)
    assert forgot.returncode == 0 and "and its copy of the rows" in forgot.stdout and not copy.exists()
    assert rpi2braze(config, "resend", path).returncode == 0
