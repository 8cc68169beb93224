"""Shared helpers: compose the project's Hydra config as launch.py does, on small data, and build a job from it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from ghm.cluster.local_head import HEADS_DIR_ENV, LOCAL_ONLY, WarmHead, all_heads
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
# Optuna 8080), and with them the tests that start Ray nodes of their own (the native cluster, the installed package's
# sweep: beside the compose stacks' sweeps their `ray start` timed out at Ray's fixed 30 s, "GCS overloaded", at a load
# of 10 on two cores), the modules whose expensive module fixture would otherwise run once per worker, and the local Ray
# instances (two started at once can pick the same port: ray-project/ray#53906).
XDIST_GROUPS = {"test_cluster_readme.py": "services", "test_docker.py": "services", "test_docker_hosts.py": "services",
                "test_cluster.py": "services", "test_install.py": "services",
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


# The test run's warm local Ray heads, shared by both pytest-xdist workers as one user's sweeps share theirs: sweeps without
# an address (the README's default) join them, and so do the tests' drivers through `ray_head`. Ray's local-only mode for
# every Ray process of the run (servers on 127.0.0.1, drivers that reach them there), set before Ray is imported.
# The controller sets the folder before it starts the workers, which inherit it.
HEADS_DIR = Path(os.environ.setdefault("GHM_TEST_HEADS_DIR", str(Path(tempfile.gettempdir()) / f"ghm-test-heads-{os.getpid()}")))
os.environ[HEADS_DIR_ENV] = str(HEADS_DIR)
os.environ.update(LOCAL_ONLY)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The run's warm heads stop with it (in the controller, once every worker is done)."""
    if not hasattr(session.config, "workerinput") and HEADS_DIR.is_dir():
        for head in all_heads():
            head.stop()
        shutil.rmtree(HEADS_DIR, ignore_errors=True)


# How long the run's head waits without a driver. Sweeps without an address in the tests set the shared head's idle time
# too (the last driver's setting wins, as for a user's sweeps), so `ray_head` sets it back, and starts the head again if
# it stopped, whenever a test reads it. `pytest_sessionfinish` stops it; a killed run's head stops itself after this.
RUN_HEAD_IDLE_S = 1800


class RunHead(Mapping[str, str]):
    """The run's warm head as a driver's environment, acquired at every read: a head that stopped while no test used it
    (a worker may run tests without Ray for longer than any idle time) is started again instead of leaving a stale
    address."""

    def __init__(self) -> None:
        self.head = WarmHead()
        self._environment()  # up from the first test that needs it

    def _environment(self) -> dict[str, str]:
        record, _ = self.head.acquire(idle_timeout_s=RUN_HEAD_IDLE_S, num_cpus=4)
        return self.head.environment(record)

    def __getitem__(self, key: str) -> str:
        return self._environment()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._environment())

    def __len__(self) -> int:
        return len(self._environment())


@pytest.fixture(scope="session")
def ray_head() -> Mapping[str, str]:
    """The run's warm head (4 CPUs: two workers' sweeps at once), started by the first test that needs it: the drivers'
    environment. A sweep's driver that finds ``RAY_ADDRESS`` connects in about a second where a local Ray takes 8-15 s
    to start and 4 s to stop."""
    return RunHead()


@pytest.fixture
def ray_address(ray_head: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """The session's Ray head for this test's sweeps (drivers started by the test inherit the environment)."""
    for key, value in ray_head.items():
        monkeypatch.setenv(key, value)
    return ray_head["RAY_ADDRESS"]
