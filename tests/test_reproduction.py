"""The reproduction report: the paper's rows beside a sweep's results, read back from an MLflow store."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from scipy import stats

from ghm.comparison.pairing import Pairing
from ghm.comparison.record import FINISHED, SweepRecord, TrialRecord
from ghm.comparison.settings import compare_settings
from ghm.reproduction.__main__ import main
from ghm.reproduction.detectors import export
from ghm.reproduction.paper import PaperRow, PaperTable
from ghm.reproduction.report import build_report
from ghm.reproduction.studies import Study

# Three settings on three seeds: CE well below focal loss, GHM-C indistinguishable from it.
MAP = {"ce_sl1": [0.20, 0.22, 0.21], "focal": [0.30, 0.33, 0.31], "ghmc_sl1": [0.31, 0.32, 0.32]}
AP50 = {"focal": [0.61, 0.64, 0.62]}
TABLE = PaperTable("cls", "Classification losses", "loss=focal",
                   (PaperRow("loss=ce_sl1", "CE", 28.6), PaperRow("loss=focal", "FL", 35.6), PaperRow("loss=ghmc_sl1", "GHM-C", 35.8)),
                   "paper")


def store_sweep(client: MlflowClient, experiment: str, objectives: dict[str, list[float]] = MAP, key: str = "loss",
                ap50: dict[str, list[float]] = AP50) -> None:
    """A finished grid sweep as the engine leaves it: a parent run with sweep.json, a child run per trial (tagged as the task tags it)."""
    experiment_id = client.create_experiment(experiment)
    parent = client.create_run(experiment_id, tags={"sweep_parent": "sweep-test", "search": "grid"}).info.run_id
    trials = []
    for number, (value, seed) in enumerate((value, seed) for value in objectives for seed in range(3)):
        baseline = key == "loss" and value == "focal"
        tags = {"mlflow.parentRunId": parent, "pair_key": f"seed-{seed}", "baseline": str(baseline).lower()}
        run = client.create_run(experiment_id, tags=tags).info.run_id
        client.log_metric(run, "mAP", objectives[value][seed])
        if value in ap50:
            client.log_metric(run, "AP50", ap50[value][seed])
        client.set_terminated(run)
        trials.append(TrialRecord(number, {key: value, "seed": seed}, FINISHED, objectives[value][seed], seed, baseline, run))
    record = SweepRecord("sweep-test", "grid", "mAP", "maximize", Pairing.declare("loss=focal"), trials, [])
    client.log_dict(parent, record.to_json(), "sweep.json")
    client.set_terminated(parent)


def row(report: str, name: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(f"| {name} "))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_each_row_gives_the_paper_and_our_paired_difference(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    store_sweep(client, "cls")
    report = build_report(client, (TABLE,))
    ce = row(report, "CE (`loss=ce_sl1`)")
    assert ce[1:3] == ["28.6", "-7.0"] and ce[4] == "3"
    mean = np.mean(MAP["ce_sl1"])
    half = stats.t.ppf(0.975, 2) * np.std(MAP["ce_sl1"], ddof=1) / np.sqrt(3)
    assert ce[3] == f"{mean * 100:.1f} [{(mean - half) * 100:+.1f}, {(mean + half) * 100:+.1f}]"
    differences = np.subtract(MAP["ce_sl1"], MAP["focal"])
    interval = stats.ttest_rel(MAP["ce_sl1"], MAP["focal"]).confidence_interval()
    assert ce[5] == f"{differences.mean() * 100:+.1f} [{interval.low * 100:+.1f}, {interval.high * 100:+.1f}]"
    assert row(report, "FL (`loss=focal`)")[5] == "baseline"
    assert (f"Regime: baseline loss=focal: mAP {np.mean(MAP['focal']):.3f} (0.300-0.330), AP50 {np.mean(AP50['focal']):.3f} "
            "(0.610-0.640) over 3 seeds.") in report and "WARNING" not in report
    # CE < FL and CE < GHM-C are confirmed (every seed far apart); FL < GHM-C is within these seeds' noise.
    assert "2 confirmed, 0 contradicted, 1 not resolved (of 3" in report
    assert re.search(r"- FL < GHM-C \(paper: \+0\.2\): not resolved, ours \+0\.3 \[", report)


def test_a_table_not_yet_run_says_how_to_run_it(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "Not measured yet: run `python launch.py experiments=cls`" in build_report(client, (TABLE,))


def test_the_command_writes_the_report(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store_sweep(MlflowClient(uri), "paper_cls_losses")
    main(["--tracking-uri", uri, "--output", str(tmp_path / "reproduction.md")])
    text = (tmp_path / "reproduction.md").read_text()
    assert text.startswith("# Reproducing the paper's tables") and "| CE (`loss=ce_sl1`) | 28.6 | -7.0 |" in text
    assert "## GHM-C's number of unit regions M" in text and "Not measured yet: run `python launch.py experiments=paper_bins`" in text


def test_a_sweep_without_baseline_trials_pairs_with_the_baseline_runs_of_another(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    store_sweep(client, "cls")
    bins = {"5": [0.28, 0.30, 0.30]}
    store_sweep(client, "bins", bins, key="loss.cls.bins")
    rows = (PaperRow("loss=focal", "FL", 35.6), PaperRow("loss.cls.bins=5", "M = 5", 33.4))
    table = PaperTable("bins", "Unit regions", "loss=focal", rows, "paper")
    report = build_report(client, (table,))
    interval = stats.ttest_rel(bins["5"], MAP["focal"]).confidence_interval()
    difference = np.subtract(bins["5"], MAP["focal"]).mean()
    assert row(report, "M = 5 (`loss.cls.bins=5`)")[5] == f"{difference * 100:+.1f} [{interval.low * 100:+.1f}, {interval.high * 100:+.1f}]"
    assert row(report, "FL (`loss=focal`)")[3].startswith(f"{np.mean(MAP['focal']) * 100:.1f} ")
    assert "over 3 seeds" in report


def test_a_table_whose_baseline_does_not_detect_says_so(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    store_sweep(client, "cls", ap50={"focal": [0.10, 0.12, 0.11]})
    report = build_report(client, (TABLE,))
    assert "AP50 0.110 (0.100-0.120) over 3 seeds.\n\nWARNING: the baseline's AP50 is below 0.5: it does not really detect" in report


def test_a_setting_the_paper_has_no_number_for_follows_with_ours_alone(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    extra = {"fl_ghmr": [0.08, 0.07, 0.09]}
    store_sweep(client, "cls", {**MAP, **extra})
    report = build_report(client, (TABLE,))
    cells = row(report, "`loss=fl_ghmr`")
    interval = stats.ttest_rel(extra["fl_ghmr"], MAP["focal"]).confidence_interval()
    difference = np.subtract(extra["fl_ghmr"], MAP["focal"]).mean()
    assert cells[1:3] == ["—", "—"] and cells[3].startswith(f"{np.mean(extra['fl_ghmr']) * 100:.1f} [") and cells[4] == "3"
    assert cells[5] == f"{difference * 100:+.1f} [{interval.low * 100:+.1f}, {interval.high * 100:+.1f}]"
    assert report.index("| GHM-C (`loss=ghmc_sl1`)") < report.index("| `loss=fl_ghmr`")  # after the paper's rows
    assert "(of 3;" in report  # no paper number, no ordering


def test_a_table_the_paper_orders_nothing_in_says_so(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    store_sweep(client, "cls")
    report = build_report(client, (PaperTable("cls", "Ours alone", "loss=focal", (PaperRow("loss=focal", "FL", 35.6),), "paper"),))
    assert "The paper orders none of these settings" in report and "orderings here" not in report
    assert row(report, "`loss=ghmc_sl1`")[5].startswith(f"{np.subtract(MAP['ghmc_sl1'], MAP['focal']).mean() * 100:+.1f} [")


def store_arms_sweep(client: MlflowClient, experiment: str, values: dict[tuple[str, str], list[float]], key: str,
                     ap50: float = 0.6) -> None:
    """A finished comparison of arms as the engine leaves it: each (arm, condition) on seeds 2-4, per-epoch mAP histories."""
    experiment_id = client.create_experiment(experiment)
    parent = client.create_run(experiment_id, tags={"sweep_parent": "sweep-arms", "search": "arms"}).info.run_id
    trials = []
    for number, ((arm, level), seed) in enumerate((cell, seed) for cell in values for seed in range(3)):
        run = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
        final = values[(arm, level)][seed]
        for epoch in range(1, int(level) + 1):
            client.log_metric(run, "mAP", final * epoch / int(level), step=epoch)
        client.log_metric(run, "AP50", ap50)
        client.set_terminated(run)
        trials.append(TrialRecord(number, {"loss": arm, key: level, "seed": seed + 2}, FINISHED, final, seed + 2, arm == "focal", run,
                                  arm=arm, condition={key: level}))
    pairing = Pairing.declare("loss=focal")
    record = SweepRecord("sweep-arms", "arms", "mAP", "maximize", pairing, trials, compare_settings(trials, pairing, effect=0.014),
                         notes=["Fixed arms: each arm ran at its own given settings"])
    client.log_dict(parent, record.to_json(), "sweep.json")
    client.set_terminated(parent)


def test_a_study_gives_each_condition_its_paired_difference_and_the_figures_are_drawn(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    values = {("focal", "7"): [0.34, 0.35, 0.33], ("ghm", "7"): [0.10, 0.12, 0.11],
              ("focal", "14"): [0.40, 0.41, 0.42], ("ghm", "14"): [0.38, 0.42, 0.40]}
    store_arms_sweep(client, "schedule", values, "train.epochs")
    study = Study("schedule", "Schedule", "Does GHM catch up?", axis="train.epochs", curves=True)
    report = build_report(client, (), (study,), figures=tmp_path / "docs" / "figures")
    seven = row(report, "train.epochs=7")
    differences = np.subtract(values[("ghm", "7")], values[("focal", "7")])
    interval = stats.ttest_rel(values[("ghm", "7")], values[("focal", "7")]).confidence_interval()
    assert seven[1] == "ghm train.epochs=7" and seven[2] == f"{np.mean(values[('ghm', '7')]) * 100:.1f}"
    assert seven[3] == f"{np.mean(values[('focal', '7')]) * 100:.1f} (60.0)"  # the baseline's mAP and, in brackets, its AP50
    assert seven[4] == f"{differences.mean() * 100:+.1f} [{interval.low * 100:+.1f}, {interval.high * 100:+.1f}] (95%)"
    assert seven[5] == "0.00 [0.00, 0.56]" and seven[7] == "3"
    assert row(report, "train.epochs=14")[5].startswith("0.33 [")  # 1 of 3 seeds better
    assert "- Fixed arms: each arm ran at its own given settings" in report
    for name in ("schedule_curves.png", "difference_by_axis.png"):
        assert (tmp_path / "docs" / "figures" / name).stat().st_size > 10_000 and f"](figures/{name})" in report


def test_a_table_run_at_two_rates_is_given_at_each(tmp_path: Path) -> None:
    """A paper table swept at each arm's tuned rate (train=...): one table per rate, each compared within its rate."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("cls")
    parent = client.create_run(experiment_id, tags={"sweep_parent": "sweep-rates", "search": "grid"}).info.run_id
    trials = []
    for number, (loss, rate, seed) in enumerate(itertools.product(("focal", "ghmc_sl1"), ("a", "b"), range(2))):
        value = {"focal": 0.3, "ghmc_sl1": 0.2}[loss] + (0.1 if rate == "b" else 0.0) + 0.01 * seed
        run = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
        client.log_metric(run, "mAP", value)
        client.log_metric(run, "AP50", 0.6)
        trials.append(TrialRecord(number, {"loss": loss, "train": rate, "seed": seed}, FINISHED, value, seed, loss == "focal", run))
    record = SweepRecord("sweep-rates", "grid", "mAP", "maximize", Pairing.declare("loss=focal"), trials, [])
    client.log_dict(parent, record.to_json(), "sweep.json")
    report = build_report(client, (TABLE,), ())
    assert "### At `train=a`" in report and "### At `train=b`" in report
    at_a, at_b = report.split("### At `train=b`")
    assert row(at_a, "GHM-C (`loss=ghmc_sl1`)")[5].startswith("-10.0 [") and row(at_b, "FL (`loss=focal`)")[3].startswith("40.5 ")


