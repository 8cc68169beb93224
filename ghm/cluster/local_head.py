"""The warm local Ray head: started by the first sweep that has no address, joined by the next ones, stopped when idle.

An embedded Ray (``ray.init(address="local")``) costs every sweep Ray's start-up and shut-down (8-15 s and 4 s
on 2 busy cores). Instead, a sweep without an address joins this machine's warm head for its Python
environment, and starts one when none runs: ``ray start --head --block`` under a watcher process
(:func:`serve`, started detached), with Ray's token authentication, every Ray server bound to 127.0.0.1 only
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: Ray's local-only mode), a temp dir of its own and ports the OS
chooses, so it never meets another Ray instance of the machine. The watcher stops the head (its own process
tree, never ``ray stop``) after ``idle_timeout_s`` without a driver, read from Ray's GCS job table as
KubeRay's idle termination reads it; at once on SIGTERM (``python -m ghm.cluster stop``); and when the head
dies. Each sweep that joins sets the idle time to its own ``hydra.sweeper.ray.idle_timeout_s``.

Files, per Python environment (one head per ``sys.prefix``, Ray and Python version: workers import the
driver's code): ``<heads dir>/<key>/`` holds ``head.json`` (the running head), ``token`` (0600),
``idle_timeout_s``, ``touched`` (a driver is about to connect), ``watcher.log`` and ``ray.log``. The heads
dir is ``$GHM_RAY_HEADS_DIR``, else ``<user cache>/ghm-sweep/ray-heads``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

from ghm.cluster.processes import free_port, start_time, stop_process_group
from ghm.data.cache import exclusive

log = logging.getLogger(__name__)

HEADS_DIR_ENV = "GHM_RAY_HEADS_DIR"
# Every Ray server of the head (GCS, raylet, agents, workers) on 127.0.0.1 only, and drivers that reach it there:
# Ray otherwise swaps 127.0.0.1 for the machine's address and listens on every interface.
LOCAL_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
CONNECT_GRACE_S = 60.0  # a driver that touched the head counts as attached until it connects, or for this long
START_TIMEOUT_S = 180.0


class HeadError(RuntimeError):
    """The warm head did not start or answer; the message names its log."""


@dataclass
class HeadRecord:
    """A running warm head: where drivers connect, and the processes that are its own."""

    address: str
    watcher_pid: int
    watcher_start: int  # with the pid, names the watcher process (pids are reused)
    ray_pid: int  # `ray start --block`, parent of the head's processes
    ray_start: int
    temp_dir: str
    python: str
    num_cpus: int
    started_at: float  # epoch seconds


def heads_dir() -> Path:
    chosen = os.environ.get(HEADS_DIR_ENV)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(chosen) if chosen else cache / "ghm-sweep" / "ray-heads"


def environment_key() -> str:
    """One head per Python environment and Ray version: its workers import the driver's packages."""
    identity = f"{Path(sys.prefix).resolve()}|{sys.version_info[:2]}|ray {version('ray')}"
    return hashlib.sha1(identity.encode()).hexdigest()[:12]


