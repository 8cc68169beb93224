"""Which sweep a command means: the unfinished sweep of an identical definition (resumed), else a new one.

Each sweep keeps its definition (``definition.json``) in its Ray Tune experiment folder, and a
``finished`` mark once every trial has ended. The same command then resumes the sweep only while
it is unfinished; run again after it finished, it is a new sweep (``<name>-2``, ...) that reuses
what can be reused (baselines, from MLflow). A definition that differs from the one recorded
under an explicit ``hydra.sweeper.study_name`` is refused, naming what changed: old results are
never returned for a different question.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFINITION = "definition.json"
FINISHED = "finished"


class ChangedDefinitionError(ValueError):
    """An explicit study name whose recorded sweep was defined differently."""


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for each key whose value differs."""
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]


@dataclass(frozen=True)
class SweepIdentity:
    """The sweep's name and whether it resumes an interrupted attempt."""

    name: str
    resuming: bool

    @classmethod
    def resolve(cls, base: str, definition: dict[str, Any], experiments: Path, *, explicit: bool, resume: bool,
                taken: Callable[[str], bool]) -> SweepIdentity:
        """The first of ``base``, ``base-2``, ... that is this definition's unfinished sweep (with ``resume``) or is free.

        ``experiments`` holds the sweeps' Ray Tune folders; ``taken`` says whether a name is in use
        elsewhere (a study or a parent run of a sweep that left no folder here).
        """
        definition = json.loads(json.dumps(definition, sort_keys=True, default=str))  # as it reads back from the file
        for k in range(1, 10_000):
            name = base if k == 1 else f"{base}-{k}"
            folder = experiments / name
            record = folder / DEFINITION
            if record.is_file():
                recorded = json.loads(record.read_text())
                if recorded != definition:
                    if explicit and k == 1:
                        raise ChangedDefinitionError(
                            f"hydra.sweeper.study_name={base} names a sweep defined differently; changed: "
                            + "; ".join(changes(recorded, definition)) + ". Choose another study_name for the new sweep.")
                    continue
                if (folder / FINISHED).exists() or not resume:
                    continue
                log.info("resuming sweep %s (unfinished, same definition)", name)
                return cls(name, True)
            if not taken(name):
                if k > 1:
                    log.info("sweep %s already ran: this is a new sweep, %s", base, name)
                folder.mkdir(parents=True, exist_ok=True)
                record.write_text(json.dumps(definition, sort_keys=True, indent=1))
                return cls(name, False)
        raise RuntimeError(f"no free sweep name after {base}")

    @staticmethod
    def finish(experiments: Path, name: str) -> None:
        """Mark the sweep finished: every trial ended, so running the command again starts a new sweep."""
        (experiments / name / FINISHED).touch()
