"""A run's epoch checkpoint, which only that run resumes and only one process at a time uses.

The checkpoint records its run's identity (the config and the code version); a run refuses to
resume a checkpoint of another identity, naming what differs. While a run trains it holds a lock
on its checkpoint directory, so two runs that were given the same directory (e.g. Hydra's run
directory of two runs started together) cannot overwrite each other's checkpoint: the second is
refused before any work.
"""

from __future__ import annotations

import fcntl
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ghm.tracking.run import flatten

# Where a run writes, whether it resumes, and what MLflow records beside it are no part of what it computes.
NOT_IDENTITY = ("checkpoint_dir", "paths", "train.resume", "mlflow.log_model", "mlflow.system_metrics", "mlflow.system_metrics_interval")


class CheckpointError(RuntimeError):
    """A checkpoint this run must not use: another run's, or one in use by a running process."""


@dataclass(frozen=True)
class RunIdentity:
    """What a checkpoint must have been written by: the run's config (as flat params) and the code version."""

    config: dict[str, str]
    code_version: str

    @classmethod
    def of(cls, config: DictConfig, code_version: str) -> RunIdentity:
        flat = flatten(OmegaConf.to_container(config, resolve=False))
        return cls({k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in NOT_IDENTITY)},
                   code_version)

    def differences(self, other: dict[str, Any]) -> list[str]:
        """What ``other`` (a checkpoint's recorded identity) has that this run has not, key by key."""
        found = [f"code version {other.get('code_version')} (this run: {self.code_version})"] \
            if other.get("code_version") != self.code_version else []
        theirs = other.get("config", {})
        for key in sorted(set(theirs) | set(self.config)):
            if theirs.get(key) != self.config.get(key):
                found.append(f"{key}={theirs.get(key, '<absent>')} (this run: {self.config.get(key, '<absent>')})")
        return found


class Checkpoint:
    """``<directory>/last.pt``, written each epoch and resumed from when the identity matches."""

    def __init__(self, directory: Path, identity: RunIdentity) -> None:
        self.path = directory / "last.pt"
        self.identity = identity

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the directory for this process (a lock file beside the checkpoint) while the run trains."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with (self.path.parent / "lock").open("a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                raise CheckpointError(f"{self.path.parent} is in use by another running process ({lock.read().strip() or 'unknown'}); "
                                      "give this run a directory of its own (hydra.run.dir or checkpoint_dir)") from None
            lock.truncate(0)
            lock.write(f"pid {os.getpid()}")
            lock.flush()
            yield

    def load(self) -> dict[str, Any] | None:
        """The last epoch's state, or None when there is none; another run's checkpoint is refused."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)  # never unpickles code, whoever wrote the file
        except Exception as err:  # torch's readers fail in many ways on a torn or foreign file (IndexError on a few bytes of text)
            raise CheckpointError(f"{self.path} is unreadable as a checkpoint ({_reason(err)}): it is truncated, corrupt, or not one "
                                  "this project wrote. Start the run over with train.resume=false (its first epoch overwrites the "
                                  "file), or remove the file; it is never loaded with weights_only=False, which could run code "
                                  "from it") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{self.path} holds a {type(state).__name__}, not a checkpoint this project wrote: start the run "
                                  "over with train.resume=false, or remove the file")
        recorded = state.get("identity")
        if recorded is None:
            raise CheckpointError(f"{self.path} records no run identity (written by an older version); remove it or choose "
                                  "another checkpoint_dir")
        differences = self.identity.differences(recorded)
        if differences:
            raise CheckpointError(f"{self.path} belongs to another run, which differs in: {'; '.join(differences[:8])}"
                                  f"{' ...' if len(differences) > 8 else ''}. Resume it with its own config and code, or give "
                                  "this run its own checkpoint_dir (or hydra.run.dir)")
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write atomically: a crash mid-write never leaves a torn checkpoint."""
        partial = self.path.with_suffix(".partial")
        torch.save({**state, "identity": {"config": self.identity.config, "code_version": self.identity.code_version}}, partial)
        os.replace(partial, self.path)


def _reason(err: BaseException) -> str:
    """What went wrong reading a checkpoint, without torch's advice to load it with ``weights_only=False``."""
    if isinstance(err, pickle.UnpicklingError):
        return "torch's safe loader (weights_only=True) refused its content"
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first[:200]}" if first and "weights_only" not in first else type(err).__name__