class WarmHead:
    """The warm head of one folder (one Python environment): find, start, join, stop."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder else heads_dir() / environment_key()
        self.token_path = self.folder / "token"

    # -- state ------------------------------------------------------------------------------

    def record(self) -> HeadRecord | None:
        """The head this folder records, if its watcher still runs (a stale record is ignored)."""
        try:
            record = HeadRecord(**json.loads((self.folder / "head.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return record if start_time(record.watcher_pid) == record.watcher_start else None

    def idle_timeout_s(self) -> float:
        try:
            return float((self.folder / "idle_timeout_s").read_text())
        except (OSError, ValueError):
            return 0.0

    def environment(self, record: HeadRecord) -> dict[str, str]:
        """What a driver (or ``ray status``) needs to reach this head."""
        return {"RAY_ADDRESS": record.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path), **LOCAL_ONLY}

    # -- drivers ----------------------------------------------------------------------------

    def acquire(self, idle_timeout_s: float, num_cpus: int | None = None) -> tuple[HeadRecord, bool]:
        """The running head, started first if none runs; returns it and whether it was started now.

        Under the folder's lock: concurrent sweeps start one head, and the watcher never stops a head
        between a driver finding it and that driver connecting (the driver touches it first).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        with exclusive(self.folder / ".lock"):
            (self.folder / "idle_timeout_s").write_text(repr(float(idle_timeout_s)))
            (self.folder / "touched").touch()
            record = self.record()
            if record is not None:
                return record, False
            self._stop_orphans()
            return self._start(num_cpus), True

    @contextlib.contextmanager
    def driver_environment(self) -> Iterator[None]:
        """The process's environment while it is this head's driver: the token file (never a ``RAY_AUTH_TOKEN`` of the
        shell, which would win over it) and Ray's local-only mode; restored afterwards."""
        saved = dict(os.environ)
        os.environ.pop("RAY_AUTH_TOKEN", None)
        os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path), **LOCAL_ONLY})
        _reload_ray_settings()
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)
            _reload_ray_settings()

    def describe(self, record: HeadRecord, started: bool) -> str:
        timeout = self.idle_timeout_s()
        lifetime = "stops when this sweep ends" if timeout == 0 else f"stops after {timeout:g} s without a sweep"
        age = "started now" if started else f"reused, up {_duration(time.time() - record.started_at)}"
        return (f"warm local Ray head {record.address} ({age}, {record.num_cpus} CPUs; {lifetime}; "
                f"`python -m ghm.cluster list` / `stop`; hydra.sweeper.ray.warm_head=false: an embedded Ray instead)")

    # -- start and stop ---------------------------------------------------------------------

    def _start(self, num_cpus: int | None) -> HeadRecord:
        if not self.token_path.exists():
            self.token_path.touch(mode=0o600)
            self.token_path.write_text(secrets.token_hex(32))
        (self.folder / "head.json").unlink(missing_ok=True)
        command = [sys.executable, "-m", "ghm.cluster.local_head", str(self.folder), *(["--num-cpus", str(num_cpus)] if num_cpus else [])]
        with (self.folder / "watcher.log").open("ab") as out:
            watcher = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                       cwd=self.folder, env=_head_environment(self.token_path))
        deadline = time.monotonic() + START_TIMEOUT_S
        while (record := self.record()) is None:
            if watcher.poll() is not None or time.monotonic() > deadline:
                stop_process_group(watcher.pid, grace=5)
                raise HeadError(f"the warm local Ray head did not start; see {self.folder / 'ray.log'}:\n{_tail(self.folder / 'ray.log')}")
            time.sleep(0.2)
        return record

    def stop(self, timeout: float = 60) -> bool:
        """Stop the head (SIGTERM to its watcher, which stops the head's own processes); whether one ran."""
        record = self.record()
        if record is None:
            return self._stop_orphans()
        os.kill(record.watcher_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while start_time(record.watcher_pid) == record.watcher_start and time.monotonic() < deadline:
            time.sleep(0.2)
        return True

    def _stop_orphans(self) -> bool:
        """A head whose watcher was killed: stop its processes (found by the recorded pid and start time) and forget it."""
        try:
            record = HeadRecord(**json.loads((self.folder / "head.json").read_text()))
        except (OSError, ValueError, TypeError):
            return False
        if start_time(record.ray_pid) == record.ray_start:
            stop_process_group(record.ray_pid, grace=5)
        shutil.rmtree(record.temp_dir, ignore_errors=True)
        (self.folder / "head.json").unlink(missing_ok=True)
        return True


def all_heads() -> list[WarmHead]:
    """Every warm head folder under the heads dir (one per Python environment that started one)."""
    root = heads_dir()
    return [WarmHead(p) for p in sorted(root.iterdir()) if (p / "token").exists()] if root.is_dir() else []


# -- the watcher ----------------------------------------------------------------------------------


def serve(folder: Path, num_cpus: int | None) -> None:
    """The watcher: start the head, record it, stop it when idle, asked (SIGTERM) or dead; runs detached."""
    head = WarmHead(folder)
    temp_dir = tempfile.mkdtemp(prefix="ghm-ray-", dir="/tmp")  # short: Ray's socket paths must stay below 108 bytes
    # Ray's CLI as a module of this interpreter: an environment that sees Ray through a .pth line has no `ray` script.
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", "0",
               "--include-dashboard", "false", "--ray-client-server-port", str(free_port()), "--min-worker-port", "0",
               "--max-worker-port", "0", "--dashboard-agent-listen-port", "0", "--metrics-export-port", "0",
               "--runtime-env-agent-port", "0", "--temp-dir", temp_dir, "--disable-usage-stats",
               *(["--num-cpus", str(num_cpus)] if num_cpus else [])]
    stopping: list[str] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append("asked to stop"))
    signal.signal(signal.SIGINT, lambda *_: stopping.append("interrupted"))
    with (folder / "ray.log").open("wb") as out:
        ray = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = _wait_started(ray, folder / "ray.log", Path(temp_dir) / "ray_current_cluster")
        record = HeadRecord(address=address, watcher_pid=os.getpid(), watcher_start=start_time(os.getpid()) or 0, ray_pid=ray.pid,
                            ray_start=start_time(ray.pid) or 0, temp_dir=temp_dir, python=sys.executable,
                            num_cpus=num_cpus or len(os.sched_getaffinity(0)), started_at=time.time())
        _write_atomically(folder / "head.json", json.dumps(asdict(record), indent=2))
        print(f"warm head {address} started (ray start pid {ray.pid})", flush=True)
        reason = _watch(head, record, ray, stopping)
        print(f"stopping the warm head: {reason}", flush=True)
    finally:
        with exclusive(folder / ".lock"):
            (folder / "head.json").unlink(missing_ok=True)
        stop_process_group(ray.pid, grace=10)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _watch(head: WarmHead, record: HeadRecord, ray: subprocess.Popen, stopping: list[str]) -> str:
    """Wait until the head must stop; returns why. Idle: no driver attached for the configured time."""
    from ray._raylet import GcsClient

    gcs = GcsClient(address=record.address)
    while not stopping:
        if ray.poll() is not None:
            return f"the head exited ({ray.returncode}); see {head.folder / 'ray.log'}"
        timeout = head.idle_timeout_s()
        idle = _idle_seconds(gcs, head.folder / "touched", record.started_at)
        if idle is not None and idle >= timeout:
            with exclusive(head.folder / ".lock"):  # no driver touches it meanwhile; one that just did keeps it
                again = _idle_seconds(gcs, head.folder / "touched", record.started_at)
                if again is not None and again >= head.idle_timeout_s():
                    (head.folder / "head.json").unlink(missing_ok=True)
                    return f"idle for {idle:.0f} s (idle_timeout_s={timeout:g})"
        time.sleep(min(5.0, max(0.5, timeout / 10)))
    return stopping[0]


