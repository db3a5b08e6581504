"""Running the real `rpi2braze` command against a real Braze sandbox, for integration tests."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

API_KEY = "integration-test-key"


def write_config(directory: str, endpoint: str, sources_yaml: str, extra: str = "", braze_extra: str = "") -> str:
    """Write a config file for the daemon under test; return its path."""
    path = os.path.join(directory, "config.yaml")
    with open(path, "w", encoding="utf-8") as config:
        config.write(f"""braze:
  rest_endpoint: {endpoint}
  api_key: ${{TEST_BRAZE_API_KEY}}
  allow_insecure_http: true
  timeout_seconds: 5
{braze_extra}state:
  path: {directory}/state/state.db
sources:
{sources_yaml}
log: {{level: debug, format: json}}
{extra}""")
    return path


def local_source(path: str, settle: float = 2.0, extra: str = "") -> str:
    return (f"  - name: drop\n    type: local\n    path: {path}\n    settle_seconds: {settle}\n"
            f"    scan_interval_seconds: 0.5\n{extra}")


def environment() -> dict:
    return {**os.environ, "TEST_BRAZE_API_KEY": API_KEY}


def cli(config: str, *arguments: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rpi2braze", "-c", config, *arguments],
                          capture_output=True, text=True, env=environment(), timeout=timeout)


def status(config: str) -> list[dict]:
    result = cli(config, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def deadletter_rows(directory) -> list[dict]:
    """Every row of every dead-letter file below the state directory of a test's `directory`."""
    rows = []
    for root, _, names in os.walk(os.path.join(directory, "state", "deadletter")):
        for name in names:
            with open(os.path.join(root, name), newline="", encoding="utf-8") as handle:
                rows.extend(csv.DictReader(handle))
    return rows


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_status(config: str, workflow_id: str, wanted: str, timeout: float = 30.0) -> dict:
    def found():
        return next((r for r in status(config) if r["workflow_id"] == workflow_id and r["status"] == wanted), None)
    return wait_for(found, timeout, 0.3, f"workflow {workflow_id} {wanted}")


@dataclass
class DaemonProcess:
    """`rpi2braze run` as a real child process; stdout (JSON log lines) goes to a file."""

    config: str
    log_path: str
    process: subprocess.Popen | None = None
    extra_env: dict = field(default_factory=dict)

    def start(self) -> "DaemonProcess":
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "rpi2braze", "-c", self.config, "run"],
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**environment(), **self.extra_env})
        wait_for(lambda: "daemon_started" in self.log() or self.process.poll() is not None, 20, 0.1, "daemon start")
        assert self.process.poll() is None, self.log()
        return self

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            return log.read()

    def events(self) -> list[dict]:
        lines = []
        for line in self.log().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> int:
        self.process.kill()
        return self.wait(10)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def stop_quietly(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if hasattr(self, "_log") and not self._log.closed:
            self._log.close()
