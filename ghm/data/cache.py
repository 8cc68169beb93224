"""Inputs generated once per parameter set and cached on disk (the dataset, the pretrained backbone).

Parallel trials that need one at once must not each make it: one process holds its lock and makes
it, the others wait for it, or with ``wait=False`` learn at once that it is being made and can do
other work meanwhile.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(lock_file: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold ``lock_file`` (created) for the block, across processes: ``True`` once held; with ``wait=False``,
    ``False`` at once when another process holds it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True  # released when the file closes
