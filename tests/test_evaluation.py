"""mAP from faster-coco-eval, cross-checked against pycocotools on the same detections."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ghm.data.digits_det import DigitsDetParams, ensure_digits_det
from ghm.detection.evaluation import STAT_NAMES, coco_map


def noisy_detections(annotation_file: Path, seed: int) -> list[dict]:
    """Ground truth jittered, with wrong classes, misses and false positives, scored at random."""
    rng = np.random.default_rng(seed)
    document = json.loads(annotation_file.read_text())
    detections = []
    for ann in document["annotations"]:
        if rng.random() < 0.15:
            continue  # a miss
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
        category = ann["category_id"] if rng.random() < 0.8 else int(rng.integers(1, 11))
        detections.append({"image_id": ann["image_id"], "category_id": category, "score": float(rng.uniform(0.05, 1)),
                           "bbox": [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])]})
    for image in document["images"]:
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0, 80, 2)
            detections.append({"image_id": image["id"], "category_id": int(rng.integers(1, 11)),
                               "score": float(rng.uniform(0.05, 0.6)), "bbox": [x, y, 12.0, 15.0]})
    return detections


def pycocotools_stats(annotation_file: Path, detections: list[dict]) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(annotation_file))
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[:6]


def test_faster_coco_eval_agrees_with_pycocotools(tmp_path: Path) -> None:
    split = ensure_digits_det(DigitsDetParams(train_images=1, val_images=40, seed=5), tmp_path)["val"]
    for seed in range(3):
        detections = noisy_detections(split.annotation_file, seed)
        ours = coco_map(split.annotation_file, detections)
        reference = pycocotools_stats(split.annotation_file, detections)
        assert list(ours.metrics) == list(STAT_NAMES)
        np.testing.assert_allclose([ours.metrics[k] for k in STAT_NAMES], reference, atol=1e-4)
        assert 0.1 < ours.metrics["AP50"] < 0.95  # a meaningful, imperfect score
        assert "Average Precision" in ours.summary and ours.num_detections == len(detections)


def test_no_detections_score_zero(tmp_path: Path) -> None:
    split = ensure_digits_det(DigitsDetParams(train_images=1, val_images=5, seed=6), tmp_path)["val"]
    evaluation = coco_map(split.annotation_file, [])
    assert evaluation.metrics["mAP"] == 0.0 and evaluation.metrics["AP50"] == 0.0
