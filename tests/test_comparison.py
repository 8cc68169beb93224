"""The sweep's pure logic, without Ray or MLflow: pairing, settings, the best setting, seeds, naming, the record."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from ghm.comparison.pairing import Pairing
from ghm.comparison.record import FAILED, FINISHED, PRUNED, REUSED, VERSION, SweepRecord, TrialRecord
from ghm.comparison.regime import Regime
from ghm.comparison.settings import best_params, compare_settings, confirmation_points, fresh_seed
from ghm.dashboard.charts import leaderboard
from ghm.dashboard.source import SweepView, settings_of
from ghm.sweep.config import SweeperConf
from ghm.sweep.engine import search_kind, sweep_name
from ghm.sweep.search import OPTUNA_NUMBER, GridSearch, OptunaSearch
from ghm.sweep.space import parse_search_space

FOCAL = Pairing.declare("loss=focal", "seed", ["mlflow", "paths"])


def trial(number: int, loss: str, seed: int, objective: float | None, state: str = FINISHED, **extra: object) -> TrialRecord:
    params = {"loss": loss, **extra, "seed": seed}
    return TrialRecord(number, params, state, objective, seed, baseline=loss == "focal")


def test_the_baseline_is_declared_as_an_override_parsed_by_hydra() -> None:
    assert (FOCAL.baseline_key, FOCAL.baseline_value, FOCAL.baseline) == ("loss", "focal", "loss=focal")
    assert Pairing.declare("loss.cls.bins=30").baseline_value == "30"
    assert Pairing.declare(None).baseline is None and not Pairing.declare(None).is_baseline({"loss": "focal"})
    for bad in ("loss=focal,ghm", "+loss=focal", "loss", "loss=choice(a,b)"):
        with pytest.raises(ValueError, match=r"hydra\.sweeper\.baseline must be"):
            Pairing.declare(bad)


def test_a_setting_is_what_a_trial_tries_but_its_pairing_key() -> None:
    assert FOCAL.setting_label({"loss": "ghm", "loss.cls.bins": 20, "seed": 3}) == "loss=ghm loss.cls.bins=20"
    assert FOCAL.setting_label({"seed": 3}) == "candidate"
    assert Pairing(pair_by="fold").setting_label({"seed": 1, "fold": 2}) == "seed=1"
    assert FOCAL.is_baseline({"loss": "focal", "seed": 0}) and not FOCAL.is_baseline({"loss": "ghm", "seed": 0})
    # a sweep of the baseline alone (loss fixed on the command line) is all baseline: its regime is reported
    assert FOCAL.is_baseline({"seed": 0}, fixed=("loss=focal", "train.epochs=3"))
    assert not FOCAL.is_baseline({"seed": 0}, fixed=("loss=ghm",)) and not FOCAL.is_baseline({"loss": "ghm"}, fixed=("loss=focal",))


def test_runs_pair_when_only_the_baselines_key_and_ignored_keys_differ() -> None:
    def config(**changes: object) -> object:
        base = {"loss": {"family": "ghm"}, "seed": 0, "train": {"epochs": 3}, "mlflow": {"experiment_name": "a"}, "paths": {"root": "/x"}}
        return OmegaConf.merge(base, changes)

    key = FOCAL.pair_key(config(), "v1")
    assert FOCAL.pair_key(config(loss={"family": "focal"}, mlflow={"experiment_name": "b"}, paths={"root": "/y"}), "v1") == key
    assert FOCAL.pair_key(config(seed=1), "v1") != key
    assert FOCAL.pair_key(config(train={"epochs": 4}), "v1") != key
    assert FOCAL.pair_key(config(), "v2") != key
    assert Pairing.declare("train.epochs=3").pair_key(config(train={"epochs": 4}), "v1") == \
        Pairing.declare("train.epochs=3").pair_key(config(), "v1")  # a nested baseline key is dropped as well


def test_a_trials_seed_comes_from_its_values_the_command_line_or_the_task() -> None:
    task = OmegaConf.create({"seed": 7})
    assert FOCAL.value_of({"seed": 2}, ("seed=5",), task) == 2
    assert FOCAL.value_of({"loss": "ghm"}, ("train.epochs=3", "seed=5"), task) == 5
    assert FOCAL.value_of({"loss": "ghm"}, (), task) == 7
    assert FOCAL.value_of({}, (), OmegaConf.create({})) is None


def test_settings_are_compared_with_the_baseline_seed_by_seed() -> None:
    trials = [trial(0, "focal", 0, 0.30), trial(1, "focal", 1, 0.40, state=REUSED), trial(2, "ghm", 0, 0.35), trial(3, "ghm", 1, 0.43),
              trial(4, "ghm", 2, 0.99), trial(5, "ce", 0, None, state=FAILED), trial(6, "ce", 1, 0.1, state=PRUNED)]
    (ghm,) = compare_settings(trials, FOCAL)
    assert ghm.setting == "loss=ghm" and ghm.seeds == (0, 1)  # seed 2 has no baseline; failed and pruned trials count for nothing
    assert ghm.differences == pytest.approx((0.05, 0.03)) and ghm.mean == pytest.approx(0.04)
    assert compare_settings([trial(0, "ghm", 0, 0.3)], FOCAL) == []


def test_a_setting_is_compared_with_the_baseline_of_its_own_context() -> None:
    """A grid of loss x rate: each rate's GHM against that rate's focal loss, never against the other rate's."""
    trials = [trial(0, "focal", 0, 0.30, lr=0.01), trial(1, "focal", 0, 0.50, lr=0.02), trial(2, "ghm", 0, 0.20, lr=0.01),
              trial(3, "ghm", 0, 0.45, lr=0.02), trial(4, "focal", 1, 0.32, lr=0.01), trial(5, "ghm", 1, 0.21, lr=0.01),
              trial(6, "ghm", 0, 0.9, lr=0.04)]  # no baseline at this rate: not compared
    by_setting = {c.setting: c for c in compare_settings(trials, FOCAL)}
    assert set(by_setting) == {"loss=ghm lr=0.01", "loss=ghm lr=0.02"}
    assert by_setting["loss=ghm lr=0.01"].differences == pytest.approx((-0.10, -0.11))
    assert by_setting["loss=ghm lr=0.02"].differences == pytest.approx((-0.05,))


