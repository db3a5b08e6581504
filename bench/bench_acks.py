"""What one acknowledged batch costs the state file: threads acking flat out, as sender threads do.

    python bench/bench_acks.py [--threads 1,16,64] [--acks 12800] [--commit HEAD]

Each run opens a fresh state file below bench/out/acks/ (WAL, synchronous=FULL, as the daemon
does) and has N threads call `StateStore.ack_batch` for distinct batches of one workflow. It
prints acks per second, CPU µs per ack (user + system: the fsyncs are system time) and how many
acks shared a transaction on average (group commit, daemon/rpi2braze/groupcommit.py).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import threading
import time

import harness

ACKS_DIR = os.path.join(harness.OUT_DIR, "acks")


def run(threads: int, acks: int) -> str:
    """Ack `acks` batches from `threads` threads; return the result line."""
    from rpi2braze import log
    from rpi2braze import state as state_module
    from rpi2braze.model import WorkflowKey

    log.configure("warning", "console", sys.stderr)

    transactions = [0]
    write_acks = getattr(state_module.StateStore, "_write_acks", None)
    if write_acks is not None:   # before group commit every ack was its own transaction
        def counted(self, group):
            transactions[0] += 1
            return write_acks(self, group)
        state_module.StateStore._write_acks = counted
    shutil.rmtree(ACKS_DIR, ignore_errors=True)
    store = state_module.StateStore(os.path.join(ACKS_DIR, "state.db"))
    key = WorkflowKey("bench", "Braze Onboarding and Upsert", "Offer", "acks")
    store.record_seen(key, "/bench")
    store.begin(key, threads)   # the partition count does not matter here; it must be at least 1
    per_thread = acks // threads

    def sender(offset: int) -> None:
        for number in range(offset * per_thread, (offset + 1) * per_thread):
            store.ack_batch(key, number, 75, 0)

    workers = [threading.Thread(target=sender, args=(offset,)) for offset in range(threads)]
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    done = per_thread * threads
    assert store.get(key).batches_acked == done
    store.close()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    grouping = f"{done / transactions[0]:5.1f} acks per transaction" if transactions[0] else "one transaction each"
    return f"{threads:3} threads: {done / wall:8,.0f} acks/s, {cpu / done * 1e6:5.0f} CPU µs/ack, {grouping}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,16,64")
    parser.add_argument("--acks", type=int, default=12_800, help="in all; seconds, not a blink, per count")
    parser.add_argument("--commit", help="measure daemon/ as of this commit (e.g. HEAD), not the working tree")
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.run:
        print(run(arguments.run, arguments.acks), flush=True)
        return 0
    daemon_path = harness.snapshot(arguments.commit) if arguments.commit else None
    print(f"state file acknowledgements ({arguments.commit or 'working tree'})")
    for threads in (int(text) for text in arguments.threads.split(",")):
        # each count in a fresh interpreter, so one run's threads and heap do not weigh on the next
        subprocess.run([sys.executable, __file__, "--run", str(threads), "--acks", str(arguments.acks)],
                       env=harness.child_environment(daemon_path), check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
