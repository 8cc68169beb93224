"""Processes that a cluster command starts and must stop again: free ports, console scripts, process trees.

Ray starts its workers in sessions of their own, so a started Ray node is stopped by its whole process
tree (the leader and every descendant), never by name (``ray stop`` stops every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def console_script(name: str) -> str:
    """A console script of this environment (``mlflow``, ``ray``, ``optuna-dashboard``)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not installed beside {sys.executable}: install the project (make test sets up .venv)")
    return str(path)


def stop_process_group(pid: int, grace: float = 15) -> None:
    """Stop the process group led by ``pid`` and every descendant; see :func:`stop_process_groups`."""
    stop_process_groups([pid], grace)


def stop_process_groups(pids: list[int], grace: float = 15) -> None:
    """Stop the process groups led by ``pids`` and all their descendants (Ray starts its workers in sessions of
    their own), all at once: SIGTERM, then SIGKILL whatever is left after ``grace`` seconds."""
    def alive() -> set[int]:
        return set().union(*(process_tree(pid) for pid in pids))

    if grace > 0:
        _signal_all(alive(), signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and alive():
            time.sleep(0.2)
    while members := alive():
        _signal_all(members, signal.SIGKILL)
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # reap the leaders this process started


def process_tree(pgid: int) -> set[int]:
    """Live processes of the group ``pgid`` and all their descendants."""
    table: dict[int, tuple[int, int]] = {}  # pid -> (parent, group)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                table[int(entry.name)] = (int(fields[1]), int(fields[2]))
    members = {pid for pid, (_, group) in table.items() if group == pgid}
    grown = True
    while grown:
        children = {pid for pid, (parent, _) in table.items() if parent in members} - members
        members |= children
        grown = bool(children)
    return members


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None when it is gone: with the pid, it names one
    process (a pid alone may be reused by another process later)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[19]) if fields[0] != "Z" else None


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (reaping it first where it is this process's exited child)."""
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:  # not our child: ask the kernel
        return start_time(pid) is not None


def _signal_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
