"""`python -m rpi2braze.demo`: the whole path on one machine, in about half a minute.

Starts the Braze sandbox, writes a config under ./demo-run/, starts `rpi2braze run` as a real
process, drops two RPI exports into the watched folder (one slowly, in pieces, the way a share
fills), waits until the state file says they are delivered, and prints what reached "Braze".
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

from rpi2braze.sandbox.server import SandboxServer

API_KEY = "demo-sandbox-key"
UPSERT, APPEND = "Braze Onboarding and Upsert", "Braze Append"
HEADER = ["RPContactID", "ChannelExecutionID", "external_id", "first_name", "last_name", "email", "country",
          "dob", "gender", "home_city", "phone", "Output Name", "Education", "Income", "Marital Status"]
FIRST = ["Ann", "Bo", "Chen", "Dana", "Eli", "Fatima", "Gus", "Hana"]
LAST = ["Smith", "Jones", "Garcia", "Okafor", "Nguyen", "Muller"]
COUNTRIES = ["United States", "US", "Germany", "FRA", "gb", "Australia"]


def config_text(run_dir: str, endpoint: str) -> str:
    return f"""# written by python -m rpi2braze.demo
braze:
  rest_endpoint: {endpoint}
  api_key: ${{DEMO_BRAZE_API_KEY}}
  allow_insecure_http: true      # the sandbox speaks plain HTTP on loopback
  rate_limit: {{requests: 50, per_seconds: 1}}
  concurrency: 4
state:
  path: {run_dir}/state/state.db
sources:
  - name: demo
    type: local
    path: {run_dir}/drop
    settle_seconds: 3
    scan_interval_seconds: 1
    archive_path: {run_dir}/archive
log: {{level: info, format: json}}
"""


def export_rows(count: int, rng: random.Random) -> list[list[str]]:
    rows = []
    for number in range(1, count + 1):
        rows.append([str(1000 + number), "5719", f"demo-user-{number:04d}", rng.choice(FIRST), rng.choice(LAST),
                     f"user{number}@example.com", rng.choice(COUNTRIES), f"19{rng.randint(50, 99)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
                     rng.choice(["Male", "female", "F", "other", ""]), "Denver", f"+1303555{number:04d}",
                     "Spring Gold", rng.choice(["Bachelors", "Masters", ""]), str(rng.randint(30, 200) * 1000), "Single"])
    rows.append(["2001", "5719", "demo-user-0001", "Ann", "Smith", "user1@example.com", "US", "", "", "", "",
                 "Spring Loyal", "", "", ""])                      # same person, second audience output
    rows.append(["2002", "5719", "demo-user-bad", "Bad", "Email", "not-an-email", "US", "", "", "", "", "Spring Gold", "", "", ""])
    rows.append(["2003", "5719", "", "No", "Id", "noid@example.com", "US", "", "", "", "", "Spring Gold", "", "", ""])
    return rows


def as_csv(rows: list[list[str]]) -> bytes:
    return "".join(",".join(f'"{cell}"' if "," in cell else cell for cell in row) + "\r\n" for row in rows).encode()


def drop_slowly(folder: str, name: str, content: bytes, pieces: int = 4, pause: float = 1.0) -> None:
    """Write the file the way a slow share fills: in pieces, seconds apart."""
    os.makedirs(folder, exist_ok=True)
    step = len(content) // pieces + 1
    with open(os.path.join(folder, name), "wb") as export:
        for start in range(0, len(content), step):
            export.write(content[start:start + step])
            export.flush()
            time.sleep(pause)


def wait_delivered(run_dir: str, count: int, timeout: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = subprocess.run([sys.executable, "-m", "rpi2braze", "-c", f"{run_dir}/config.yaml", "status", "--json"],
                                capture_output=True, text=True, env=_env())
        records = json.loads(status.stdout or "[]")
        if sum(1 for record in records if record["status"] == "delivered") >= count:
            return records
        time.sleep(1)
    raise SystemExit(f"demo: not delivered within {timeout}s; see {run_dir}/daemon.log")


def _env() -> dict:
    return {**os.environ, "DEMO_BRAZE_API_KEY": API_KEY}


def summarise(run_dir: str, records: list[dict], sandbox: SandboxServer) -> None:
    print("\n== workflows (rpi2braze status --json) ==")
    for record in records:
        print(f"  {record['status']:<10} {record['channel']} / {record['offer']} / {record['workflow_id']}: "
              f"{record['rows_delivered']} rows delivered, {record['rows_rejected']} rejected")
    profiles = sandbox.store.all()
    print(f"\n== the Braze sandbox now holds {len(profiles)} profiles, from {len(sandbox.requests)} /users/track requests ==")
    for external_id in ("demo-user-0001", "demo-user-0002"):
        print(f"\n{external_id}:\n" + json.dumps(profiles.get(external_id), indent=2, default=str))
    print(f"\nunknown-user (Append channel only updates existing profiles): {profiles.get('demo-append-unknown')}")
    print("\n== rejected rows (dead-letter CSVs beside the state file) ==")
    for root, _, files in os.walk(f"{run_dir}/state/deadletter"):
        for name in files:
            with open(os.path.join(root, name), encoding="utf-8") as deadletter:
                for line in deadletter.read().splitlines()[:6]:
                    print("  " + line[:140])


def main() -> int:
    run_dir = os.path.abspath("demo-run")
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(f"{run_dir}/drop")
    sandbox = SandboxServer(port=0, api_key=API_KEY).start()
    with open(f"{run_dir}/config.yaml", "w", encoding="utf-8") as config:
        config.write(config_text(run_dir, sandbox.url))
    log = open(f"{run_dir}/daemon.log", "wb")
    daemon = subprocess.Popen([sys.executable, "-m", "rpi2braze", "-c", f"{run_dir}/config.yaml", "run"],
                              stdout=log, stderr=subprocess.STDOUT, env=_env())
    try:
        print(f"sandbox at {sandbox.url}; daemon pid {daemon.pid}; log {run_dir}/daemon.log")
        rng = random.Random(7)
        print("dropping an Onboarding export in 4 pieces, 1 s apart (the daemon waits for it to settle) ...")
        drop_slowly(f"{run_dir}/drop/{UPSERT}/Spring Offer/8828", "RPI_Export_5719.txt", as_csv([HEADER] + export_rows(200, rng)))
        append_rows = [["external_id", "Output Name"], ["demo-user-0002", "Win-back"], ["demo-append-unknown", "Win-back"]]
        drop_slowly(f"{run_dir}/drop/{APPEND}/Win-back Offer/8829", "RPI_Export_5720.txt", as_csv(append_rows), pieces=1, pause=0)
        records = wait_delivered(run_dir, 2)
        summarise(run_dir, records, sandbox)
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(60)
        sandbox.stop()
        log.close()
    print(f"\ndaemon stopped on SIGTERM with exit code {code}; delivered folders were moved to {run_dir}/archive")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