def _idle_seconds(gcs: object, touched: Path, started_at: float) -> float | None:
    """Seconds since the last driver left; None while one is attached, or has touched the head and not yet connected."""
    try:
        jobs = gcs.get_all_job_info(skip_submission_job_info_field=True, skip_is_running_tasks_field=True)  # type: ignore[attr-defined]
    except Exception:  # fail closed, as KubeRay's idle termination does: a GCS that does not answer may have drivers
        log.exception("the GCS job table did not answer; counting the head as busy")
        return None
    user_jobs = [j for j in jobs.values() if not j.config.ray_namespace.startswith("_ray_internal")]
    if any(not j.is_dead for j in user_jobs):
        return None
    now = time.time()
    touched_at = touched.stat().st_mtime if touched.exists() else 0.0
    connected_since = any(j.start_time / 1000 >= touched_at for j in user_jobs)
    if not connected_since and now - touched_at < CONNECT_GRACE_S:
        return None
    last_end = max((j.end_time / 1000 for j in user_jobs), default=0.0)
    return now - max(started_at, last_end, touched_at if not connected_since else 0.0)


def _wait_started(ray: subprocess.Popen, log_file: Path, address_file: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ("Ray runtime started" in log_file.read_text(errors="replace") and address_file.is_file()):
        if ray.poll() is not None or time.monotonic() > deadline:
            raise HeadError(f"ray start --head failed:\n{_tail(log_file)}")
        time.sleep(0.2)
    return address_file.read_text().strip()


def _reload_ray_settings() -> None:
    """Make an imported Ray see its environment variables again (it reads them when imported), as Ray's own
    ``_enable_token_auth`` does: its config (the auth mode), its cached token, and its local-only switch."""
    from ray._private import ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    switch = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    ray_constants.ENABLE_RAY_CLUSTER = ray_constants.env_bool(switch, not ray_constants.IS_WINDOWS_OR_OSX)


def _head_environment(token_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path), **LOCAL_ONLY}


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The warm head's watcher (started by WarmHead.acquire; not run by hand).")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--num-cpus", type=int)
    arguments = parser.parse_args()
    serve(arguments.folder, arguments.num_cpus)