def test_the_best_setting_is_ranked_by_paired_difference_in_the_sweeps_direction() -> None:
    trials = [trial(0, "focal", 0, 0.30), trial(1, "ghm", 0, 0.40, bins=10), trial(2, "ghm", 0, 0.20, bins=20)]
    comparisons = compare_settings(trials, FOCAL)
    assert best_params(trials, comparisons, FOCAL, "maximize") == {"loss": "ghm", "bins": 10, "seed": 0}
    assert best_params(trials, comparisons, FOCAL, "minimize") == {"loss": "ghm", "bins": 20, "seed": 0}
    unpaired = [trial(0, "ghm", 0, 0.40, bins=10), trial(1, "ghm", 0, 0.20, bins=20), trial(2, "ghm", 0, None, state=FAILED)]
    assert best_params(unpaired, [], FOCAL, "maximize")["bins"] == 10  # no baseline: by objective
    assert best_params([trial(0, "ghm", 0, None, state=FAILED)], [], FOCAL, "maximize") is None


def test_confirmation_takes_fresh_seeds_for_the_best_setting_and_the_baseline() -> None:
    trials = [trial(0, "focal", 0, 0.3), trial(1, "ghm", 4, 0.4)]
    assert fresh_seed(trials) == 5 and fresh_seed([]) == 0
    points = confirmation_points({"loss": "ghm", "bins": 10, "seed": 4}, FOCAL, [5, 6])
    assert points == [{"loss": "ghm", "bins": 10, "seed": 5}, {"loss": "ghm", "bins": 10, "seed": 6},
                      {"loss": "focal", "seed": 5}, {"loss": "focal", "seed": 6}]
    assert confirmation_points({"x": 1}, Pairing(), [0]) == [{"x": 1, "seed": 0}]  # no baseline declared


