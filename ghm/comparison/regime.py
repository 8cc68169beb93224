"""The regime a comparison was measured in: how well the baseline itself detects.

A difference between two detectors that have not learnt is noise around zero, however tight its
interval. Every verdict therefore carries the baseline's own AP50 and mAP (mean and range over its
seeds), read from its runs, and a warning when the baseline does not really detect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DETECTING_AP50 = 0.5  # below this the baseline misses or mislocates most objects: flagged


@dataclass(frozen=True)
class Regime:
    """The baseline's final metrics, one value per seed."""

    baseline: str
    seeds: tuple[int, ...]
    map: tuple[float, ...]
    ap50: tuple[float, ...]

    @classmethod
    def from_runs(cls, baseline: str, metrics_by_seed: Mapping[int, Mapping[str, float]]) -> Regime:
        """From each baseline seed's final metrics (``mAP`` and ``AP50``, as the evaluation logs them)."""
        seeds = tuple(sorted(s for s, m in metrics_by_seed.items() if "mAP" in m and "AP50" in m))
        return cls(baseline, seeds, tuple(float(metrics_by_seed[s]["mAP"]) for s in seeds),
                   tuple(float(metrics_by_seed[s]["AP50"]) for s in seeds))

    @property
    def detects(self) -> bool:
        return bool(self.seeds) and float(np.mean(self.ap50)) >= DETECTING_AP50

    def summary(self) -> str:
        """The baseline's numbers, e.g. ``Regime: baseline loss=focal: mAP 0.351 (0.347-0.356), AP50 ... over 3 seeds``."""
        if not self.seeds:
            return f"Regime: no finished run of the baseline {self.baseline}: the comparison has no reference"
        return (f"Regime: baseline {self.baseline}: mAP {_summary(self.map)}, AP50 {_summary(self.ap50)} "
                f"over {len(self.seeds)} seed{'s' if len(self.seeds) > 1 else ''}")

    def warning(self) -> str | None:
        """Said under the summary when the baseline does not really detect."""
        if not self.seeds or self.detects:
            return None
        return (f"WARNING: the baseline's AP50 is below {DETECTING_AP50}: it does not really detect, and the "
                "differences measure detectors that have not learnt (train longer, or use easier data)")

    def line(self) -> str:
        """The closing table's lines: the summary, and the warning when there is one."""
        return "\n".join(part for part in (self.summary(), self.warning()) if part)


def _summary(values: Sequence[float]) -> str:
    mean = float(np.mean(values))
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ({min(values):.3f}-{max(values):.3f})"
