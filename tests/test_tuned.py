"""The tuned comparison (``hydra.sweeper.arms``): each arm's nuisance settings searched with the same sampler and budget,
its best (mean over the tuning seeds) confirmed on fresh seeds, best against best. Pure logic first, then one small tuned
sweep of the curves app end to end on Ray, checked against the app's own formula."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from ghm.comparison.pairing import Pairing
from ghm.comparison.power import SequentialPlan
from ghm.comparison.record import FAILED, FINISHED, PRUNED, SweepRecord, TrialRecord
from ghm.comparison.settings import compare_settings, setting_of
from ghm.comparison.tuning import confirmation_seeds, edge_warnings, rising_warnings, summarize_arm
from ghm.sweep.config import ArmConf, SweeperConf, TuningSettings
from ghm.sweep.search import OPTUNA_NUMBER, ArmSearch, Role, seed_repeater
from ghm.sweep.space import parse_search_space
from tests.apps.curves import final_value
from tests.conftest import ROOT

FOCAL = Pairing.declare("loss=focal")
SPACE = {"train.lr": {"name": "FloatDistribution", "attributes": {"low": 0.001, "high": 0.1, "log": True, "step": None}},
         "warmup": {"name": "IntDistribution", "attributes": {"low": 0, "high": 500, "log": False, "step": 1}}}


def job(number: int, arm: str, search_trial: int | None, seed: int, objective: float | None, state: str = FINISHED,
        **params: object) -> TrialRecord:
    loss = "focal" if arm == "focal" else "ghm"
    return TrialRecord(number, {"loss": loss, **params, "seed": seed}, state, objective, seed, loss == "focal", arm=arm,
                       search_trial=search_trial)


def test_an_arms_best_is_its_mean_over_the_tuning_seeds_alone() -> None:
    jobs = [job(0, "ghm", 0, 0, 0.30, **{"train.lr": 0.01, "warmup": 100}), job(1, "ghm", 0, 1, 0.20, **{"train.lr": 0.01, "warmup": 100}),
            job(2, "ghm", 1, 0, 0.40, **{"train.lr": 0.02, "warmup": 200}), job(3, "ghm", 1, 1, 0.00, **{"train.lr": 0.02, "warmup": 200}),
            job(4, "ghm", 2, 0, 0.26, **{"train.lr": 0.03, "warmup": 300}), job(5, "ghm", 2, 1, 0.26, **{"train.lr": 0.03, "warmup": 300}),
            job(6, "ghm", 3, 0, 0.90, PRUNED, **{"train.lr": 0.04, "warmup": 400}),
            job(8, "ghm", 4, 0, None, FAILED, **{"train.lr": 0.05, "warmup": 400}),
            # a confirmation job (no search trial) of a better setting, and a job of the other arm: neither is this arm's search
            job(40, "ghm", None, 2, 0.99, **{"train.lr": 0.02, "warmup": 200}),
            job(20, "focal", 0, 0, 0.95, **{"train.lr": 0.01, "warmup": 0})]
    arm = summarize_arm("ghm", ["loss=ghm"], 5, [0, 1], SPACE, jobs)
    assert [t.state for t in arm.trials] == [FINISHED, FINISHED, FINISHED, PRUNED, FAILED]
    assert [t.mean for t in arm.trials] == pytest.approx([0.25, 0.20, 0.26, None, None])  # a pruned seed's 0.9 is no mean
    assert arm.best == {"train.lr": 0.03, "warmup": 300} and arm.best_value == pytest.approx(0.26)
    assert arm.curve == pytest.approx([0.25, 0.25, 0.26, 0.26, 0.26])
    assert arm.counts == {FINISHED: 3, PRUNED: 1, FAILED: 1}
    assert "budget 5 trials x 2 seeds (3 finished, 1 pruned, 1 failed); best 0.2600: train.lr=0.03 warmup=300" in arm.line()
    minimizing = summarize_arm("ghm", ["loss=ghm"], 5, [0, 1], SPACE, jobs, direction="minimize")
    assert minimizing.best == {"train.lr": 0.02, "warmup": 200}


def test_a_best_at_the_edge_of_its_range_is_flagged_on_the_ranges_scale() -> None:
    assert edge_warnings("ghm", {"train.lr": 0.0011, "warmup": 250}, SPACE)[0].startswith(
        "WARNING: ghm's best train.lr=0.0011 lies at the lower edge of its range [0.001, 0.1]")
    assert edge_warnings("ghm", {"train.lr": 0.0015, "warmup": 250}, SPACE) == []  # 9% of the log range: inside
    assert "upper edge" in edge_warnings("ghm", {"train.lr": 0.01, "warmup": 490}, SPACE)[0]
    categorical = {"bins": {"name": "CategoricalDistribution", "attributes": {"choices": [10, 20, 30]}}}
    assert edge_warnings("ghm", {"bins": 30}, categorical) == []


def test_a_curve_still_rising_in_the_last_third_of_its_budget_is_flagged() -> None:
    assert rising_warnings("focal", [0.1, 0.2, 0.3, 0.3, 0.3, 0.3], 6) == []
    warning = rising_warnings("focal", [0.1, 0.2, 0.3, 0.3, 0.3, 0.35], 6)
    assert warning and "still rises in the last third of its budget (by +0.0500), trials 5-6" in warning[0]
    assert rising_warnings("focal", [None, None, None, None, 0.2], 5)  # nothing finished before the last third
    assert rising_warnings("loss", [0.5, 0.4, 0.4, 0.3], 4, sign=-1)  # minimising: a falling curve still improves


def test_confirmation_seeds_are_fresh_and_the_verdict_compares_confirmations_only() -> None:
    assert confirmation_seeds([0, 1], 5) == [2, 3, 4, 5, 6] and not set(confirmation_seeds([3, 0], 2)) & {0, 3}
    jobs = [job(0, "focal", 0, 0, 0.9), job(1, "ghm", 0, 0, 0.1),  # search jobs on a tuning seed: not part of the verdict
            job(10, "focal", None, 2, 0.30), job(11, "focal", None, 3, 0.32), job(12, "ghm", None, 2, 0.35), job(13, "ghm", None, 3, 0.36)]
    [comparison] = compare_settings(jobs, FOCAL)
    assert comparison.setting == "ghm" == setting_of(jobs[-1], FOCAL) and comparison.seeds == (2, 3)
    assert comparison.mean == pytest.approx(0.045)


def test_the_repeater_tells_the_search_the_mean_only_when_every_seed_finished() -> None:
    class Recorder:
        metric, mode = "objective", "max"

        def __init__(self) -> None:
            self.told: list[tuple[str, dict | None, bool]] = []
            self.asked = 0

        def suggest(self, trial_id: str) -> dict:
            self.asked += 1
            return {"x": self.asked}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            self.told.append((trial_id, result, error))

    recorder = Recorder()
    repeater = seed_repeater(recorder, 2)
    configs = {trial: repeater.suggest(trial) for trial in ("a", "b", "c", "d", "e", "f")}
    assert [configs[t]["__trial_index__"] for t in "abcdef"] == [0, 1, 0, 1, 0, 1] and recorder.asked == 3
    repeater.on_trial_complete("a", {"objective": 0.2, "trial_state": FINISHED})
    repeater.on_trial_complete("b", {"objective": 0.4, "trial_state": FINISHED})
    repeater.on_trial_complete("c", {"objective": 0.9, "trial_state": FINISHED})
    repeater.on_trial_complete("d", {"objective": 0.5})  # stopped by the scheduler: no final state
    repeater.on_trial_complete("e", {"objective": 0.9, "trial_state": FINISHED})
    repeater.on_trial_complete("f", None, error=True)
    assert recorder.told[0][0] == "a" and recorder.told[0][1] == {"objective": pytest.approx(0.3), "trial_state": FINISHED}
    assert recorder.told[1] == ("c", None, False) and recorder.told[2] == ("e", None, True)  # pruned, failed


def test_an_arms_jobs_are_numbered_by_search_trial_and_seed() -> None:
    search = ArmSearch("ghm", {"loss": "ghm"}, parse_search_space([], {"train.lr": "tag(log, interval(0.001, 0.1))"}), None,
                       "sqlite://", "s-ghm", 4, [0, 1], "seed", 16, "mAP")
    number, params = search.trial({"train.lr": 0.02, OPTUNA_NUMBER: 3, "__trial_index__": 1})
    assert number == 16 + 3 * 2 + 1 and params == {"loss": "ghm", "train.lr": 0.02, "seed": 1}
    assert search.role(number) == Role("ghm", 3, ())


def test_a_tuned_comparison_is_checked_before_work() -> None:
    arms = {"focal": ArmConf(["loss=focal"]), "ghm": ArmConf(["loss=ghm"], {"loss.reg.mu": "interval(0.01, 0.5)"})}
    SweeperConf(sampler={}, arms=arms, confirm_seeds=3).check()
    for changes, message in (({"arms": {"focal": arms["focal"]}}, "two arms or more"),
                             ({"baseline": "loss=bce"}, "must be one of the arms' overrides"),
                             ({"confirm_seeds": 1}, "confirm_seeds must be >= 2"),
                             ({"search": "grid"}, "must be auto or optuna"),
                             ({"params": {"loss.reg.mu": "interval(0.1, 1)"}}, "repeats"),
                             ({"arms": {**arms, "bce": ArmConf([])}}, "must say what the arm is"),
                             ({"tuning": TuningSettings(budget=0)}, "budget=0 searches nothing"),
                             ({"arms": {}, "conditions": {"x": "1,2"}}, "conditions are crossed with hydra.sweeper.arms")):
        with pytest.raises(ValueError, match=message):
            SweeperConf(sampler={}, **{"arms": arms, "confirm_seeds": 3, **changes}).check()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_address")
def test_a_tuned_sweep_confirms_each_arms_best_on_fresh_seeds(tmp_path: Path) -> None:
    """The curves app: the baseline peaks at 0.5 at lr 0.01, the candidate at x at lr 0.1. Six search trials per arm on seeds
    0 and 1, the bests confirmed on seeds 2-4; every number is recomputed from the app's formula, not read from the sweep."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run([sys.executable, "curves.py", "--config-name", "curves_tuned", "-m", "hydra.sweeper.study_name=tuned",
                             "hydra.sweeper.pruner.enabled=false", "hydra.sweeper.effect_of_interest=0.05", f"log={tmp_path / 'log'}",
                             f"+mlflow_uri={uri}", f"+mlflow.tracking_uri={uri}", "+mlflow.experiment_name=tuned",
                             f"hydra.sweep.dir={tmp_path / 'multirun'}", f"hydra.sweeper.ray.storage_path={tmp_path / 'ray'}",
                             f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}"],
                            cwd=ROOT / "tests" / "apps", capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    output = result.stdout + result.stderr
    client = MlflowClient(uri)
    parent = client.search_runs([client.get_experiment_by_name("tuned").experiment_id], "tags.sweep_parent = 'tuned'")[0]
    record = SweepRecord.from_json(json.loads(Path(client.download_artifacts(parent.info.run_id, "sweep.json", str(tmp_path))).read_text()))
    assert record.search == "tuned" and [a.name for a in record.tuning] == ["baseline", "candidate"]

    executions = [dict(part.split("=") for part in line.split()) for line in (tmp_path / "log").read_text().splitlines()]
    assert len(executions) == 2 * 6 * 2 + 2 * 3  # equal budgets: 6 search trials x 2 seeds per arm, then 3 seeds per best
    for arm in record.tuning:
        study = optuna.load_study(study_name=f"tuned-{arm.name}", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
        assert arm.budget == 6 and len(study.trials) == 6 and len(arm.trials) == 6 and arm.seeds == [0, 1]
        loss = "baseline" if arm.name == "baseline" else "candidate"
        means = []
        for trial in study.trials:  # each search trial ran once on each tuning seed; its value is their mean
            x = trial.params.get("x", 1.0)
            values = [final_value(loss, x, seed, trial.params["lr"], 0.01 if loss == "baseline" else 0.1, 0.01) for seed in (0, 1)]
            assert trial.value == pytest.approx(sum(values) / 2)
            means.append((trial.value, trial.params))
        best_value, best = max(means, key=lambda m: m[0])
        assert arm.best == best and arm.best_value == pytest.approx(best_value)
        assert arm.curve == pytest.approx([max(v for v, _ in means[: i + 1]) for i in range(6)])

    confirmations = [t for t in record.trials if t.search_trial is None]
    assert sorted({t.seed for t in confirmations}) == [2, 3, 4]  # fresh seeds, none a tuning seed
    bests = {a.name: a.best for a in record.tuning}
    expected = [final_value("candidate", bests["candidate"]["x"], s, bests["candidate"]["lr"], 0.1, 0.01)
                - final_value("baseline", 1.0, s, bests["baseline"]["lr"], 0.01, 0.01) for s in (2, 3, 4)]
    [comparison] = record.comparisons
    assert comparison.setting == "candidate" and comparison.differences == pytest.approx(expected)
    assert comparison.p_improve == 1.0 and not math.isnan(comparison.mde) and comparison.seeds_needed is not None
    assert "Tuned comparison: each arm (baseline, candidate) searched lr and its own parameters" in output
    assert "Arm candidate (loss=candidate): budget 6 trials x 2 seeds (6 finished); best" in output
    assert "P(better)" in output and "seeds@0.05" in output
    history = client.get_metric_history(parent.info.run_id, "tuning_best_so_far/candidate")
    assert [m.step for m in history] == list(range(1, 7)) and history[-1].value == pytest.approx(bests and record.tuning[1].best_value)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_address")
def test_fixed_arms_compare_in_each_condition_with_planned_looks(tmp_path: Path) -> None:
    """Arms at their own given settings (no search), crossed with a condition (hydra.sweeper.conditions: the candidate's
    peak x), confirmed with a sequential rule. Without noise, where the arms differ by 0.1 the first look stops, where they
    tie no look does, so the looks go on to the planned maximum; the report states the rule and the level it used."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run([sys.executable, "curves.py", "--config-name", "curves_arms", "-m", "noise=0.0",
                             "hydra.sweeper.study_name=fixed", "hydra.sweeper.sequential.enabled=true", "hydra.sweeper.sequential.batch=3",
                             "hydra.sweeper.sequential.max_seeds=6", f"log={tmp_path / 'log'}", f"+mlflow_uri={uri}",
                             f"+mlflow.tracking_uri={uri}", "+mlflow.experiment_name=fixed", f"hydra.sweep.dir={tmp_path / 'multirun'}",
                             f"hydra.sweeper.ray.storage_path={tmp_path / 'ray'}"],
                            cwd=ROOT / "tests" / "apps", capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    client = MlflowClient(uri)
    parent = client.search_runs([client.get_experiment_by_name("fixed").experiment_id], "tags.sweep_parent = 'fixed'")[0]
    record = SweepRecord.from_json(json.loads(Path(client.download_artifacts(parent.info.run_id, "sweep.json", str(tmp_path))).read_text()))
    assert record.search == "arms" and record.tuning == []
    assert sorted({t.seed for t in record.trials}) == list(range(6))  # 2 looks of 3 seeds: the tie never stops them
    assert len(record.trials) == 2 * 2 * 6
    by_setting = {c.setting: c for c in record.comparisons}
    assert set(by_setting) == {"candidate x=0.5", "candidate x=0.6"}
    for x in (0.5, 0.6):
        expected = final_value("candidate", x, 0, 0.1, 0.1, 0.0) - final_value("baseline", x, 0, 0.01, 0.01, 0.0)
        assert by_setting[f"candidate x={x}"].differences == pytest.approx([expected] * 6)
    assert by_setting["candidate x=0.5"].mean == 0 and by_setting["candidate x=0.6"].mean == pytest.approx(0.1)
    level = SequentialPlan.batches(3, 3, 6).level_at(6)
    assert all(c.confidence == pytest.approx(1 - level) for c in record.comparisons)
    assert any("Sequential confirmation: Pocock over 2 planned looks at 3, 6 seeds" in note and "the planned maximum was reached" in note
               for note in record.notes)
    assert any(note.startswith("Fixed arms: each arm ran at its own given settings") for note in record.notes)


@pytest.mark.slow
@pytest.mark.local_ray
def test_a_killed_tuned_sweep_resumes_with_equal_budgets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed in the middle of the first arm's search, the same command resumes it: each arm ends with its budget of search
    trials, each on both tuning seeds, and a search trial the kill left half-run is failed in its study, not counted."""
    import os
    import signal
    import time

    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # the launcher starts its own local Ray, which dies with it
    log = tmp_path / "log"
    command = [sys.executable, "curves.py", "--config-name", "curves_tuned", "-m", "hydra.sweeper.study_name=resumed",
               "hydra.sweeper.pruner.enabled=false", "hydra.sweeper.n_jobs=1", "hydra.sweeper.tuning.budget=4", "seconds_per_epoch=0.5",
               f"log={log}", f"hydra.sweep.dir={tmp_path / 'multirun'}", f"hydra.sweeper.ray.storage_path={tmp_path / 'ray'}",
               f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}"]
    first = subprocess.Popen(command, cwd=ROOT / "tests" / "apps", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # after 3 jobs: the second search trial is half-run
    first.wait()
    result = subprocess.run(command, cwd=ROOT / "tests" / "apps", capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    for arm in ("baseline", "candidate"):
        study = optuna.load_study(study_name=f"resumed-{arm}", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(complete) == 4 and all(t.state == optuna.trial.TrialState.FAIL for t in study.trials if t not in complete)
    assert "Arm baseline (loss=baseline): budget 4 trials x 2 seeds (4 finished)" in result.stdout + result.stderr
    assert "Arm candidate (loss=candidate): budget 4 trials x 2 seeds (4 finished)" in result.stdout + result.stderr
