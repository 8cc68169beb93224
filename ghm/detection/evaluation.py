"""COCO box mAP of a detector on a split, with faster-coco-eval (pycocotools' semantics, in C++)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from faster_coco_eval import COCO, COCOeval_faster
from torch import nn
from torch.utils.data import DataLoader

from ghm.data.coco import CocoDetection

# The first six of COCOeval's stats, under the names the tracking and the sweeps use.
STAT_NAMES = ("mAP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass(frozen=True)
class Evaluation:
    """mAP and its breakdown (-1 where the split has no ground truth of that size), and COCOeval's summary."""

    metrics: dict[str, float]
    summary: str
    num_detections: int


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, dataset: CocoDetection, device: torch.device) -> list[dict[str, Any]]:
    """COCO result entries (xywh boxes, COCO category ids) for every image of ``loader``."""
    was_training = model.training
    model.eval()
    results = []
    try:
        for images, targets in loader:
            outputs = model([image.to(device) for image in images])
            for output, target in zip(outputs, targets, strict=True):
                boxes = output["boxes"].cpu()
                boxes[:, 2:] -= boxes[:, :2]
                image_id = int(target["image_id"])
                for box, score, label in zip(boxes.tolist(), output["scores"].tolist(), output["labels"].tolist(), strict=True):
                    results.append({"image_id": image_id, "category_id": dataset.category_ids[label],
                                    "bbox": [round(v, 3) for v in box], "score": round(score, 5)})
    finally:
        model.train(was_training)
    return results


def coco_map(annotation_file: str | Path, detections: list[dict[str, Any]]) -> Evaluation:
    """Evaluate COCO-format detections against the ground truth of ``annotation_file``."""
    ground_truth = COCO(str(annotation_file))
    lines: list[str] = []
    evaluator = COCOeval_faster(ground_truth, ground_truth.loadRes(detections), "bbox", print_function=lines.append)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    metrics = {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats[: len(STAT_NAMES)], strict=True)}
    return Evaluation(metrics=metrics, summary="\n".join(str(line) for line in lines), num_detections=len(detections))


def evaluate(model: nn.Module, loader: DataLoader, dataset: CocoDetection, device: torch.device) -> Evaluation:
    """Predict on ``dataset`` and score the predictions against its annotation file."""
    return coco_map(dataset.annotation_file, predict(model, loader, dataset, device))
