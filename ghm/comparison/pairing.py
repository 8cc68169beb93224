"""The comparison's one declaration: which runs are the baseline, what pairs two runs, and what a setting is.

A sweep declares it in its sweeper config (``hydra.sweeper.baseline``, ``pair_by``,
``pair_ignore``); the engine uses it to pick and reuse baselines, the task to tag its MLflow run
(``baseline``, ``pair_key``), and the sweep record carries it to the dashboard. Two runs pair when
their configs agree on everything but the baseline's key and the ignored keys (same data, model,
schedule, seed and code version: their :func:`Pairing.pair_key`), and a setting is what a trial
tries but the pairing key: trials with one :meth:`Pairing.setting_label` are seeds of one setting.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class Pairing:
    """The baseline (``baseline_key=baseline_value``, or none), the key whose values pair runs, and keys that never count."""

    baseline_key: str | None = None
    baseline_value: str | None = None
    pair_by: str = "seed"
    ignore: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def declare(cls, baseline: str | None, pair_by: str = "seed", ignore: Sequence[str] = ()) -> Pairing:
        """Parse the sweeper's ``baseline`` (an override ``key=value``, or null) with Hydra's override parser."""
        if not baseline:
            return cls(pair_by=pair_by, ignore=tuple(ignore))
        try:
            override = OverridesParser.create().parse_override(baseline)
        except Exception as err:  # the parser's own error says where the grammar broke
            raise ValueError(f"hydra.sweeper.baseline must be an override key=value, got {baseline!r}: {err}") from err
        if override.is_sweep_override() or override.is_add() or override.is_delete() or override.value() is None:
            raise ValueError(f"hydra.sweeper.baseline must be one plain override key=value, got {baseline!r}")
        return cls(override.get_key_element(), override.get_value_element_as_str(), pair_by, tuple(ignore))

    @classmethod
    def from_sweeper(cls, sweeper: Any) -> Pairing:
        """The declaration of a sweeper config node (``hydra.sweeper``); no baseline where it declares none."""
        return cls.declare(OmegaConf.select(sweeper, "baseline", default=None), OmegaConf.select(sweeper, "pair_by", default="seed"),
                           list(OmegaConf.select(sweeper, "pair_ignore", default=None) or ()))

    def to_dict(self) -> dict[str, Any]:
        return {"baseline_key": self.baseline_key, "baseline_value": self.baseline_value, "pair_by": self.pair_by,
                "ignore": list(self.ignore)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Pairing:
        return cls(data["baseline_key"], data["baseline_value"], data["pair_by"], tuple(data["ignore"]))

    @property
    def baseline(self) -> str | None:
        """The baseline as its override, e.g. ``loss=focal``."""
        return f"{self.baseline_key}={self.baseline_value}" if self.baseline_key else None

    def is_baseline(self, params: Mapping[str, Any], fixed: Sequence[str] = ()) -> bool:
        """Whether a trial's swept values (or a run's choices) select the baseline, or the sweep fixes it (``loss=focal``)."""
        if self.baseline_key is None:
            return False
        return str(_given(self.baseline_key, params, fixed)) == self.baseline_value

    def is_baseline_run(self, config: DictConfig, choices: Mapping[str, Any]) -> bool:
        """Whether a composed config is the baseline: its group choice (``loss=focal``) or its value of the key."""
        if self.baseline_key is None:
            return False
        value = choices[self.baseline_key] if self.baseline_key in choices else OmegaConf.select(config, self.baseline_key, default=None)
        return str(value) == self.baseline_value

    def applies_to(self, config: DictConfig) -> bool:
        """Whether the task has the baseline's key at all (as a config group or a value); a sphere has no ``loss``."""
        if self.baseline_key is None:
            return False
        return self.baseline_key in config.hydra.runtime.choices or OmegaConf.select(config, self.baseline_key, default=None) is not None

    def value_of(self, params: Mapping[str, Any], fixed: Sequence[str], config: DictConfig) -> int | None:
        """A trial's value of the pairing key: swept, fixed on the command line (``seed=3``), or the task's default."""
        value = _given(self.pair_by, params, fixed)
        if value is None:
            value = OmegaConf.select(config, self.pair_by, default=None)
        return int(value) if value is not None else None

    def setting_label(self, params: Mapping[str, Any]) -> str:
        """What a trial tries, as its swept values but the pairing key: trials with one label are one setting."""
        return " ".join(f"{k}={v}" for k, v in params.items() if k != self.pair_by) or "candidate"

    def pair_key(self, config: DictConfig, code_version: str) -> str:
        """What a candidate and its baseline share: the task's config but the baseline's and ignored keys, and the code."""
        return self._key(config, code_version, (*(k for k in (self.baseline_key,) if k), *self.ignore))

    def config_key(self, config: DictConfig, code_version: str) -> str:
        """What makes two runs the same run: the task's config but the ignored keys (where it writes), and the code.

        A baseline trial whose config key a finished run of any experiment carries is answered by that run.
        """
        return self._key(config, code_version, self.ignore)

    @staticmethod
    def _key(config: DictConfig, code_version: str, dropped: Sequence[str]) -> str:
        container = OmegaConf.to_container(config, resolve=False)
        for key in ("hydra", *dropped):
            _drop(container, key)
        payload = json.dumps({"config": container, "code": code_version}, sort_keys=True, default=str)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]


def _drop(container: dict[str, Any], dotted: str) -> None:
    """Remove a dotted key (``loss`` or ``train.figures``) from a nested dict, if present."""
    *parents, last = dotted.split(".")
    for part in parents:
        container = container.get(part)
        if not isinstance(container, dict):
            return
    container.pop(last, None)


def _given(key: str, params: Mapping[str, Any], fixed: Sequence[str]) -> Any:
    """A key's value as a sweep gives it: swept (``params``), or fixed on the command line (``key=value``); else None."""
    if key in params:
        return params[key]
    return next((line.split("=", 1)[1] for line in fixed if line.startswith(f"{key}=")), None)
