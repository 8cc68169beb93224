"""Backbone pretraining on Digits-Det crops: this benchmark's ImageNet.

The paper's detectors start from an ImageNet-trained backbone; a detector trained from scratch
in a few CPU minutes learns where digits are long before it learns which digit. So the default
Digits-Det detector starts from a backbone trained on an 11-way classification task made from
the same source data: crops around the digits of generated Digits-Det images (10 classes) and
crops of their background (class 10), drawn only from the training pool of scans
(:func:`ghm.data.digits_det.scan_pool`), never from the scans of the val split.

The backbone is trained once per parameter set and cached under a hash of everything that
determines it (like the dataset); parallel trials that need it at once wait on a file lock for
the one that trains it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, roi_align

from ghm.data.cache import exclusive
from ghm.data.digits_det import GENERATOR_VERSION, DigitsDetParams, generate_images, scan_pool
from ghm.detection.backbones import TinyBackbone
from ghm.tracking.run import record_finished_run

log = logging.getLogger(__name__)

# Bump when the crops or the training change for the same parameters: part of the cache key.
PRETRAINING_VERSION = 1
BACKGROUND = 10  # the class of background crops
PRETRAINING_EXPERIMENT = "backbone_pretraining"
# The detector's input normalisation (torchvision's GeneralizedRCNNTransform defaults).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclass
class PretrainingParams:
    """Everything that determines the pretrained backbone, besides the dataset's look and the width."""

    images: int = 3000  # generated training-pool images the crops are cut from
    crop_size: int = 32
    context: float = 1.3  # a digit's crop is its longer side times this (with jitter)
    backgrounds_per_image: int = 4
    holdout_fraction: float = 0.1  # of the images: crops for the reported accuracy, never trained on
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    seed: int = 0


@dataclass(frozen=True)
class PretrainedBackbone:
    """A cached backbone: its weights file, its cache key and what training it measured."""

    weights: Path
    key: str
    metrics: dict[str, Any]


def cache_key(params: PretrainingParams, data: DigitsDetParams, width: int) -> str:
    """A hash of the pretraining, the dataset's generator parameters (less its size, seed and regime) and the width."""
    look = {k: v for k, v in data.without_regime().identity().items() if k not in ("train_images", "val_images", "seed")}
    payload = {"version": PRETRAINING_VERSION, "generator": GENERATOR_VERSION, "params": dataclasses.asdict(params),
               "data": look, "width": width}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def make_crops(params: PretrainingParams, data: DigitsDetParams, seed: int, count: int) -> tuple[Tensor, Tensor]:
    """Crops (uint8 [K, 3, S, S]) and labels (0-9 digits, 10 background) from ``count`` training-pool images."""
    pool = scan_pool("train", data.val_scan_fraction)
    rng = np.random.default_rng(seed + 7919)
    crops, labels = [], []
    for pixels, objects in generate_images(data.without_regime(), pool, count, seed):
        image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float()
        size = image.shape[-1]
        gt = torch.tensor([[o.bbox[0], o.bbox[1], o.bbox[0] + o.bbox[2], o.bbox[1] + o.bbox[3]] for o in objects]).reshape(-1, 4)
        boxes = [_digit_window(o.bbox, params.context, rng) for o in objects]
        kinds = [o.digit for o in objects]
        for _ in range(params.backgrounds_per_image):
            window = _background_window(gt, data, size, rng)
            if window is not None:
                boxes.append(window)
                kinds.append(BACKGROUND)
        if boxes:
            rois = torch.cat([torch.zeros(len(boxes), 1), torch.tensor(boxes, dtype=torch.float32)], dim=1)
            crops.append(roi_align(image, rois, params.crop_size, aligned=True).round().clamp(0, 255).to(torch.uint8))
            labels.extend(kinds)
    return torch.cat(crops), torch.tensor(labels)


def _digit_window(bbox: list[float], context: float, rng: np.random.Generator) -> list[float]:
    """A square around the digit, ``context`` times its longer side (+-15%), its centre jittered by 10% of the side."""
    x, y, w, h = bbox
    side = max(w, h) * context * rng.uniform(0.85, 1.15)
    cx, cy = x + w / 2 + rng.uniform(-0.1, 0.1) * side, y + h / 2 + rng.uniform(-0.1, 0.1) * side
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def _background_window(gt: Tensor, data: DigitsDetParams, size: int, rng: np.random.Generator) -> list[float] | None:
    """A square of digit-like size overlapping no digit by more than IoU 0.1 (None after 20 misses)."""
    for _ in range(20):
        side = float(rng.uniform(data.min_digit_size, min(size, data.max_digit_size * 1.3)))
        left, top = rng.uniform(0, size - side, 2)
        window = [left, top, left + side, top + side]
        if gt.numel() == 0 or box_iou(torch.tensor([window]), gt).max() <= 0.1:
            return window
    return None


