"""hydra-optuna-sweeper's own tests of its override helpers, run against the drop-in's ``_impl`` (the module path they import).

Transcribed from facebookresearch/hydra (now hydra-ecosystem/hydra),
``plugins/hydra_optuna_sweeper/tests/test_optuna_sweeper_plugin.py`` (MIT License, Copyright (c)
Facebook, Inc. and its affiliates): ``test_create_optuna_distribution_from_override`` and
``test_create_params_from_overrides`` with upstream's cases and assertions unchanged, the latter
with its deletions (``~z``, ``~z=10``) returned apart from the fixed parameters.
"""

from __future__ import annotations

from typing import Any

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.hydra_optuna_sweeper import _impl


def check_distribution(expected: BaseDistribution, actual: BaseDistribution) -> None:
    if not isinstance(expected, CategoricalDistribution):
        assert expected == actual
        return
    assert isinstance(actual, CategoricalDistribution)
    # shuffle() will randomize the order of items in choices.
    assert set(expected.choices) == set(actual.choices)


@pytest.mark.parametrize(("input", "expected"), [
    ("key=choice(1,2)", CategoricalDistribution([1, 2])),
    ("key=choice(true, false)", CategoricalDistribution([True, False])),
    ("key=choice('hello', 'world')", CategoricalDistribution(["hello", "world"])),
    ("key=shuffle(range(1,3))", CategoricalDistribution((1, 2))),
    ("key=range(1,3)", IntDistribution(1, 3)),
    ("key=interval(1, 5)", FloatDistribution(1, 5)),
    ("key=int(interval(1, 5))", IntDistribution(1, 5)),
    ("key=tag(log, interval(1, 5))", FloatDistribution(1, 5, log=True)),
    ("key=tag(log, int(interval(1, 5)))", IntDistribution(1, 5, log=True)),
    ("key=range(0.5, 5.5, step=1)", FloatDistribution(0.5, 5.5, step=1)),
])
def test_create_optuna_distribution_from_override(input: Any, expected: Any) -> None:
    parser = OverridesParser.create()
    parsed = parser.parse_overrides([input])[0]
    actual = _impl.create_optuna_distribution_from_override(parsed)
    check_distribution(expected, actual)


@pytest.mark.parametrize(("input", "expected"), [
    (["key=choice(1,2)"], ({"key": CategoricalDistribution([1, 2])}, {}, [])),
    (["key=5"], ({}, {"key": "5"}, [])),
    (["key1=choice(1,2)", "key2=5"], ({"key1": CategoricalDistribution([1, 2])}, {"key2": "5"}, [])),
    (["key1=choice(1,2)", "key2=5", "key3=range(1,3)"],
     ({"key1": CategoricalDistribution([1, 2]), "key3": IntDistribution(1, 3)}, {"key2": "5"}, [])),
    (["~z"], ({}, {}, ["~z"])),
    (["~z=10"], ({}, {}, ["~z=10"])),
])
def test_create_params_from_overrides(input: Any, expected: Any) -> None:
    actual = _impl.create_params_from_overrides(input)
    assert actual == expected
