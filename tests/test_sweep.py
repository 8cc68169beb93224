"""The Hydra sweeper on Ray Tune: grids, Optuna with pruning, failures, resume, baselines, MLflow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, SMALL_DATA

APPS = ROOT / "tests" / "apps"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_address")]  # sweeps on the session's Ray head


def run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    return result


def places(tmp_path: Path, name: str) -> list[str]:
    return [f"hydra.sweep.dir={tmp_path / name}", f"hydra.sweeper.ray.storage_path={tmp_path / 'ray'}",
            f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}"]


def test_optuna_search_prunes_and_records_failed_trials(tmp_path: Path) -> None:
    log = tmp_path / "executions.txt"
    result = run(["curves.py", "--config-name", "curves_search", "-m", "hydra.sweeper.study_name=curves",
                  "hydra.sweeper.max_failure_rate=1.0", "fail_above=0.85", "seconds_per_epoch=0.3", f"log={log}",
                  *places(tmp_path, "curves")], APPS)
    trials = optuna.load_study(study_name="curves", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    states = [t.state for t in trials]
    assert len(trials) == 10
    assert all((t.state == optuna.trial.TrialState.FAIL) == (t.params["x"] > 0.85) for t in trials)
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1 and states.count(optuna.trial.TrialState.COMPLETE) >= 1
    completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    for t in completed:
        assert abs(t.value - t.params["x"]) < 1e-9  # the final value, not an intermediate one
    assert len(log.read_text().splitlines()) == len(completed)  # pruned trials stopped before the end
    assert "failed" in result.stdout + result.stderr


def test_too_many_failures_fail_the_sweep(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "curves.py", "-m", "x=0.5,0.9", "fail_above=0.85", f"log={tmp_path / 'log'}",
                             *places(tmp_path, "fail")], cwd=APPS, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "1 of 2 trials failed, above hydra.sweeper.max_failure_rate=0.0" in result.stderr
    # The console speaks Hydra: each trial by its overrides, its result, the progress; the task's traceback; no Ray Tune tables.
    output = result.stdout + result.stderr
    assert "#0 : x=0.5\n" in output and "#1 : x=0.9 -> ValueError: x=0.9 is above 0.85 (failed)" in output
    progress = [line for line in output.splitlines() if "progress: " in line]
    assert progress[-1].endswith("progress: 1 finished, 0 pruned, 1 failed, 0 running; best objective=0.5 (#0)")
    # The driver prints the traceback with the trial's result, not Ray's log monitor, which an exiting driver may outrun.
    driver = result.stdout if "progress: " in result.stdout else result.stderr
    raised = driver.find('raise ValueError(f"x={cfg.x} is above {cfg.fail_above}")')
    assert 0 < raised < driver.rindex("progress: 1 finished, 0 pruned, 1 failed") and "Trial status" not in output
    # Ray Tune's result files stay (its experiment analysis reads them); its TensorBoard logger, which imports torch, does not run.
    trial_dirs = [p.parent for p in (tmp_path / "ray").rglob("params.json")]
    assert len(trial_dirs) == 2 and all((d / "result.json").is_file() and (d / "progress.csv").is_file() for d in trial_dirs)
    assert not list((tmp_path / "ray").rglob("events.out.tfevents*"))


def test_a_killed_sweep_resumes_without_losing_or_repeating_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS")  # the default: the warm local head, which outlives the killed launcher (its trials do not)
    log = tmp_path / "executions.txt"
    # x=0.9 fails first (fail_above): a failed trial is a result, kept as failed when the sweep resumes
    command = [sys.executable, "curves.py", "-m", "x=0.9,0.1,0.2,0.3,0.4,0.5", "hydra.sweeper.n_jobs=1", "hydra.sweeper.study_name=resume",
               "fail_above=0.85", "hydra.sweeper.max_failure_rate=0.5", "seconds_per_epoch=1.0", f"log={log}", *places(tmp_path, "resume")]
    first = subprocess.Popen(command, cwd=APPS, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # the launcher and its local Ray, mid-sweep
    first.wait()
    done_before = len(log.read_text().splitlines())
    assert 2 <= done_before < 5
    second = subprocess.run(command, cwd=APPS, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming sweep resume" in second.stdout + second.stderr
    assert "trials 0 failed before and stay failed on resume" in second.stdout + second.stderr  # and how to run it again
    executions = sorted(log.read_text().splitlines())
    assert executions == [f"x={x} seed=0" for x in (0.1, 0.2, 0.3, 0.4, 0.5)]  # each exactly once


def test_grid_sweep_trains_pairs_with_the_baseline_and_reuses_it(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["train=smoke", "train.figures=false", *SMALL_DATA, f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=sweep"]
    first = run(["launch.py", "-m", "loss=focal,ghm", "seed=0,1", *common, *places(tmp_path, "grid")], ROOT)
    assert "loss=ghm" in first.stdout and "95% t interval" in first.stdout
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sweep").experiment_id
    parents = client.search_runs([experiment], filter_string="tags.search = 'grid'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.metrics["trials_finished"] == 4 and parent.data.metrics["n/loss_ghm"] == 2
    assert "diff/loss_ghm" in parent.data.metrics
    assert {"comparison.txt", "sweep.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4
    assert {(c.data.tags["param.loss"], c.data.tags["param.seed"]) for c in children} == {
        ("focal", "0"), ("focal", "1"), ("ghm", "0"), ("ghm", "1")}
    assert all(c.data.tags["trial_state"] == "finished" and c.info.status == "FINISHED" for c in children)
    keys = {(c.data.tags["param.loss"], c.data.tags["param.seed"]): c.data.tags["pair_key"] for c in children}
    assert keys[("focal", "0")] == keys[("ghm", "0")] != keys[("focal", "1")] == keys[("ghm", "1")]

    second = run(["launch.py", "-m", "loss=focal,ghmc_sl1", "seed=0,1", *common, *places(tmp_path, "grid2")], ROOT)
    assert "baseline {'loss': 'focal', 'seed': 0} reused from MLflow run" in second.stdout + second.stderr
    parent2 = client.search_runs([experiment], filter_string="tags.search = 'grid'", order_by=["attributes.start_time DESC"])[0]
    assert parent2.data.metrics["trials_reused"] == 2 and parent2.data.metrics["trials_finished"] == 2
    assert "loss=ghmc_sl1" in second.stdout

    # The first command again: that sweep finished, so this is a new one (its baselines reused), not its old results.
    third = run(["launch.py", "-m", "loss=focal,ghm", "seed=0,1", *common, *places(tmp_path, "grid3")], ROOT)
    assert f"sweep {parent.info.run_name} already ran: this is a new sweep, {parent.info.run_name}-2" in third.stdout + third.stderr
    parent3 = client.search_runs([experiment], filter_string=f"tags.sweep_parent = '{parent.info.run_name}-2'")[0]
    assert parent3.data.metrics["trials_reused"] == 2 and parent3.data.metrics["trials_finished"] == 2


def test_search_then_confirm_the_best_setting_against_the_baseline_on_fresh_seeds(tmp_path: Path) -> None:
    result = run(["curves.py", "--config-name", "curves_search", "-m", "hydra.sweeper.study_name=confirm", "hydra.sweeper.n_trials=4",
                  "hydra.sweeper.confirm_seeds=2", "hydra.sweeper.baseline='loss=baseline'", "hydra.sweeper.pruner.enabled=false",
                  f"log={tmp_path / 'log'}", *places(tmp_path, "confirm")], APPS)
    trials = optuna.load_study(study_name="confirm", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    best_x = max(t.params["x"] for t in trials)
    executions = (tmp_path / "log").read_text().splitlines()
    assert sorted(executions[4:]) == sorted([f"x={best_x} seed=1", f"x={best_x} seed=2", "x=1.0 seed=1", "x=1.0 seed=2"])
    row = next(line for line in result.stdout.splitlines() if line.startswith(f"x={best_x}"))
    n, candidate, baseline, diff = row.split()[1:5]
    assert int(n) == 2 and abs(float(candidate) - best_x) < 1e-4 and float(baseline) == 0.5
    assert abs(float(diff) - (best_x - 0.5)) < 1e-4


def test_a_trial_whose_worker_dies_is_retried(tmp_path: Path) -> None:
    log = tmp_path / "executions.txt"
    run(["curves.py", "-m", "x=0.1,0.2", "hydra.sweeper.n_jobs=1", f"die_once={tmp_path / 'died'}", f"log={log}",
         "hydra.sweeper.ray.max_retries=1", *places(tmp_path, "die")], APPS)
    assert (tmp_path / "died").exists()  # the first attempt's worker did die
    assert sorted(log.read_text().splitlines()) == ["x=0.1 seed=0", "x=0.2 seed=0"]  # retried, and finished once each


@pytest.mark.local_ray
def test_a_resumed_search_leaves_no_duplicate_and_no_running_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS")  # an embedded local Ray (no warm head), which dies with the killed launcher
    log, uri = tmp_path / "executions.txt", f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [sys.executable, "curves.py", "--config-name", "curves_search", "-m", "hydra.sweeper.study_name=resumed",
               "hydra.sweeper.ray.warm_head=false",
               "hydra.sweeper.n_trials=5", "hydra.sweeper.n_jobs=1", "hydra.sweeper.pruner.enabled=false", "seconds_per_epoch=1.0",
               f"log={log}", f"+mlflow_uri={uri}", f"+mlflow.tracking_uri={uri}", "+mlflow.experiment_name=resumed",
               *places(tmp_path, "resumed")]
    first = subprocess.Popen(command, cwd=APPS, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    started = Path(f"{log}.started")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not started.exists() or len(started.read_text().split()) < 3):
        time.sleep(0.5)
    time.sleep(1.5)  # the third trial is mid-way: its MLflow run and its Optuna trial are RUNNING
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    run(command[1:], APPS)

    study = optuna.load_study(study_name="resumed", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # n_trials ran, and a trial the killed launcher finished after Ray Tune's last snapshot is kept, not run again.
    assert len(completed) >= 5 and len(log.read_text().splitlines()) == len(completed)
    # An ask the killed launcher never ran cannot be removed from a study: it is failed, never left RUNNING.
    assert all(t.state == optuna.trial.TrialState.FAIL and t.value is None for t in study.trials if t not in completed)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("resumed").experiment_id
    (parent,) = client.search_runs([experiment], filter_string="tags.sweep_parent = 'resumed'")
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert parent.info.status == "FINISHED"
    numbers = [int(c.data.tags["trial"]) for c in children]
    assert len(numbers) == len(set(numbers)) and set(numbers) >= {t.number for t in completed}  # one run per trial
    assert all(c.info.status != "RUNNING" for c in children)
    for child in children:
        if int(child.data.tags["trial"]) in {t.number for t in completed}:
            assert child.info.status == "FINISHED" and child.data.tags["trial_state"] == "finished"
