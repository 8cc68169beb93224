"""The sweep trial the current process is running, if any: how a task reports to the sweep.

The sweeper's Ray Tune trainable activates a :class:`TrialContext` around the Hydra task; the
task (``launch.py``) reads it to report per-epoch metrics (for pruning) and to nest its MLflow
run under the sweep's parent run. Outside a sweep, :func:`current` is ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrialContext:
    """One trial: its number, its swept parameters, the sweep's MLflow parent run and a reporter."""

    number: int
    params: dict[str, Any]
    parent_run_id: str | None
    report: Callable[[dict[str, Any]], None]
    tags: dict[str, str] = field(default_factory=dict)
    mlflow_run_id: str | None = None

    def on_epoch(self, epoch: int, metrics: dict[str, float], run_id: str | None) -> None:
        """The Trainer's per-epoch callback: one report per epoch, so schedulers can prune."""
        self.mlflow_run_id = run_id
        self.report({**metrics, "epoch": epoch, "mlflow_run_id": run_id or ""})


_current: TrialContext | None = None


def current() -> TrialContext | None:
    return _current


@contextmanager
def active(context: TrialContext) -> Iterator[TrialContext]:
    global _current
    previous, _current = _current, context
    try:
        yield context
    finally:
        _current = previous
