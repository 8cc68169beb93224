"""Shared helpers: compose the project's Hydra config as launch.py does, on small data, and build a job from it."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from devtools.cluster import console_script, free_port, stop_process_group
from ghm.comparison.pairing import Pairing
from ghm.config import register, validate
from ghm.run import Job, Processes, build_job

ROOT = Path(__file__).resolve().parents[1]
register()

# A Digits-Det and a backbone pretraining small enough for tests (made once into the checkout's cache, then reused).
SMALL_DATA = ["data.train_images=24", "data.val_images=12", "data.image_size=96", "data.max_digit_size=40", "pretrain.images=20",
              "pretrain.epochs=1"]
# What Hydra's runtime gives launch.py's paths: the checkout as launching directory (its .cache), a scratch output dir.
PATHS = [f"paths.root_dir={ROOT}", f"paths.output_dir={Path(tempfile.gettempdir()) / 'ghm-tests'}"]


def compose_full(overrides: list[str]) -> DictConfig:
    """The composed config with its ``hydra`` node (the sweeper's settings, the group choices)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*PATHS, *overrides], return_hydra_config=True)


def compose_config(overrides: list[str]) -> DictConfig:
    """The task's config, as launch.py's main receives it."""
    config = compose_full(overrides)
    with open_dict(config):
        del config["hydra"]
    return config


def build_test_job(overrides: list[str], processes: Processes | None = None) -> Job:
    """A job built as launch.py builds it: the sweeper's pairing declaration and Hydra's choices decide its tags."""
    full = compose_full(overrides)
    pairing, choices = Pairing.from_sweeper(full.hydra.sweeper), dict(full.hydra.runtime.choices)
    with open_dict(full):
        del full["hydra"]
    return build_job(validate(full), pairing, choices, processes or Processes())


# What `make test`'s pytest-xdist workers (--dist loadgroup) must run on one worker, one test after another:
# the modules whose services take the fixed ports of the README and the compose stack (MLflow 5000, Ray 8265/10001,
# Optuna 8080), the native cluster's tests (free ports, one cluster for the module), the modules whose expensive
# module fixture would otherwise run once per worker, and the local Ray instances (two started at once can pick the
# same port: ray-project/ray#53906).
XDIST_GROUPS = {"test_cluster_readme.py": "services", "test_docker.py": "services", "test_cluster.py": "cluster",
                "test_dashboard.py": "dashboard", "test_overfit.py": "overfit", "test_mlflow_native.py": "mlflow_native"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups into the tests' ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = XDIST_GROUPS.get(item.path.name) or ("local_ray" if item.get_closest_marker("local_ray") else None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


# Ports a head takes by default (10001, 52365) or picks at random: free ones, since pytest-xdist's workers each start a head.
EXPLICIT_PORTS = ("ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
                  "runtime-env-agent-port", "node-manager-port", "object-manager-port")


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One Ray head (2 CPUs, token authentication) for the session's sweeps, stopped at the end.

    A sweep's driver that finds ``RAY_ADDRESS`` connects in under a second where a local Ray takes
    about 8 s to start and stop; the sweeps of the local default (a killed launcher that takes its
    Ray with it, the installed package) leave the variable out. Yields the drivers' environment.
    """
    workdir = tmp_path_factory.mktemp("ray")
    token = workdir / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    session = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths under it must stay below 108 bytes
    port = free_port()
    first_worker_port = 20000 + 1000 * int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    environment = {"RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    command = [console_script("ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--port", str(port), "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false",
               *(arg for name in EXPLICIT_PORTS for arg in (f"--{name}", str(free_port()))), "--temp-dir", session,
               # worker ports of their own per xdist worker (gw0, gw1, ...), apart from a local Ray's default 10002-19999
               "--min-worker-port", str(first_worker_port), "--max-worker-port", str(first_worker_port + 999)]
    log = workdir / "head.log"
    with log.open("wb") as out:
        head = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **environment},
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the tests' Ray head did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield environment
    finally:
        import ray

        ray.shutdown()  # this process's own connection, where an in-process sweep made one
        stop_process_group(head.pid, grace=2)
        shutil.rmtree(session, ignore_errors=True)


@pytest.fixture
def ray_address(ray_head: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """The session's Ray head for this test's sweeps (drivers started by the test inherit the environment)."""
    for key, value in ray_head.items():
        monkeypatch.setenv(key, value)
    return ray_head["RAY_ADDRESS"]
