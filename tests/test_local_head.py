"""The warm local Ray head: sweeps without an address start it, reuse it, say so first, and it stops when idle.

Each test has a heads folder of its own (``GHM_RAY_HEADS_DIR``), so it starts and stops a head of its own beside the
test run's shared one, which must outlive it: a head is stopped by its own process tree, never by name.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from ghm.cluster.local_head import HEADS_DIR_ENV, WarmHead
from ghm.cluster.processes import process_tree, start_time
from tests.conftest import ROOT

APPS = ROOT / "tests" / "apps"

pytestmark = pytest.mark.slow

HOLD = ("import os, sys, time, ray; ray.init(address=os.environ['RAY_ADDRESS'], log_to_driver=False); print('connected', flush=True)\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.2)")


def environment(heads: Path) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, HEADS_DIR_ENV: str(heads)}


def sphere(heads: Path, tmp_path: Path, name: str, *overrides: str) -> str:
    """The sphere app's 20-trial sweep on the sweeper of this project, without an address; returns its console."""
    result = subprocess.run([sys.executable, "sphere.py", "-m", "hydra/sweeper=ghm", "hydra.sweeper.n_trials=4",
                             f"hydra.sweep.dir={tmp_path / name}", f"hydra.sweeper.ray.storage_path={tmp_path / 'ray'}",
                             f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}", f"hydra.sweeper.study_name={name}", *overrides],
                            cwd=APPS, env=environment(heads), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    return result.stdout  # Hydra's log lines, the first of them first


def listening_addresses(pids: set[int]) -> set[str]:
    """The local addresses the processes ``pids`` listen on (TCP), as ``ss`` shows them."""
    sockets = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True, check=True).stdout.splitlines()
    found = {line.split()[3].rsplit(":", 1)[0] for line in sockets if any(f"pid={pid}," in line for pid in pids)}
    assert found, "none of the head's processes listens: ss cannot see them"
    return found


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.5)


@pytest.fixture
def heads(tmp_path: Path) -> Iterator[Path]:
    """A heads folder of the test's own; whatever head the test leaves running there is stopped."""
    folder = tmp_path / "heads"
    yield folder
    for head in [WarmHead(p) for p in folder.iterdir()] if folder.is_dir() else []:
        head.stop()


def test_sweeps_share_a_warm_head_that_stops_once_no_driver_is_left(heads: Path, tmp_path: Path, ray_head: Mapping[str, str]) -> None:
    first = sphere(heads, tmp_path, "first")
    assert "Ray: warm local Ray head 127.0.0.1:" in first.splitlines()[0]
    assert "(started now" in first.splitlines()[0] and "stops after 600 s without a sweep" in first.splitlines()[0]
    (folder,) = [p for p in heads.iterdir() if p.is_dir()]
    head = WarmHead(folder)
    record = head.record()
    assert record is not None and (folder / "token").stat().st_mode & 0o777 == 0o600
    tree = process_tree(record.ray_pid)
    assert listening_addresses(tree) <= {"127.0.0.1", "[::ffff:127.0.0.1]"}  # no Ray server of it on another interface

    # A driver attached (a user's own ray.init on the head) keeps it up past the idle time of the next sweep (0: its end).
    release = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(release)], env={**environment(heads), **head.environment(record)},
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert holder.stdout is not None and "connected" in holder.stdout.readline()
    second = sphere(heads, tmp_path, "second", "hydra.sweeper.ray.idle_timeout_s=0")
    line = second.splitlines()[0]
    assert f"Ray: warm local Ray head {record.address} (reused, up " in line and "stops when this sweep ends" in line, line
    time.sleep(3)
    assert head.record() == record  # still up: the holder is attached
    release.touch()
    holder.wait(timeout=60)
    wait_until(lambda: head.record() is None, 60, "the idle head stopped")
    wait_until(lambda: not process_tree(record.ray_pid), 30, "its processes gone")
    wait_until(lambda: not Path(record.temp_dir).exists(), 30, "its temp dir removed")  # the watcher's last step
    assert re.search(r"stopping the warm head: idle for \d+ s \(idle_timeout_s=0\)", (folder / "watcher.log").read_text())
    other = WarmHead().record()  # the test run's own head, another Ray of this machine, is untouched
    assert other is not None and other.address == ray_head["RAY_ADDRESS"] and start_time(other.ray_pid) == other.ray_start


def test_the_command_starts_lists_and_stops_the_head_and_ray_status_reaches_it(heads: Path, tmp_path: Path) -> None:
    env = environment(heads)

    def command(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "ghm.cluster", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    started = command("start", "--idle-timeout", "900", "--num-cpus", "1")
    exports = dict(line.removeprefix("export ").split("=", 1) for line in started.splitlines() if line.startswith("export "))
    assert set(exports) == {"RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    listed = command("list")
    assert re.search(rf"running\s+{re.escape(exports['RAY_ADDRESS'])}\s+1\s+\d+s\s+900s\s+{re.escape(sys.executable)}", listed), listed

    def ray_status() -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).parent / "ray"), "status"], env={**env, **exports}, capture_output=True, text=True,
                              timeout=120)

    # Ray's own tool, with the exports; the head's autoscaler reports its resources a few seconds after it starts
    # ("No cluster status. It may take a few seconds for the Ray internal services to start up.").
    wait_until(lambda: "No cluster status" not in ray_status().stdout, 60, "ray status reports the cluster")
    status = ray_status()
    assert status.returncode == 0 and "1.0 CPU" in status.stdout, status.stdout + status.stderr
    refused = subprocess.run([str(Path(sys.executable).parent / "ray"), "status"], capture_output=True, text=True, timeout=120,
                             env={**env, **exports, "RAY_AUTH_MODE": "disabled"})
    assert refused.returncode != 0  # without the token: no
    assert "stopped" in command("stop")
    assert re.search(r"\bstopped\b", command("list"))
    assert "was not running" in command("stop")
