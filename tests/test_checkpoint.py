"""A run resumes only its own checkpoint, concurrent runs never share one, and a fresh MLflow store survives concurrent runs."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from ghm.detection.checkpoint import Checkpoint, CheckpointError, RunIdentity
from tests.conftest import ROOT, SMALL_DATA


def identity(code: str = "v1", **changes: object) -> RunIdentity:
    config = OmegaConf.merge({"seed": 0, "loss": {"cls": {"bins": 30}}, "train": {"epochs": 3, "resume": True},
                              "checkpoint_dir": "/runs/a", "paths": {"root_dir": "/here"}}, changes)
    return RunIdentity.of(config, code)


def test_a_run_resumes_its_own_checkpoint_wherever_it_was_written_from(tmp_path: Path) -> None:
    Checkpoint(tmp_path, identity()).save({"epoch": 2})
    moved = identity(checkpoint_dir="/elsewhere", paths={"root_dir": "/there"}, train={"resume": True})
    assert Checkpoint(tmp_path, moved).load()["epoch"] == 2
    assert Checkpoint(tmp_path / "none", identity()).load() is None


@pytest.mark.parametrize(("other", "named"), [
    (identity(seed=1), "seed=0 (this run: 1)"),
    (identity(loss={"cls": {"bins": 20}}), "loss.cls.bins=30 (this run: 20)"),
    (identity(code="v2"), "code version v1 (this run: v2)"),
])
def test_another_runs_checkpoint_is_refused_naming_what_differs(tmp_path: Path, other: RunIdentity, named: str) -> None:
    Checkpoint(tmp_path, identity()).save({"epoch": 2})
    with pytest.raises(CheckpointError, match="belongs to another run") as refused:
        Checkpoint(tmp_path, other).load()
    assert named in str(refused.value)


def test_a_checkpoint_without_identity_is_refused(tmp_path: Path) -> None:
    torch.save({"epoch": 1}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="records no run identity"):
        Checkpoint(tmp_path, identity()).load()


def test_a_checkpoint_directory_in_use_is_refused(tmp_path: Path) -> None:
    with Checkpoint(tmp_path, identity()).held(), \
            pytest.raises(CheckpointError, match=r"in use by another running process \(pid \d+\)"), \
            Checkpoint(tmp_path, identity(seed=1)).held():
        pass
    with Checkpoint(tmp_path, identity(seed=1)).held():  # released when the holder ends
        pass


def create_runs(uri: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    from ghm.tracking.store import experiment_id, tracking_client

    barrier.wait()  # every process opens the fresh store at the same moment
    client = tracking_client(uri)
    client.create_run(experiment_id(client, "concurrent"))


@pytest.mark.slow
def test_processes_opening_a_fresh_store_at_once_all_get_it(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    processes = [context.Process(target=create_runs, args=(uri, barrier)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    client = MlflowClient(uri)
    assert len(client.search_runs([client.get_experiment_by_name("concurrent").experiment_id])) == 4


@pytest.mark.slow
def test_two_runs_started_at_once_keep_their_own_folders_and_both_track(tmp_path: Path) -> None:
    # The launch folder holds Hydra's run folders and a fresh embedded MLflow store: the defaults of a user's first runs.
    command = [sys.executable, str(ROOT / "launch.py"), "train=smoke", "train.figures=false", "loss=focal", *SMALL_DATA,
               f"paths.cache_dir={ROOT / '.cache'}"]
    runs = [subprocess.Popen([*command, f"seed={seed}"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for seed in (0, 1)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [o[-3000:] for o in outputs]
    checkpoints = sorted(tmp_path.glob("outputs/*/*/checkpoints/last.pt"))
    assert len(checkpoints) == 2
    seeds = {torch.load(c, weights_only=True)["identity"]["config"]["seed"] for c in checkpoints}
    assert seeds == {"0", "1"}  # each folder holds its own run's checkpoint
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ghm").experiment_id])
    assert sorted((r.data.params["seed"], r.info.status) for r in runs) == [("0", "FINISHED"), ("1", "FINISHED")]


class Tampered:
    """What a checkpoint written by someone else may hold: unpickling it would run code (here: create ``marker``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.mark.parametrize("kind", ["text", "truncated", "code"])
def test_an_unreadable_checkpoint_is_refused_naming_the_file_and_what_to_do(tmp_path: Path, kind: str) -> None:
    path, marker = tmp_path / "last.pt", tmp_path / "code-ran"
    if kind == "text":
        path.write_text("a few bytes of text\n")
    elif kind == "truncated":
        Checkpoint(tmp_path, identity()).save({"epoch": 1, "model": {"w": torch.zeros(10_000)}})
        path.write_bytes(path.read_bytes()[:20_000])
    else:
        torch.save({"epoch": 1, "model": Tampered(marker)}, path)
    with pytest.raises(CheckpointError) as refused:
        Checkpoint(tmp_path, identity()).load()
    message = str(refused.value)
    assert message.startswith(f"{path} is unreadable as a checkpoint") and "train.resume=false" in message and "remove the file" in message
    assert "weights_only=False" not in message.replace("never loaded with weights_only=False", ""), message  # no advice to run code
    assert not marker.exists()


@pytest.mark.slow  # builds a job in a process of its own
def test_a_run_with_an_unreadable_checkpoint_stops_before_any_work_with_that_message(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_text("a few bytes of text\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run([sys.executable, "launch.py", "train=smoke", *SMALL_DATA, f"hydra.run.dir={run_dir}",
                             f"mlflow.tracking_uri={uri}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert f"checkpoint error: {run_dir / 'checkpoints' / 'last.pt'} is unreadable as a checkpoint" in output
    assert "Traceback" not in output and "UnpicklingError" not in output
    experiment = MlflowClient(uri).get_experiment_by_name("ghm")  # the run's (the backbone's pretraining has a run of its own)
    assert experiment is None or not MlflowClient(uri).search_runs([experiment.experiment_id])


def test_a_resumed_epoch_logs_only_the_metrics_its_run_lacks(tmp_path: Path) -> None:
    """A run killed after its checkpoint but before its metrics reached MLflow logs them on resuming; none twice."""
    from ghm.tracking.run import RunTracker

    tracker = RunTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "resumed")
    tracker.run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    tracker.log_metrics({"mAP": 0.1, "loss": 2.0}, step=1)
    tracker.log_missing_metrics({"mAP": 0.1, "loss": 2.0}, step=1)  # logged before the kill: nothing again
    tracker.log_metrics({"loss": 1.5}, step=2)
    tracker.log_missing_metrics({"mAP": 0.2, "loss": 1.5}, step=2)  # only mAP was missing at step 2
    history = {k: [(m.step, m.value) for m in tracker.client.get_metric_history(tracker.run_id, k)] for k in ("mAP", "loss")}
    assert history == {"mAP": [(1, 0.1), (2, 0.2)], "loss": [(1, 2.0), (2, 1.5)]}