def test_a_sweeps_name_follows_its_definition_and_the_search_its_grammar() -> None:
    settings = SweeperConf(sampler={"_target_": "optuna.samplers.TPESampler", "seed": 0})
    grid = parse_search_space(["loss=focal,ghm", "seed=0,1"])
    name = sweep_name(settings, grid, "grid")
    assert name.startswith("sweep-") and name == sweep_name(settings, parse_search_space(["loss=focal,ghm", "seed=0,1"]), "grid")
    assert name != sweep_name(settings, parse_search_space(["loss=focal,ghm", "seed=0,1,2"]), "grid")
    assert name != sweep_name(SweeperConf(sampler=settings.sampler, confirm_seeds=2), grid, "grid")
    assert sweep_name(SweeperConf(sampler=settings.sampler, study_name="mine"), grid, "grid") == "mine"
    assert search_kind(settings, grid) == "grid"
    assert search_kind(settings, parse_search_space(["x=interval(0,1)"])) == "optuna"
    assert search_kind(SweeperConf(sampler={}, params={"x": "choice(1,2)"}), parse_search_space([], {"x": "choice(1,2)"})) == "optuna"
    assert search_kind(SweeperConf(sampler={}, search="grid"), parse_search_space(["x=1,2"])) == "grid"


def test_the_sweepers_settings_are_checked_before_work() -> None:
    for change, key in (({"search": "random"}, "search"), ({"direction": "up"}, "direction"), ({"n_jobs": 0}, "n_jobs"),
                        ({"max_failure_rate": 2.0}, "max_failure_rate")):
        with pytest.raises(ValueError, match=rf"hydra\.sweeper\.{key}"):
            SweeperConf(sampler={}, **change).check()


def test_searches_map_tune_configs_back_to_the_sweeps_trials() -> None:
    grid = GridSearch({0: {"loss": "focal", "seed": 0}, 1: {"loss": "ghm", "seed": 0}}, [trial(0, "focal", 0, 0.3, state=REUSED)])
    assert grid.todo == [1] and grid.runs_any() and [t.number for t in grid.given()] == [0]
    assert grid.trial({"trial": 1}) == (1, {"loss": "ghm", "seed": 0}) and not grid.prunable and grid.space() == {}
    optuna = OptunaSearch(parse_search_space([], {"x": "interval(0, 1)", "n": "choice(1, 2)"}), None, "sqlite://", "s", 4)
    assert optuna.trial({"x": 0.5, "n": 2, OPTUNA_NUMBER: 7}) == (7, {"x": 0.5, "n": 2}) and optuna.prunable
    assert optuna.space()["x"]["name"] == "FloatDistribution" and optuna.space()["n"]["attributes"]["choices"] == [1, 2]


def test_the_record_is_versioned_and_reads_back() -> None:
    trials = [trial(0, "focal", 0, 0.3), trial(1, "ghm", 0, 0.35), trial(2, "ghm", 1, None, state=FAILED)]
    trials[2].error = "ValueError: x"
    record = SweepRecord("s", "grid", "mAP", "maximize", FOCAL, trials, compare_settings(trials, FOCAL))
    document = record.to_json()
    assert document["version"] == VERSION == 3
    assert SweepRecord.from_json(document) == record
    legacy = {k: v for k, v in document.items() if k in ("trials", "comparisons")}  # version 1: written before the contract
    old = SweepRecord.from_json(legacy, {"name": "s", "metric": "mAP", "direction": "maximize", "baseline": "loss=focal"})
    assert old.trials == record.trials and old.comparisons == record.comparisons and old.pairing.baseline == "loss=focal"
    with pytest.raises(ValueError, match="newer than this reader"):
        SweepRecord.from_json({**document, "version": VERSION + 1})
    assert math.isnan(record.comparisons[0].t_low)  # one pair: no interval


