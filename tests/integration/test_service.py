"""The daemon as a service: RPI's Post-Execution call, sd_notify, SIGHUP reload, SIGTERM mid-delivery,
/metrics and `retry`, each against a real `rpi2braze run` process and the Braze sandbox."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from daemon_helpers import API_KEY, DaemonProcess, cli, local_source, status, wait_for, wait_status, write_config
from rpi2braze.config import load_settings
from rpi2braze.engine import Engine
from rpi2braze.errors import SourceUnavailable
from rpi2braze.sandbox.server import Faults, SandboxServer
from samples import RPI_POST_EXECUTION

pytestmark = pytest.mark.slow

UPSERT = "Braze Onboarding and Upsert"
RPI_BODY = {**RPI_POST_EXECUTION, "offerName": "Spring Offer", "channelName": UPSERT}


def export(path, rows: int, prefix: str = "u") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("external_id,first_name,Output Name\n")
        handle.writelines(f"{prefix}-{n},Name{n},Gold\n" for n in range(rows))


def http_port(daemon: DaemonProcess) -> int:
    return next(event["http"] for event in daemon.events() if event.get("event") == "daemon_started")


def test_rpi_post_execution_queues_the_folder_without_waiting_to_settle(tmp_path, sandbox, running):
    drop = tmp_path / "drop"
    config = write_config(str(tmp_path), sandbox.url, local_source(str(drop), settle=3600),
                          extra="http:\n  listen: 127.0.0.1:0\n  token: s3cret-token\n")
    export(drop / UPSERT / "Spring Offer" / "8828" / "RPI_Export_5719.txt", 10)
    daemon = running(config)
    url = f"http://127.0.0.1:{http_port(daemon)}/rpi/post-execution"

    assert httpx.post(url, json=RPI_BODY).status_code == 401
    hostile = httpx.post(url, json={**RPI_BODY, "offerName": "../../etc"}, headers={"Authorization": "Bearer s3cret-token"})
    assert hostile.status_code == 400
    answer = httpx.post(url, json=RPI_BODY, headers={"Authorization": "Bearer s3cret-token"})
    assert answer.status_code == 202, answer.text
    wait_status(config, "8828", "delivered", timeout=20)   # settle_seconds is an hour: only the call explains it
    assert len(sandbox.store.all()) == 10
    metrics = httpx.get(f"http://127.0.0.1:{http_port(daemon)}/metrics").text
    assert "rpi2braze_rows_total{outcome=\"delivered\"} 10.0" in metrics
    assert httpx.get(f"http://127.0.0.1:{http_port(daemon)}/healthz").status_code == 200
    assert "s3cret-token" not in daemon.log()
    assert daemon.terminate() == 0


def test_sd_notify_ready_status_watchdog_and_stopping(tmp_path, sandbox, running):
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(15)
    try:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "drop")))
        daemon = running(config, NOTIFY_SOCKET=address, WATCHDOG_USEC="2000000")
        messages = []
        while not {"READY=1", "WATCHDOG=1"} <= set(messages) or not any(m.startswith("STATUS=") for m in messages):
            messages.extend(listener.recv(4096).decode().splitlines())
        assert messages[0] == "READY=1"
        daemon.process.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in messages:
            messages.extend(listener.recv(4096).decode().splitlines())
        assert daemon.wait(30) == 0
    finally:
        listener.close()


def test_sighup_applies_a_good_config_and_refuses_a_broken_one(tmp_path, sandbox, running):
    first, second = tmp_path / "first", tmp_path / "second"
    config = write_config(str(tmp_path), sandbox.url, local_source(str(first), settle=0.5))
    daemon = running(config)
    export(first / UPSERT / "Offer" / "1" / "RPI_Export_1.txt", 5, "one")
    wait_status(config, "1", "delivered")

    good = open(config).read().replace(str(first), str(second))
    with open(config, "w") as handle:
        handle.write(good)
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload_done" in daemon.log(), 20, what="reload_done")
    export(second / UPSERT / "Offer" / "2" / "RPI_Export_2.txt", 5, "two")
    wait_status(config, "2", "delivered")

    with open(config, "w") as handle:
        handle.write(good.replace("settle_seconds: 0.5", "settle_seconds: -1\n    bogus_key: 1"))
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload_refused" in daemon.log(), 20, what="reload_refused")
    refused = next(e for e in daemon.events() if e.get("event") == "reload_refused")
    assert any("settle_seconds" in problem for problem in refused["problems"])
    assert any("bogus_key" in problem for problem in refused["problems"])
    export(second / UPSERT / "Offer" / "3" / "RPI_Export_3.txt", 5, "three")
    # the old (good) config still runs; `status` would refuse the broken file, so ask the sandbox
    wait_for(lambda: "three-4" in sandbox.store.all(), 20, what="delivery under the old config")
    assert daemon.process.poll() is None
    assert daemon.terminate() == 0


def test_sigterm_mid_delivery_loses_nothing(tmp_path, running):
    rows = 3000
    with SandboxServer(api_key=API_KEY, faults=Faults(latency_seconds=0.05)) as sandbox:
        drop = tmp_path / "drop"
        config = write_config(str(tmp_path), sandbox.url, local_source(str(drop), settle=0.5),
                              braze_extra="  concurrency: 2\n")
        daemon = running(config)
        export(drop / UPSERT / "Offer" / "9" / "RPI_Export_9.txt", rows)
        wait_for(lambda: len(sandbox.requests) >= 3, 30, 0.05, "delivery to start")
        assert daemon.terminate(timeout=30) == 0
        record = next(r for r in status(config) if r["workflow_id"] == "9")
        assert record["status"] != "delivered"
        assert 0 < record["rows_delivered"] < rows
        running(config)
        wait_status(config, "9", "delivered", timeout=60)
        assert sorted(sandbox.store.all()) == sorted(f"u-{n}" for n in range(rows))
        assert next(r for r in status(config) if r["workflow_id"] == "9")["rows_delivered"] == rows


def test_retry_requeues_a_quarantined_workflow(tmp_path, sandbox, running):
    drop = tmp_path / "drop"
    config = write_config(str(tmp_path), sandbox.url, local_source(str(drop), settle=0.5))
    folder = drop / UPSERT / "Offer" / "5"
    folder.mkdir(parents=True)
    (folder / "RPI_Export_5.txt").write_text("first_name\nAnn\n")
    daemon = running(config)
    quarantined = wait_status(config, "5", "quarantined")
    assert "external_id" in quarantined["reason"]
    table = cli(config, "status")
    assert "quarantined" in table.stdout and "external_id" in table.stdout

    shutil.rmtree(folder)
    export(folder / "RPI_Export_5.txt", 3, "fixed")
    retried = cli(config, "retry", "5")
    assert retried.returncode == 0 and "re-queued" in retried.stdout
    wait_status(config, "5", "delivered")
    assert sorted(sandbox.store.all()) == ["fixed-0", "fixed-1", "fixed-2"]
    assert cli(config, "retry", "nope").returncode == 1
    assert daemon.terminate() == 0


def test_a_second_sigterm_stops_at_once_and_loses_nothing(tmp_path, running):
    rows = 600
    with SandboxServer(api_key=API_KEY, faults=Faults(latency_seconds=60)) as sandbox:
        drop = tmp_path / "drop"
        # a warm stop would wait for the requests in flight: up to timeout_seconds (30) + 5 s
        config = write_config(str(tmp_path), sandbox.url, local_source(str(drop), settle=0.5),
                              braze_extra="  concurrency: 2\n")
        with open(config) as handle:
            text = handle.read().replace("timeout_seconds: 5", "timeout_seconds: 30")
        with open(config, "w") as handle:
            handle.write(text)
        daemon = running(config)
        export(drop / UPSERT / "Offer" / "11" / "RPI_Export_11.txt", rows)
        wait_for(lambda: "folder_queued" in daemon.log(), 30, 0.1, "the folder to be queued")
        time.sleep(1)  # requests are now in flight, each answered after 60 s
        daemon.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "daemon_stopping" in daemon.log(), 10, 0.1, "the warm stop to begin")
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.wait(20) == 0            # far sooner than the 35 s a warm stop would wait
        assert next(r for r in status(config) if r["workflow_id"] == "11")["status"] != "delivered"
    with SandboxServer(api_key=API_KEY) as fast:
        config = write_config(str(tmp_path), fast.url, local_source(str(drop), settle=0.5))
        running(config)
        wait_status(config, "11", "delivered", timeout=60)
        assert sorted(fast.store.all()) == sorted(f"u-{n}" for n in range(rows))


def test_a_stop_does_not_wait_out_the_scan_interval(tmp_path, sandbox, running):
    drop = tmp_path / "drop"
    (drop / "Some Email Channel").mkdir(parents=True)   # the first scan warns about it
    source = f"  - name: drop\n    type: local\n    path: {drop}\n    scan_interval_seconds: 3600\n"
    daemon = running(write_config(str(tmp_path), sandbox.url, source))
    wait_for(lambda: "unknown_channel_folder" in daemon.log(), timeout=10, what="the first scan")
    assert daemon.terminate() == 0
    events = [event["event"] for event in daemon.events()]
    assert "daemon_stopped" in events and "drain_incomplete" not in events


def test_a_reload_that_cannot_start_either_configuration_exits_1_for_systemd_to_restart(tmp_path, sandbox, running):
    config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "drop")))
    daemon = running(config)
    (tmp_path / "blocked").write_text("")               # the new config's state folder is a file
    with open(config) as handle:
        broken = handle.read().replace(f"{tmp_path}/state/state.db", f"{tmp_path}/blocked/state.db")
    with open(config, "w") as handle:
        handle.write(broken)
    os.rename(tmp_path / "state", tmp_path / "state-gone")   # and the old one can no longer be opened
    (tmp_path / "state").write_text("")
    daemon.process.send_signal(signal.SIGHUP)
    assert daemon.wait(30) == 1
    events = [event["event"] for event in daemon.events()]
    assert "reload_failed" in events and "restart_failed" in events


def test_a_daemon_that_has_sent_nothing_yet_reads_as_braze_up(tmp_path, sandbox, running):
    config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "drop")),
                          extra="http:\n  listen: 127.0.0.1:0\n")
    daemon = running(config)
    exposed = httpx.get(f"http://127.0.0.1:{http_port(daemon)}/metrics").text
    assert "\nrpi2braze_braze_up 1.0\n" in exposed and sandbox.requests == []



def test_rpis_call_during_a_stop_is_answered_503_not_queued(tmp_path, sandbox):
    config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "drop"), settle=3600))
    export(tmp_path / "drop" / UPSERT / "Spring Offer" / "8828" / "RPI_Export_5719.txt", 10)
    engine = Engine(load_settings(config, {"TEST_BRAZE_API_KEY": API_KEY}))
    try:
        engine.drain(time.monotonic() + 5, threading.Event())   # as SIGTERM and SIGHUP do
        with pytest.raises(SourceUnavailable, match="stopping or reloading"):
            engine.queue_now("drop", UPSERT, "Spring Offer", "8828")
    finally:
        engine.close(timeout=5)


def test_the_watchdog_is_fed_while_a_reload_waits_for_batches_in_flight(tmp_path, running):
    # systemd kills a service that stays silent for WatchdogSec, and a drain may last timeout_seconds.
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(15)
    with SandboxServer(api_key=API_KEY, faults=Faults(latency_seconds=3.0)) as slow:
        config = write_config(str(tmp_path), slow.url, local_source(str(tmp_path / "drop"), settle=0))
        try:
            daemon = running(config, NOTIFY_SOCKET=address, WATCHDOG_USEC="2000000")
            export(tmp_path / "drop" / UPSERT / "Offer" / "1" / "RPI_Export_1.txt", 10)
            wait_for(lambda: "folder_queued" in daemon.log(), timeout=20, what="the folder queued")
            time.sleep(1.0)   # its one request is on its way: Braze answers after 3 s
            daemon.process.send_signal(signal.SIGHUP)
            messages = []
            while "RELOADING=1" not in messages or "READY=1" not in messages[messages.index("RELOADING=1"):]:
                messages.extend(listener.recv(4096).decode().splitlines())
            reload = messages[messages.index("RELOADING=1"):]
            assert "WATCHDOG=1" in reload[:reload.index("READY=1")]
            assert daemon.terminate() == 0
        finally:
            listener.close()



def _fifo_writer(path: str) -> int:
    """A descriptor writing to the FIFO `path`, once a reader is waiting on it (within 20 s)."""
    def opened():
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:   # ENXIO: nobody is reading it yet
            return None
    return wait_for(opened, 20, 0.02, f"a reader of {path}")


def _feed(descriptor: int, data: bytes) -> None:
    try:
        os.write(descriptor, data)
    finally:
        os.close(descriptor)


def test_a_sighup_while_the_config_loads_is_a_reload_not_a_kill(tmp_path, sandbox):
    # The key file is a FIFO: loading the config waits on it, so the SIGHUP surely lands in the load.
    key_file = str(tmp_path / "key.fifo")
    os.mkfifo(key_file)
    config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "drop")))
    with open(config) as handle:
        text = handle.read().replace("api_key: ${TEST_BRAZE_API_KEY}", f"api_key_file: {key_file}")
    with open(config, "w") as handle:
        handle.write(text)
    daemon = DaemonProcess(config, str(tmp_path / "daemon.log"))
    daemon._log = open(daemon.log_path, "ab")
    daemon.process = subprocess.Popen([sys.executable, "-m", "rpi2braze", "-c", config, "run"],
                                      stdout=daemon._log, stderr=subprocess.STDOUT)
    try:
        writer = _fifo_writer(key_file)
        daemon.process.send_signal(signal.SIGHUP)
        _feed(writer, API_KEY.encode())
        wait_for(lambda: "daemon_started" in daemon.log() or daemon.process.poll() is not None, 20, what="start")
        assert daemon.process.poll() is None, daemon.log()
        _feed(_fifo_writer(key_file), API_KEY.encode())   # the reload that SIGHUP asked for reads it again
        wait_for(lambda: "reload_done" in daemon.log(), 20, what="reload_done")
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