def test_an_arms_detectors_are_exported_by_seed_from_the_runs_of_its_best_settings_only(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("tuned")
    parent = client.create_run(experiment_id, tags={"sweep_parent": "sweep-arms", "search": "optuna"}).info.run_id
    trials = []
    # (arm, seed, search trial, lr): focal's search trials on seed 0 (the second the best), each arm's confirmation seeds
    trials_run = [("focal", 0, 0, 0.1), ("focal", 0, 1, 0.02), ("focal", 1, None, 0.02), ("focal", 2, None, 0.02), ("ghm", 1, None, 0.01)]
    for number, (arm, seed, search, lr) in enumerate(trials_run):
        run = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
        folder = tmp_path / "runs" / str(number)
        folder.mkdir(parents=True)
        torch.save({"model": {"w": torch.full((2,), float(number))}, "epoch": 7}, folder / "last.pt")
        client.log_param(run, "checkpoint_dir", str(folder))
        client.set_terminated(run)
        trials.append(TrialRecord(number, {"loss": arm, "train.lr": lr, "seed": seed}, FINISHED, 0.3, seed, arm == "focal", run, arm=arm,
                                  search_trial=search))
    record = SweepRecord("sweep-arms", "optuna", "mAP", "maximize", Pairing.declare("loss=focal"), trials, [])
    client.log_dict(parent, record.to_json(), "sweep.json")
    client.set_terminated(parent)

    written = export(client, "tuned", "focal", tmp_path / "out")
    assert sorted(written) == [0, 1, 2]  # the best's search trial and confirmations; not the other search trial, nor ghm's
    for seed, number in ((0, 1), (1, 2), (2, 3)):
        state = torch.load(written[seed], weights_only=True)
        assert set(state) == {"model"} and torch.equal(state["model"]["w"], torch.full((2,), float(number)))
    with pytest.raises(SystemExit, match="arms are \\['focal', 'ghm'\\]"):
        export(client, "tuned", "gmh", tmp_path / "out")
