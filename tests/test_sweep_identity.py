"""Which sweep a command means (ghm.sweep.identity): resume only the unfinished sweep of an identical definition."""

from __future__ import annotations

from pathlib import Path

import pytest

from ghm.sweep.identity import ChangedDefinitionError, SweepIdentity

DEFINITION = {"sweeps": ["x=0.1,0.2"], "n_trials": 20, "storage": None}


def resolve(tmp_path: Path, definition: dict = DEFINITION, *, explicit: bool = False, resume: bool = True,
            taken: frozenset[str] = frozenset()) -> SweepIdentity:
    return SweepIdentity.resolve("s", definition, tmp_path, explicit=explicit, resume=resume, taken=lambda name: name in taken)


def test_a_new_sweep_records_its_definition_and_an_unfinished_one_resumes(tmp_path: Path) -> None:
    assert resolve(tmp_path) == SweepIdentity("s", False)
    assert (tmp_path / "s" / "definition.json").is_file()
    assert resolve(tmp_path) == SweepIdentity("s", True)  # interrupted: the same command continues it
    assert resolve(tmp_path, resume=False) == SweepIdentity("s-2", False)  # resume=false: a new sweep


def test_a_finished_sweep_run_again_is_a_new_sweep(tmp_path: Path) -> None:
    resolve(tmp_path)
    SweepIdentity.finish(tmp_path, "s")
    assert resolve(tmp_path) == SweepIdentity("s-2", False)
    SweepIdentity.finish(tmp_path, "s-2")
    assert resolve(tmp_path) == SweepIdentity("s-3", False)


def test_a_changed_definition_under_an_explicit_name_is_refused_naming_the_change(tmp_path: Path) -> None:
    resolve(tmp_path, explicit=True)
    changed = {**DEFINITION, "sweeps": ["x=0.1,0.3"], "storage": "sqlite:///other.db"}
    expected = r"changed: storage: None -> 'sqlite:///other.db'; sweeps: \['x=0.1,0.2'\] -> \['x=0.1,0.3'\]\."
    with pytest.raises(ChangedDefinitionError, match=expected):
        resolve(tmp_path, changed, explicit=True)


def test_a_name_used_elsewhere_is_not_reused(tmp_path: Path) -> None:
    # a study or parent run of that name exists, but no sweep folder here: never continue someone else's records
    assert resolve(tmp_path, taken=frozenset({"s"})) == SweepIdentity("s-2", False)
