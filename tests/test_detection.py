"""The detector's loss and evaluation against independent oracles: torchvision's own RetinaNet loss, and known boxes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models.detection import RetinaNet
from torchvision.ops import boxes as box_ops

from ghm.data.coco import CocoDetection, collate
from ghm.data.digits_det import DigitsDetParams, ensure_digits_det
from ghm.detection.evaluation import evaluate
from ghm.detection.model import build_detector
from ghm.losses import GHMC, GHMR, FocalLoss, SmoothL1Loss

IMAGES = [  # one image per batch: torchvision normalises per image, GHMRetinaNet over the batch (the same for one image)
    (torch.rand(3, 96, 96), {"boxes": torch.tensor([[10.0, 12.0, 30.0, 40.0], [50.0, 20.0, 71.0, 44.0]]), "labels": torch.tensor([2, 5])}),
    (torch.rand(3, 96, 96), {"boxes": torch.tensor([[4.0, 60.0, 40.0, 92.0]]), "labels": torch.tensor([0])}),
    (torch.rand(3, 96, 96), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}),
]


def head_inputs(model: RetinaNet, image: torch.Tensor, target: dict) -> tuple[list[dict], dict, list[torch.Tensor]]:
    """What RetinaNet.forward hands compute_loss in training: transformed targets, head outputs, anchors."""
    images, targets = model.transform([image], [target])
    features = list(model.backbone(images.tensors).values())
    return targets, model.head(features), model.anchor_generator(images, features)


@pytest.mark.parametrize(("beta", "torchvision_loss"), [(1.0, "smooth_l1"), (0.0, "l1")])
def test_focal_and_smooth_l1_equal_torchvisions_retinanet_loss(beta: float, torchvision_loss: str) -> None:
    torch.manual_seed(0)
    model = build_detector(10, FocalLoss(), SmoothL1Loss(beta=beta), min_size=96, max_size=96).train()
    model.head.regression_head._loss_type = torchvision_loss  # torchvision's box loss (smooth L1 with its beta 1, or L1)
    ignored = 0
    for image, target in IMAGES:
        targets, head_outputs, anchors = head_inputs(model, image, target)
        ours = model.compute_loss(targets, head_outputs, anchors)
        stock = RetinaNet.compute_loss(model, targets, head_outputs, anchors)  # matching, ignore band, box coding: torchvision's
        torch.testing.assert_close(ours["classification"], stock["classification"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours["bbox_regression"], stock["bbox_regression"], rtol=1e-5, atol=1e-6)
        if target["boxes"].numel():
            matched = model.proposal_matcher(box_ops.box_iou(targets[0]["boxes"], anchors[0]))
            ignored += int((matched == model.proposal_matcher.BETWEEN_THRESHOLDS).sum())
    assert ignored > 0  # the ignore band was exercised


class GroundTruth(nn.Module):
    """A "detector" answering each image with its annotated boxes (optionally shifted), at score 1."""

    def __init__(self, dataset: CocoDetection, shift: float = 0.0) -> None:
        super().__init__()
        self.by_size = {}
        self.targets = [dataset[i][1] for i in range(len(dataset))]
        self.shift = shift
        self.calls = 0

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for _ in images:
            target = self.targets[self.calls]
            self.calls += 1
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] += self.shift * (boxes[:, 2] - boxes[:, 0])[:, None]
            out.append({"boxes": boxes, "scores": torch.ones(len(boxes)), "labels": target["labels"]})
        return out


@pytest.fixture(scope="module")
def val_split(tmp_path_factory: pytest.TempPathFactory) -> CocoDetection:
    split = ensure_digits_det(DigitsDetParams(train_images=1, val_images=20, seed=7), tmp_path_factory.mktemp("digits"))["val"]
    return CocoDetection(split.images_dir, split.annotation_file)


def test_known_boxes_score_a_perfect_map(val_split: CocoDetection) -> None:
    loader = DataLoader(val_split, batch_size=4, collate_fn=collate)
    evaluation = evaluate(GroundTruth(val_split), loader, val_split, torch.device("cpu"))
    assert evaluation.metrics["mAP"] == pytest.approx(1.0) and evaluation.metrics["AP50"] == pytest.approx(1.0)
    assert evaluation.num_detections == len(json.loads(Path(val_split.annotation_file).read_text())["annotations"])


def test_boxes_off_by_a_third_count_at_iou_half_but_not_at_three_quarters(val_split: CocoDetection) -> None:
    # Shifting a box by a third of its width leaves IoU (2/3) / (4/3) = 0.5 ... just under: use a quarter, IoU 0.6.
    loader = DataLoader(val_split, batch_size=4, collate_fn=collate)
    evaluation = evaluate(GroundTruth(val_split, shift=0.25), loader, val_split, torch.device("cpu"))
    assert evaluation.metrics["AP50"] == pytest.approx(1.0) and evaluation.metrics["AP75"] == pytest.approx(0.0)
    assert 0.0 < evaluation.metrics["mAP"] < 0.5


def test_the_inference_state_of_an_official_scope_ghm_detector_loads_into_a_detector_built_without_losses() -> None:
    """What the logged MLflow model holds: the weights without GHM's per-group EMA state (8 images per step are 4 groups of
    2 under the official scope, so the trained detector has 3 group copies of each loss that an inference build lacks)."""
    trained = build_detector(10, GHMC(), GHMR(), min_size=96, max_size=96, ghm_scope="official", images_per_step=8)
    assert any(k.startswith("cls_loss_groups.2.") for k in trained.state_dict())  # the check can fail: group state exists
    state = trained.inference_state_dict()
    assert not any(k.split(".", 1)[0] in ("cls_loss", "reg_loss", "cls_loss_groups", "reg_loss_groups") for k in state)
    inference = build_detector(10, nn.Identity(), nn.Identity(), min_size=96, max_size=96, ghm_scope="official")
    inference.load_state_dict(state)  # strict: every tensor of the detector, and nothing else
    for key, value in state.items():
        assert torch.equal(inference.state_dict()[key], value)
