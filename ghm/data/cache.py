"""Inputs generated once per parameter set and cached on disk (the dataset, the pretrained backbone).

Parallel trials that need one at once must not each make it: one process holds its lock and makes
it, the others wait, then find it made.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold ``lock_file`` (created) for the block, across processes; wait while another process holds it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # released when the file closes
