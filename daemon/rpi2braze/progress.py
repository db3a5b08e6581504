"""A one-line progress display for `rpi2braze process` on a terminal: rows delivered and rows/s."""

from __future__ import annotations

import threading
import time
from typing import TextIO

from rpi2braze.model import WorkflowKey
from rpi2braze.state import StateStore

REFRESH_SECONDS = 0.5


class Progress:
    """Redraws one line on `stream` until closed; reads the counts from the state file."""

    def __init__(self, state: StateStore, key: WorkflowKey, stream: TextIO):
        self._state = state
        self._key = key
        self._stream = stream
        self._done = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def __enter__(self) -> "Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join(5)
        self._draw()
        self._stream.write("\n")
        self._stream.flush()

    def _run(self) -> None:
        while not self._done.wait(REFRESH_SECONDS):
            self._draw()

    def _draw(self) -> None:
        record = self._state.get(self._key)
        if record is None:
            return
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = record.rows_delivered / elapsed
        self._stream.write(f"\r{self._key.relpath}: {record.rows_delivered:,} rows delivered, "
                           f"{record.rows_rejected:,} rejected, {rate:,.0f} rows/s, {elapsed:,.0f} s  ")
        self._stream.flush()
