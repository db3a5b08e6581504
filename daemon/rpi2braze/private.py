"""Folders for files that hold personal data: made by this user, closed to others.

os.makedirs(path, mode) gives only the last folder `mode`; the missing parents get the umask's,
and a command run by hand (`process`, `retry`) does not have the service's UMask=0077. So each
missing folder is made with the mode, one at a time.
"""

from __future__ import annotations

import os


def make_directories(directory: str, mode: int = 0o700) -> None:
    """Create `directory` and its missing parents, each with `mode` (less the umask); those that
    exist are left as they are."""
    missing = []
    while directory and not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            pass  # made meanwhile by another thread or process
