"""The systemd files, checked by systemd's own tools, and the hardening checked against CPython.

`systemd-analyze security --offline=true` rates a unit file without a running systemd (systemd >= 250).
`systemd-analyze verify` also works offline but insists that ExecStart's binary exists; the unit names
the documented install location (/usr/local/bin/rpi2braze), which a test machine need not have, so
verify runs on a copy whose ExecStart points at this Python. Nothing else is changed in the copy.
"""

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rpi2braze.cli import EXIT_CONFIG

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD_DIR / "rpi2braze.service"
SYSUSERS = SYSTEMD_DIR / "rpi2braze.sysusers.conf"
MAX_EXPOSURE = 2.0


def require_tool(name: str) -> str:
    """Return the tool's path. Without it, skip on a developer machine but fail in CI."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI")
        pytest.skip(f"{name} is not installed")
    return path


def unit_settings() -> dict[str, list[str]]:
    """Every Key=value of the unit file, keys repeated as systemd allows."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_security_exposure_is_at_most_2():
    analyze = require_tool("systemd-analyze")
    # --threshold is on the 0-100 scale the exposure level is printed on divided by 10.
    result = subprocess.run(
        [analyze, "security", "--offline=true", f"--threshold={int(MAX_EXPOSURE * 10)}", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for rpi2braze\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, result.stdout
    assert result.returncode == 0, result.stderr


def test_verify_finds_nothing_to_complain_about(tmp_path):
    analyze = require_tool("systemd-analyze")
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/rpi2braze " in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace("ExecStart=/usr/local/bin/rpi2braze ", f"ExecStart={sys.executable} "))
    result = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys and only prints them: any output is a finding.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_unit_runs_the_daemon_the_way_the_daemon_expects():
    settings = unit_settings()
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "WatchdogSec": ["60"],
        "StateDirectory": ["rpi2braze"],
        "StateDirectoryMode": ["0700"],
        "LoadCredential": ["braze_api_key:/etc/rpi2braze/braze_api_key"],
        "User": ["rpi2braze"],
        "UMask": ["0077"],
        "Restart": ["on-failure"],
        "RestartPreventExitStatus": [str(EXIT_CONFIG)],   # a bad config is not retried every 5 s
    }
    assert {key: settings.get(key) for key in expected} == expected
    assert settings["ExecStart"][0].endswith(" -c /etc/rpi2braze/config.yaml run")


def test_sysusers_creates_the_user_and_the_optional_share_group(tmp_path):
    sysusers = require_tool("systemd-sysusers")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    # The share group lines ship commented out; enable them to check they are valid too.
    enabled = re.sub(r"^#([gm]\s)", r"\1", SYSUSERS.read_text(), flags=re.MULTILINE)
    config = tmp_path / "rpi2braze.conf"
    config.write_text(enabled)
    result = subprocess.run([sysusers, f"--root={root}", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    passwd = (root / "etc" / "passwd").read_text()
    group = (root / "etc" / "group").read_text()
    assert re.search(r"^rpi2braze:x:\d+:\d+:[^:]*:/var/lib/rpi2braze:/usr/sbin/nologin$", passwd, re.MULTILINE)
    assert re.search(r"^rpi:x:7777:rpi2braze$", group, re.MULTILINE)


# The unit sets MemoryDenyWriteExecute=yes. The kernel's own form of that rule (prctl PR_SET_MDWE,
# Linux >= 6.3) can be applied to an unprivileged process: import and exercise what the daemon uses
# under it, so a dependency that needs writable executable memory is caught here, not in production.
MDWE_PROBE = textwrap.dedent("""
    import ctypes, mmap, sys
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(77)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("PR_SET_MDWE did not refuse a writable executable mapping")
    except OSError:
        pass
    import http.client, sqlite3, ssl
    import orjson, paramiko, phonenumbers, prometheus_client, pycountry, structlog, yaml
    import watchdog.observers
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    import rpi2braze.http_api, rpi2braze.metrics, rpi2braze.notify
    Ed25519PrivateKey.generate().sign(b"probe")
    ssl.create_default_context()
    sqlite3.connect(":memory:").execute("select 1")
    phonenumbers.format_number(phonenumbers.parse("+14155552671"), phonenumbers.PhoneNumberFormat.E164)
    orjson.dumps({"probe": [1, 2.5, None]})
    print("ok")
""")


def test_cpython_and_the_dependencies_work_without_writable_executable_memory():
    result = subprocess.run([sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True, timeout=60)
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr
