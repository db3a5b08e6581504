"""How fast SftpSource reads a big file, next to OpenSSH's own `sftp` client on the same file.

    python bench/bench_sftp.py [--megabytes 500] [--random] [--rounds 2]

Starts a private sshd on 127.0.0.1 (the one the integration tests use), writes a file into its
root (sparse by default, so the disk is not what is measured; --random for incompressible
bytes), then reads it through `SftpSource.open_file` in 256 KiB reads and with `sftp -b` into
/dev/null, both including the connection set-up: OpenSSH with its default cipher (issue 4's
target: ours at >= 80% of it) and with the cipher our connection negotiated. Prints MB/s (best
of --rounds), the ratios, the client's CPU seconds per GB (user + system; ours includes
paramiko's transport thread; steadier than MB/s on a shared machine) and this process's peak
memory (it must not grow with the file). Not part of the test run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from rpi2braze.settings import SourceSettings
from rpi2braze.sources.sftp import SftpSource

READ_BYTES = 256 * 1024  # what the export reader asks for at a time
MEGABYTE = 1_000_000
TARGET_RATIO = 0.80


@dataclass(frozen=True)
class Run:
    """One read of the file: its wall time and the client's CPU time (user + system)."""

    seconds: float
    cpu_seconds: float


def load_test_servers():
    """Import tests/integration/conftest.py by path: the bench starts sshd exactly like the tests."""
    path = Path(__file__).resolve().parent.parent / "tests" / "integration" / "conftest.py"
    spec = importlib.util.spec_from_file_location("integration_servers", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def make_file(path: str, size: int, random_bytes: bool) -> None:
    with open(path, "wb") as target:
        if not random_bytes:
            target.truncate(size)
            return
        block = os.urandom(4 * 1024 * 1024)
        for _ in range(size // len(block)):
            target.write(block)
        target.write(block[: size % len(block)])


def read_with_source(server, folder: str, name: str) -> tuple[Run, int, str]:
    """Return (the run, bytes read, cipher) for reading the file through SftpSource."""
    source = SftpSource(SourceSettings(
        name="bench", type="sftp", path=folder, host=server.host, port=server.port,
        username=server.username, private_key_file=server.user_key, known_hosts_file=server.known_hosts))
    started, cpu_started = time.perf_counter(), time.process_time()
    total = 0
    with source.open_file(name) as stream:
        while chunk := stream.read(READ_BYTES):
            total += len(chunk)
    run = Run(time.perf_counter() - started, time.process_time() - cpu_started)
    cipher = source._client.get_transport().remote_cipher  # noqa: SLF001  (bench only: report it)
    source.close()
    return run, total, cipher


def read_with_openssh(server, remote_file: str, cipher: str | None) -> Run:
    """Return the run of OpenSSH's `sftp -b` fetching the file into /dev/null."""
    command = ["sftp", "-q", "-b", "-", "-i", server.user_key, "-P", str(server.port),
               "-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "StrictHostKeyChecking=yes",
               "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"]
    if cipher:
        command += ["-o", f"Ciphers={cipher}"]
    before = _children_cpu_seconds()
    started = time.perf_counter()
    subprocess.run(command + [f"{server.username}@{server.host}"], input=f"get {remote_file} /dev/null\n",
                   text=True, check=True, capture_output=True, timeout=600)
    return Run(time.perf_counter() - started, _children_cpu_seconds() - before)


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=500)
    parser.add_argument("--random", action="store_true", help="random bytes instead of a sparse file")
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    if shutil.which("sftp") is None:
        print("OpenSSH's sftp client is not installed", file=sys.stderr)
        return 2
    servers = load_test_servers()
    directory = tempfile.mkdtemp(prefix="bench-sftp-")
    server = servers.SshServer(directory)
    server.start()
    try:
        size = options.megabytes * MEGABYTE
        make_file(os.path.join(server.root, "big.bin"), size, options.random)
        report(server, size, options.rounds)
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


def report(server, size: int, rounds: int) -> None:
    ours, openssh_default, openssh_same_cipher, cipher = [], [], [], ""
    for _ in range(rounds):
        run, total, cipher = read_with_source(server, server.root, "big.bin")
        if total != size:
            raise SystemExit(f"read {total} bytes, expected {size}")
        ours.append(run)
        openssh_default.append(read_with_openssh(server, "big.bin", None))
        openssh_same_cipher.append(read_with_openssh(server, "big.bin", cipher))
    print(f"file: {size / MEGABYTE:.0f} MB, best of {rounds}, CPUs: {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    _line(f"SftpSource.open_file (paramiko {paramiko.__version__}, {cipher})", size, ours)
    _line("OpenSSH sftp -b (default cipher)", size, openssh_default,
          f"ratio ours/OpenSSH {_best_seconds(openssh_default) / _best_seconds(ours):.2f} "
          f"(target >= {TARGET_RATIO:.2f})")
    _line(f"OpenSSH sftp -b ({cipher})", size, openssh_same_cipher,
          f"ratio ours/OpenSSH {_best_seconds(openssh_same_cipher) / _best_seconds(ours):.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process (ru_maxrss): {peak:.0f} MB")


def _best_seconds(runs: list[Run]) -> float:
    return min(run.seconds for run in runs)


def _line(label: str, size: int, runs: list[Run], ratio: str = "") -> None:
    """Print the best MB/s of `runs` and the least client CPU seconds per GB."""
    rate = size / MEGABYTE / _best_seconds(runs)
    cpu_per_gigabyte = min(run.cpu_seconds for run in runs) / (size / 1e9)
    print(f"{label:<58} {rate:7.1f} MB/s  client CPU {cpu_per_gigabyte:5.2f} s/GB   {ratio}".rstrip())


if __name__ == "__main__":
    sys.exit(main())
