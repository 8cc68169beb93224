"""Sweep overrides to a search space, with hydra-core's own override parser.

The grammar is Hydra's (``a=1,2``, ``choice()``, ``range()``, ``interval()``, ``int(interval())``,
``tag(log, ...)``); the mapping to Optuna distributions follows hydra-optuna-sweeper, so its
users' ``hydra.sweeper.params`` mean the same here:

* ``choice(...)`` / ``a,b,c``: categorical;
* ``range(start, stop, step)``: an int (or, with any float, a float) distribution from ``start``
  to ``stop`` with that step;
* ``interval(low, high)``: a uniform float (ints: int) distribution, log-uniform with ``tag(log, ...)``.

A grid (every combination of the choice and range values, in Hydra's order) exists when no
parameter is an interval.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


@dataclass(frozen=True)
class SearchSpace:
    """The swept parameters (by override key, in order) and the overrides every trial gets."""

    fixed: tuple[str, ...]
    sweeps: tuple[Override, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(o.get_key_element() for o in self.sweeps)

    @property
    def has_grid(self) -> bool:
        """Whether every swept parameter has a finite list of values."""
        return not any(o.is_interval_sweep() for o in self.sweeps)

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the swept values, the last key varying fastest (as Hydra's basic sweeper)."""
        if not self.has_grid:
            intervals = [o.get_key_element() for o in self.sweeps if o.is_interval_sweep()]
            raise ValueError(f"no grid over continuous intervals ({', '.join(intervals)}): use the Optuna search")
        values = [list(o.sweep_iterator(transformer=Transformer.encode)) for o in self.sweeps]
        return [dict(zip(self.keys, combination, strict=True)) for combination in itertools.product(*values)]

    def distributions(self) -> dict[str, BaseDistribution]:
        """The Optuna distribution of each swept parameter."""
        return {o.get_key_element(): to_distribution(o) for o in self.sweeps}


def to_distribution(override: Override) -> BaseDistribution:
    """One sweep override as an Optuna distribution (hydra-optuna-sweeper's mapping)."""
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop, step=value.step)
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(value.start, value.end, log=log)
    raise ValueError(f"{override.input_line}: not a sweep this sweeper knows (choice, range or interval)")


def parse_search_space(arguments: list[str], params: dict[str, str] | None = None) -> SearchSpace:
    """Combine ``hydra.sweeper.params`` with the command line (which wins for the same key)."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()]
    parser = OverridesParser.create()
    parsed = {o.get_key_element(): o for o in parser.parse_overrides(lines)}
    for override in parser.parse_overrides(list(arguments)):
        parsed.pop(override.get_key_element(), None)
        parsed[override.get_key_element()] = override
    sweeps = tuple(o for o in parsed.values() if o.is_sweep_override())
    for override in sweeps:
        if not isinstance(override.value(), ChoiceSweep | RangeSweep | IntervalSweep):
            raise ValueError(f"{override.input_line}: unsupported sweep")
    fixed = tuple(o.input_line for o in parsed.values() if not o.is_sweep_override())
    return SearchSpace(fixed=fixed, sweeps=sweeps)


def condition_space(conditions: dict[str, Any]) -> SearchSpace:
    """``hydra.sweeper.conditions`` as sweeps: a listed key (``"a,b"``) gives its values, a single value one condition level
    that every job takes (``train.epochs: 28``), never a key silently left out."""
    parser = OverridesParser.create()
    sweeps = []
    for override in parser.parse_overrides([f"{key}={value}" for key, value in conditions.items()]):
        if not override.is_sweep_override():
            override = parser.parse_override(f"{override.get_key_element()}=choice({override.get_value_element_as_str()})")
        sweeps.append(override)
    return SearchSpace(fixed=(), sweeps=tuple(sweeps))
