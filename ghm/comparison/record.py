"""What a sweep writes: ``sweep.json`` on its MLflow parent run, the one contract between the sweep and its readers.

The engine writes a :class:`SweepRecord`; the dashboard reads it back with :meth:`SweepRecord.from_json`
(and the runs' own metrics from MLflow), and nothing else of the sweep's. The document carries its
``version``; a reader refuses a newer one and reads version 1 (the sweeps written before the
contract, which lacked the name, objective, pairing and search space: given by the parent run) and
version 2 (before tuned comparisons: no arms' tuning, notes or power fields).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ghm.comparison.pairing import Pairing

if TYPE_CHECKING:  # SciPy's import costs each Ray worker seconds; only reading a record needs the class
    from ghm.comparison.statistics import PairedComparison
    from ghm.comparison.tuning import ArmTuning

VERSION = 3
FINISHED, PRUNED, FAILED, REUSED = "finished", "pruned", "failed", "reused"
STATES = (FINISHED, PRUNED, FAILED, REUSED)  # reused: a baseline run of an earlier sweep, taken from MLflow


@dataclass
class TrialRecord:
    """One trial: its number in the sweep, swept values, state, final objective and MLflow run."""

    number: int
    params: dict[str, Any]
    state: str
    objective: float | None
    seed: int | None  # its value of the pairing key
    baseline: bool
    mlflow_run_id: str | None = None
    error: str | None = None
    arm: str | None = None  # a tuned comparison's arm (hydra.sweeper.arms) this job belongs to
    search_trial: int | None = None  # its arm's search trial (the Optuna trial run on every tuning seed); None: a confirmation
    condition: dict[str, Any] = field(default_factory=dict)  # a comparison of arms: the condition (command-line values) it ran in


@dataclass
class SweepRecord:
    """A sweep's definition and outcome: its trials, the paired comparisons, and how to read them."""

    name: str
    search: str  # grid | optuna
    metric: str
    direction: str  # maximize | minimize
    pairing: Pairing
    trials: list[TrialRecord]
    comparisons: list[PairedComparison]
    space: dict[str, Any] = field(default_factory=dict)  # an Optuna search's distributions (optuna's JSON), by key
    tuning: list[ArmTuning] = field(default_factory=list)  # a tuned comparison's arms: budget, space, best, curve, warnings
    notes: list[str] = field(default_factory=list)  # how to read the verdict: its settings' provenance, a sequential rule

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "name": self.name, "search": self.search, "metric": self.metric, "direction": self.direction,
                "pairing": self.pairing.to_dict(), "space": self.space, "trials": [dataclasses.asdict(t) for t in self.trials],
                "comparisons": [dataclasses.asdict(c) for c in self.comparisons],
                "tuning": [dataclasses.asdict(a) for a in self.tuning], "notes": list(self.notes)}

    @classmethod
    def from_json(cls, document: Mapping[str, Any], legacy: Mapping[str, str] | None = None) -> SweepRecord:
        """Read a record; ``legacy`` gives what a version-1 document lacks (name, search, metric, direction, baseline)."""
        version = document.get("version", 1)
        if version > VERSION:
            raise ValueError(f"sweep.json version {version} is newer than this reader's ({VERSION}): update the project")
        from ghm.comparison.statistics import PairedComparison
        from ghm.comparison.tuning import ArmTuning, SearchTrial

        trials = [TrialRecord(**t) for t in document["trials"]]
        comparisons = [PairedComparison(**{**c, "seeds": tuple(c["seeds"]), "differences": tuple(c["differences"])})
                       for c in document["comparisons"]]
        if version == 1:
            old = dict(legacy or {})
            return cls(name=old["name"], search=old.get("search", "grid"), metric=old.get("metric", "mAP"),
                       direction=old.get("direction", "maximize"), pairing=Pairing.declare(old.get("baseline") or None),
                       trials=trials, comparisons=comparisons)
        tuning = [ArmTuning(**{**a, "trials": [SearchTrial(**{**t, "values": {int(k): v for k, v in t["values"].items()}})
                                                for t in a["trials"]]}) for a in document.get("tuning", [])]
        return cls(name=document["name"], search=document["search"], metric=document["metric"], direction=document["direction"],
                   pairing=Pairing.from_dict(document["pairing"]), trials=trials, comparisons=comparisons, space=document["space"],
                   tuning=tuning, notes=list(document.get("notes", [])))