class BackboneClassifier(nn.Module):
    """The detector's backbone with global pooling and a linear 11-way head."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.backbone = TinyBackbone(width)
        self.head = nn.Linear(8 * width, BACKGROUND + 1)
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1) * 255)

    def forward(self, crops: Tensor) -> Tensor:
        features = self.backbone((crops.float() - self.mean) / self.std)
        return self.head(features.mean(dim=(2, 3)))


def train_classifier(params: PretrainingParams, data: DigitsDetParams, width: int) -> tuple[BackboneClassifier, dict[str, Any]]:
    """Generate the crops and train the classifier; the metrics include per-epoch curves and the held-out accuracy."""
    started = time.perf_counter()
    holdout = max(1, round(params.images * params.holdout_fraction))
    train_x, train_y = make_crops(params, data, params.seed * 2 + 1, params.images - holdout)
    test_x, test_y = make_crops(params, data, params.seed * 2 + 2, holdout)
    generated = time.perf_counter() - started
    torch.manual_seed(params.seed)
    model = BackboneClassifier(width)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": params.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=params.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = math.ceil(len(train_y) / params.batch_size)
    total = params.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    generator = torch.Generator().manual_seed(params.seed)
    curves: dict[str, list[float]] = {"train_loss": [], "train_accuracy": [], "holdout_accuracy": []}
    for epoch in range(params.epochs):
        model.train()
        order = torch.randperm(len(train_y), generator=generator)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(order), params.batch_size):
            index = order[start:start + params.batch_size]
            logits = model(train_x[index])
            loss = F.cross_entropy(logits, train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(index)
            correct += int((logits.argmax(1) == train_y[index]).sum())
        curves["train_loss"].append(loss_sum / len(train_y))
        curves["train_accuracy"].append(correct / len(train_y))
        confusion = confusion_matrix(model, test_x, test_y)
        curves["holdout_accuracy"].append(float(confusion.diagonal().sum() / confusion.sum()))
        log.info("backbone pretraining epoch %d/%d: loss %.3f, accuracy %.3f, held-out accuracy %.3f", epoch + 1, params.epochs,
                 curves["train_loss"][-1], curves["train_accuracy"][-1], curves["holdout_accuracy"][-1])
    digits = confusion[:BACKGROUND, :BACKGROUND]
    metrics = {"holdout_accuracy": curves["holdout_accuracy"][-1], "train_accuracy": curves["train_accuracy"][-1],
               "holdout_digit_accuracy": float(confusion.diagonal()[:BACKGROUND].sum() / confusion[:BACKGROUND].sum()),
               "holdout_background_accuracy": float(confusion[BACKGROUND, BACKGROUND] / confusion[BACKGROUND].sum()),
               "holdout_digit_identity_accuracy": float(digits.diagonal().sum() / max(digits.sum(), 1)),
               "holdout_confusion": confusion.tolist(),
               "train_crops": len(train_y), "holdout_crops": len(test_y), "generation_seconds": generated,
               "seconds": time.perf_counter() - started, "curves": curves}
    return model, metrics


@torch.no_grad()
def confusion_matrix(model: nn.Module, crops: Tensor, labels: Tensor, batch_size: int = 512) -> Tensor:
    """Counts [true class, predicted class] over the 11 classes (10 is the background)."""
    model.eval()
    predicted = torch.cat([model(crops[i:i + batch_size]).argmax(1) for i in range(0, len(labels), batch_size)])
    return torch.bincount(labels * (BACKGROUND + 1) + predicted, minlength=(BACKGROUND + 1) ** 2).view(BACKGROUND + 1, -1)


def ensure_pretrained_backbone(params: PretrainingParams, data: DigitsDetParams, width: int, cache_dir: Path) -> PretrainedBackbone:
    """The cached backbone for these parameters, trained first if missing (one process at a time)."""
    key = cache_key(params, data, width)
    folder = cache_dir / key
    weights, metrics_file = folder / "backbone.pt", folder / "metrics.json"
    if not metrics_file.is_file():
        with exclusive(folder / ".lock"):  # a concurrent trial that needs it waits here, then finds it cached
            if not metrics_file.is_file():
                log.info("pretraining the backbone on Digits-Det crops (once; cached in %s)", folder)
                with _all_cores():  # trials that need it wait for it: their cores are idle meanwhile
                    model, metrics = train_classifier(params, data, width)
                _write_atomically(weights, lambda path: torch.save(model.backbone.state_dict(), path))
                _write_atomically(metrics_file, lambda path: path.write_text(json.dumps(
                    {"key": key, "params": dataclasses.asdict(params), "width": width, **metrics}, indent=2)))
    return PretrainedBackbone(weights=weights, key=key, metrics=json.loads(metrics_file.read_text()))


def record_in_mlflow(backbone: PretrainedBackbone, tracking_uri: str) -> str:
    """The MLflow run of this backbone's pretraining (experiment ``backbone_pretraining``), created once per store."""
    metrics = backbone.metrics
    with exclusive(backbone.weights.parent / ".lock"):
        return record_finished_run(
            tracking_uri, PRETRAINING_EXPERIMENT, identity=("backbone_key", backbone.key), run_name=f"backbone {backbone.key}",
            params={"width": metrics["width"], **metrics["params"]},
            metrics={k: v for k, v in metrics.items() if isinstance(v, int | float) and k != "width"},
            curves=metrics["curves"], artifacts=[backbone.weights, backbone.weights.with_name("metrics.json")])


@contextmanager
def _all_cores() -> Iterator[None]:
    """torch's CPU threads raised to the cores this process may use (a trial runs with ``train.threads``), then restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, len(os.sched_getaffinity(0))))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _write_atomically(path: Path, write: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)