def test_the_regime_line_gives_the_baselines_map_and_ap50_per_seed_range() -> None:
    regime = Regime.from_runs("loss=focal", {2: {"mAP": 0.36, "AP50": 0.62}, 0: {"mAP": 0.34, "AP50": 0.60},
                                            1: {"mAP": 0.35, "AP50": 0.61}, 3: {"loss": 1.0}})
    assert regime.seeds == (0, 1, 2) and regime.map == (0.34, 0.35, 0.36) and regime.detects
    assert regime.line() == "Regime: baseline loss=focal: mAP 0.350 (0.340-0.360), AP50 0.610 (0.600-0.620) over 3 seeds"


def test_a_baseline_that_does_not_detect_is_flagged_and_a_missing_one_said() -> None:
    weak = Regime.from_runs("loss=focal", {0: {"mAP": 0.02, "AP50": 0.065}})
    assert not weak.detects
    assert weak.line().splitlines()[0] == "Regime: baseline loss=focal: mAP 0.020, AP50 0.065 over 1 seed"
    assert weak.line().splitlines()[1].startswith("WARNING: the baseline's AP50 is below 0.5")
    assert "no finished run of the baseline loss=focal" in Regime.from_runs("loss=focal", {}).line()


def test_the_config_key_tells_the_loss_apart_where_the_pair_key_does_not() -> None:
    focal = OmegaConf.create({"loss": {"name": "focal"}, "seed": 0, "mlflow": {"experiment_name": "a"}})
    ghm = OmegaConf.create({"loss": {"name": "ghm"}, "seed": 0, "mlflow": {"experiment_name": "b"}})
    assert FOCAL.pair_key(focal, "c1") == FOCAL.pair_key(ghm, "c1") != FOCAL.pair_key(ghm, "c2")
    assert FOCAL.config_key(focal, "c1") != FOCAL.config_key(ghm, "c1")
    elsewhere = OmegaConf.merge(focal, {"mlflow": {"experiment_name": "paper_bins"}})  # the same run tracked elsewhere
    assert FOCAL.config_key(elsewhere, "c1") == FOCAL.config_key(focal, "c1") != FOCAL.config_key(focal, "c2")


def test_a_setting_answered_by_an_earlier_run_is_compared_like_one_run_now() -> None:
    trials = [trial(0, "focal", 0, 0.30, REUSED), trial(1, "focal", 1, 0.32), trial(2, "ghm", 0, 0.28, REUSED), trial(3, "ghm", 1, 0.31)]
    (comparison,) = compare_settings(trials, FOCAL)
    assert comparison.seeds == (0, 1) and comparison.differences == pytest.approx((-0.02, -0.01))


def test_the_leaderboard_ranks_the_baseline_at_a_difference_of_zero() -> None:
    trials = [trial(0, "focal", 0, 0.30), trial(1, "focal", 1, 0.34), trial(2, "ghm", 0, 0.02), trial(3, "ghm", 1, 0.03),
              trial(4, "ce", 0, 0.35), trial(5, "ce", 1, 0.36), trial(6, "bce", 2, 0.5)]
    record = SweepRecord("s", "grid", "mAP", "maximize", FOCAL, trials, compare_settings(trials, FOCAL))
    view = SweepView(record=record, experiment="e", parent_run_id="p", settings=settings_of(record))
    rows, forest = leaderboard(view)
    assert [r["setting"] for r in rows] == ["loss=ce", "loss=focal", "loss=ghm", "loss=bce"]  # bce: no seed of the baseline's
    assert rows[0]["diff"] == pytest.approx(0.035) and rows[2]["diff"] == pytest.approx(-0.295) and rows[1]["diff"] is None
    assert list(forest.data[0].y) == ["loss=ghm", "loss=ce"]  # the forest plot draws bottom-up: best on top
