"""What a training epoch reports: mean losses, learning rate and throughput, a progress bar, and the paper's figures.

The figures are drawn from the live loss inputs of the steps at the start, middle and end of
training, observed with a forward hook on the detector's :class:`~ghm.detection.model.LossInputsProbe`
for those steps only: the model carries no switch for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from tqdm import tqdm

from ghm.detection.model import GHMRetinaNet, LossInputs
from ghm.losses import GHMC, GHMR, ASL1Loss
from ghm.losses.figures import batch_figures
from ghm.tracking.run import RunTracker


def figure_phases(total_steps: int) -> dict[int, str]:
    """The iterations whose loss inputs are drawn, by phase name."""
    return {0: "start", total_steps // 2: "middle", total_steps - 1: "end"}


@contextmanager
def observed_loss_inputs(model: GHMRetinaNet) -> Iterator[list[LossInputs]]:
    """Collect (detached) what the losses are called with while the block runs."""
    seen: list[LossInputs] = []
    hook = model.loss_inputs.register_forward_hook(lambda module, args, output: seen.append(output.detached()))
    try:
        yield seen
    finally:
        hook.remove()


def log_figures(tracker: RunTracker, phase: str, inputs: LossInputs, cls_loss: nn.Module, reg_loss: nn.Module) -> None:
    """The paper's figures of one step, e.g. ``figures/start/gradient_norm_cls.png``, drawn with the losses' own settings."""
    settings: dict[str, float] = {}
    if isinstance(cls_loss, GHMC):
        settings["cls_bins"] = cls_loss.density.bins
    if isinstance(reg_loss, GHMR):
        settings["reg_bins"] = reg_loss.density.bins
    if isinstance(reg_loss, GHMR | ASL1Loss):
        settings["mu"] = reg_loss.mu
    figures = batch_figures(inputs.cls_logits, inputs.cls_targets, inputs.cls_weights, inputs.box_deltas, inputs.box_targets,
                            inputs.box_weights, **settings)
    for name, figure in figures.items():
        tracker.log_figure(figure, f"figures/{phase}/{name}.png")


class EpochMeter:
    """Mean losses, throughput and a progress bar (rank 0's) over the steps of one epoch."""

    def __init__(self, epoch: int, epochs: int, steps: int, show: bool) -> None:
        self.sums = {"loss": 0.0, "loss_cls": 0.0, "loss_box": 0.0}
        self.steps = self.images = 0
        self.started = time.perf_counter()
        self.bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", disable=not show, dynamic_ncols=True, mininterval=1.0)

    def step(self, losses: dict[str, float] | None, images: int, lr: float) -> None:
        """One optimizer step (``losses`` None: a skipped one) over ``images`` images of all ranks."""
        if losses is not None:
            for key, value in losses.items():
                self.sums[key] += value
            self.steps += 1
            self.images += images
            self.bar.set_postfix(loss=f"{losses['loss']:.3f}", cls=f"{losses['loss_cls']:.3f}", box=f"{losses['loss_box']:.3f}",
                                 lr=f"{lr:.2e}", refresh=False)
        self.bar.update()

    def metrics(self, lr: float, skipped: int) -> dict[str, float]:
        self.bar.close()
        seconds = time.perf_counter() - self.started
        metrics = {f"train_{k}": v / max(self.steps, 1) for k, v in self.sums.items()}
        metrics.update({"lr": lr, "images_per_second": self.images / seconds, "epoch_seconds": seconds, "skipped_steps": float(skipped)})
        return metrics
