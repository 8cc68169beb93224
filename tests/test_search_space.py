"""Sweep overrides parsed by hydra-core into grids and Optuna distributions."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from ghm.sweep.config import SweeperConf
from ghm.sweep.space import condition_space, parse_search_space


def test_command_line_lists_make_a_grid_in_hydra_order() -> None:
    space = parse_search_space(["loss=focal,ghm", "seed=0,1,2", "train.epochs=3"])
    assert space.fixed == ("train.epochs=3",)
    assert space.has_grid and space.keys == ("loss", "seed")
    grid = space.grid()
    assert len(grid) == 6 and grid[0] == {"loss": "focal", "seed": 0} and grid[1] == {"loss": "focal", "seed": 1}
    assert grid[-1] == {"loss": "ghm", "seed": 2}


def test_range_and_choice_values() -> None:
    space = parse_search_space(["loss.cls.bins=range(10,40,10)", "loss.reg.mu=choice(0.01,0.02)"])
    assert space.grid() == [{"loss.cls.bins": b, "loss.reg.mu": m} for b in (10, 20, 30) for m in (0.01, 0.02)]


def test_params_merge_with_the_command_line_which_wins() -> None:
    space = parse_search_space(["seed=5,6"], {"seed": "0,1,2", "loss.cls.momentum": "interval(0.0, 0.9)"})
    assert space.keys == ("loss.cls.momentum", "seed")
    assert not space.has_grid
    with pytest.raises(ValueError, match=r"no grid over continuous intervals \(loss.cls.momentum\)"):
        space.grid()
    assert space.distributions()["seed"] == CategoricalDistribution([5, 6])


def test_hydra_optuna_sweeper_mapping() -> None:
    space = parse_search_space([], {
        "x": "range(-5.5, 5.5, step=0.5)",
        "y": "choice(-5, 0, 5)",
        "bins": "int(interval(5, 40))",
        "lr": "tag(log, interval(0.001, 0.1))",
        "n": "range(1, 10, 3)",
        "m": "interval(0.1, 0.9)",
    })
    d = space.distributions()
    assert d["x"] == FloatDistribution(-5.5, 5.5, step=0.5)
    assert d["y"] == CategoricalDistribution([-5, 0, 5])
    assert d["bins"] == IntDistribution(5, 40)
    assert d["lr"] == FloatDistribution(0.001, 0.1, log=True)
    assert d["n"] == IntDistribution(1, 10, step=3)
    assert d["m"] == FloatDistribution(0.1, 0.9)


def test_the_ghm_sweeper_refuses_what_is_hydra_optuna_sweepers_alone() -> None:
    with pytest.raises(ValueError, match=r"command-line lists .* are the grid"):
        SweeperConf(sampler={"_target_": "optuna.samplers.GridSampler", "_partial_": True}).check()
    with pytest.raises(ValueError, match=r"several directions: hydra/sweeper=optuna"):
        SweeperConf(sampler={}, direction=["minimize", "minimize"]).check()


def test_a_single_valued_condition_is_a_level_every_job_takes_not_a_key_left_out() -> None:
    space = condition_space({"train.epochs": "28", "data.lookalikes": "0,6"})
    assert space.grid() == [{"train.epochs": 28, "data.lookalikes": 0}, {"train.epochs": 28, "data.lookalikes": 6}]
    assert condition_space({"model.name": "retinanet_tiny"}).grid() == [{"model.name": "retinanet_tiny"}]
