"""Notifier against a real AF_UNIX datagram socket standing in for systemd."""

import os
import shutil
import socket
import tempfile
import time
import uuid

import pytest
from structlog.testing import capture_logs

from rpi2braze.notify import Notifier


@pytest.fixture
def systemd_socket():
    """A bound datagram socket at a short filesystem path (AF_UNIX paths are limited to 107 bytes)."""
    directory = tempfile.mkdtemp(prefix="notify-")
    path = os.path.join(directory, "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(5)
        yield listener, path
    shutil.rmtree(directory)


@pytest.fixture
def abstract_socket():
    name = f"rpi2braze-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(b"\0" + name.encode())
        listener.settimeout(5)
        yield listener, "@" + name


def receive(listener: socket.socket) -> str:
    return listener.recv(4096).decode()


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda notifier: notifier.ready(), "READY=1"),
        (lambda notifier: notifier.watchdog(), "WATCHDOG=1"),
        (lambda notifier: notifier.stopping(), "STOPPING=1"),
        (lambda notifier: notifier.status("delivering 3 folders"), "STATUS=delivering 3 folders"),
        (lambda notifier: notifier.status("two\nlines"), "STATUS=two lines"),
    ],
    ids=["ready", "watchdog", "stopping", "status", "status-newline"],
)
def test_messages_reach_a_filesystem_socket(systemd_socket, call, expected):
    listener, path = systemd_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    call(notifier)
    assert receive(listener) == expected


def test_messages_reach_an_abstract_socket(abstract_socket):
    listener, name = abstract_socket
    notifier = Notifier({"NOTIFY_SOCKET": name})
    assert notifier.enabled
    notifier.ready()
    assert receive(listener) == "READY=1"


def test_reloading_sends_the_monotonic_time(systemd_socket):
    listener, path = systemd_socket
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier({"NOTIFY_SOCKET": path}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = receive(listener).split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:1234"}])
def test_without_a_usable_socket_every_call_is_a_no_op(environ):
    notifier = Notifier(environ)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    with capture_logs() as logs:
        notifier.ready()
        notifier.status("x")
        notifier.watchdog()
        notifier.reloading()
        notifier.stopping()
    assert logs == []


def test_a_failing_socket_never_raises_and_is_logged_once(tmp_path):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with capture_logs() as logs:
        for _ in range(3):
            notifier.watchdog()
    assert [entry["event"] for entry in logs] == ["systemd_notify_failed"]


def test_no_socket_means_no_watchdog_even_if_watchdog_usec_is_set():
    assert Notifier({"WATCHDOG_USEC": "60000000"}).watchdog_interval is None


@pytest.mark.parametrize(
    ("watchdog_environ", "expected"),
    [
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "3000000"}, 1.5),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "sixty"}, None),
        ({}, None),
    ],
    ids=["usec", "our-pid", "other-pid", "short", "zero", "garbage", "unset"],
)
def test_watchdog_interval_is_half_the_period_for_this_process(systemd_socket, watchdog_environ, expected):
    _, path = systemd_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, **watchdog_environ})
    assert notifier.watchdog_interval == expected
