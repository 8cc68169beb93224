"""RetinaNet (torchvision's) with its classification and box losses replaced by any configured pair.

GHM's density is defined over all examples of an iteration, so by default the losses see every
anchor of every FPN level and every image of the batch in one call. ``per_level=True`` instead
calls GHM losses once per level with their shared state, as the official implementation does,
so its published numbers can be reproduced.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import boxes as box_ops

from ghm.detection.backbones import WeightsReport, build_body, feature_pyramid, freeze_stages, load_backbone_weights
from ghm.losses import GHMC, GHMR

log = logging.getLogger(__name__)

# RetinaNet's octave scales: three anchor sizes per level, 2^0, 2^(1/3), 2^(2/3) of the base.
OCTAVE_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))


@dataclass(frozen=True)
class LossInputs:
    """What the losses are called with in one training step (all images and levels concatenated)."""

    cls_logits: Tensor  # [B * A, C]
    cls_targets: Tensor  # [B * A, C] one-hot
    cls_weights: Tensor  # [B * A, C]: 1 for foreground and background anchors, 0 for ignored
    box_deltas: Tensor  # [F, 4] predicted deltas of the foreground anchors
    box_targets: Tensor  # [F, 4]
    box_weights: Tensor  # [F, 4]

    def detached(self) -> LossInputs:
        return LossInputs(*(t.detach() for t in (self.cls_logits, self.cls_targets, self.cls_weights,
                                                 self.box_deltas, self.box_targets, self.box_weights)))


class LossInputsProbe(nn.Module):
    """Passes the loss inputs through unchanged: forward hooks on it observe them (the training telemetry)."""

    def forward(self, inputs: LossInputs) -> LossInputs:
        return inputs


class LevelAnchorGenerator(AnchorGenerator):
    """torchvision's anchors, remembering how many of each image's anchors each level holds."""

    def forward(self, image_list, feature_maps):  # type: ignore[override]
        per_location = self.num_anchors_per_location()
        self.num_anchors_per_level = [f.shape[-2] * f.shape[-1] * a for f, a in zip(feature_maps, per_location, strict=True)]
        return super().forward(image_list, feature_maps)


class GHMRetinaNet(RetinaNet):
    """RetinaNet whose ``compute_loss`` calls ``cls_loss`` and ``reg_loss`` (``loss(pred, target, weight)``).

    The loss modules are submodules, so their state (GHM's EMA) is part of ``state_dict`` and of
    every checkpoint.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, cls_loss: nn.Module, reg_loss: nn.Module, *,
                 per_level: bool = False, backbone_weights: WeightsReport | None = None, **kwargs) -> None:
        super().__init__(backbone, num_classes, **kwargs)
        self.cls_loss = cls_loss
        self.reg_loss = reg_loss
        self.per_level = per_level
        self.backbone_weights = backbone_weights  # how the backbone was initialised, when from a checkpoint
        self.loss_inputs = LossInputsProbe()

    def _match(self, targets: list[dict[str, Tensor]], anchors: list[Tensor]) -> list[Tensor]:
        matched = []
        for anchors_per_image, target in zip(anchors, targets, strict=True):
            if target["boxes"].numel() == 0:
                matched.append(torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64, device=anchors_per_image.device))
            else:
                matched.append(self.proposal_matcher(box_ops.box_iou(target["boxes"], anchors_per_image)))
        return matched

    def compute_loss(self, targets, head_outputs, anchors):  # type: ignore[override]
        cls_logits, box_regression = head_outputs["cls_logits"], head_outputs["bbox_regression"]  # [B, A, C], [B, A, 4]
        matched = torch.stack(self._match(targets, anchors))  # [B, A]: gt index, -1 background, -2 ignored
        foreground = matched >= 0
        cls_targets = torch.zeros_like(cls_logits)
        box_targets = torch.zeros_like(box_regression)
        for i, target in enumerate(targets):
            fg = foreground[i]
            gt = matched[i][fg]
            cls_targets[i, fg, target["labels"][gt]] = 1.0
            box_targets[i, fg] = self.box_coder.encode_single(target["boxes"][gt], anchors[i][fg])
        cls_weights = (matched != self.proposal_matcher.BETWEEN_THRESHOLDS).to(cls_logits.dtype)[..., None].expand_as(cls_logits)

        dense = (cls_logits, cls_targets, cls_weights, box_regression, box_targets, foreground)
        whole = self.loss_inputs(self._flatten(*dense))
        cls_parts = reg_parts = [whole]
        if self.per_level:  # GHM losses once per level, as the official code; the others see the whole batch
            levels = self.anchor_generator.num_anchors_per_level
            splits = [t.split(levels, dim=1) for t in dense]
            per_level = [self._flatten(*(split[level] for split in splits)) for level in range(len(levels))]
            cls_parts = per_level if isinstance(self.cls_loss, GHMC) else cls_parts
            reg_parts = per_level if isinstance(self.reg_loss, GHMR) else reg_parts
        return {
            "classification": torch.stack([self.cls_loss(p.cls_logits, p.cls_targets, p.cls_weights) for p in cls_parts]).sum(),
            "bbox_regression": torch.stack([self.reg_loss(p.box_deltas, p.box_targets, p.box_weights) for p in reg_parts]).sum(),
        }

    @staticmethod
    def _flatten(cls_logits: Tensor, cls_targets: Tensor, cls_weights: Tensor, box_regression: Tensor,
                 box_targets: Tensor, foreground: Tensor) -> LossInputs:
        classes = cls_logits.shape[-1]
        box_deltas = box_regression[foreground]
        return LossInputs(cls_logits.reshape(-1, classes), cls_targets.reshape(-1, classes), cls_weights.reshape(-1, classes),
                          box_deltas, box_targets[foreground], torch.ones_like(box_deltas))


def _anchor_generator(base_sizes: list[int], aspect_ratios: list[float]) -> LevelAnchorGenerator:
    sizes = tuple(tuple(round(base * s, 2) for s in OCTAVE_SCALES) for base in base_sizes)
    return LevelAnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))


def build_detector(num_classes: int, cls_loss: nn.Module, reg_loss: nn.Module, *, backbone: str = "tiny", width: int = 32,
                   fpn_channels: int = 64, anchor_sizes: Sequence[int] = (12, 24, 48, 96),
                   aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), min_size: int = 128, max_size: int = 128,
                   per_level: bool = False, score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                   weights: str | None = None, backbone_weights: str | None = None, frozen_stages: int = -1,
                   norm_eval: bool = False, head_convs: int = 2) -> GHMRetinaNet:
    """RetinaNet on the ``tiny`` CNN (P3-P6, P6 max-pooled; GroupNorm head) or on a ResNet (the paper's, P3-P7).

    The defaults are ``retinanet_tiny``'s, as in :class:`ghm.config.ModelConfig`; ``width`` and
    ``fpn_channels`` apply to the tiny CNN alone. ``backbone_weights`` (a local torchvision-format
    classification checkpoint) initialises the backbone, with mmdetection's ``frozen_stages`` and
    ``norm_eval`` (frozen BatchNorm); without them BatchNorm trains. ``head_convs`` is the depth of
    each head branch (RetinaNet's is 4; the tiny model's 2 costs 0.8x the step, docs/benchmarks.md). ``weights`` may name a
    whole-detector state dict. Nothing is downloaded; every file is read with ``weights_only=True``.
    """
    levels = 4 if backbone == "tiny" else 5  # P3-P6, or P3-P7
    if len(anchor_sizes) != levels:
        raise ValueError(f"anchor_sizes must give one size per pyramid level ({levels} for the {backbone} backbone), "
                         f"got {list(anchor_sizes)}")
    anchors = _anchor_generator(list(anchor_sizes), list(aspect_ratios))
    body = build_body(backbone, width=width, frozen_norm=norm_eval)
    report = load_backbone_weights(body, backbone_weights) if backbone_weights else None
    freeze_stages(body, frozen_stages)
    pyramid = feature_pyramid(body, fpn_channels)
    norm = partial(nn.GroupNorm, 8) if backbone == "tiny" else None  # torchvision's head (no norm) on ResNets
    head = RetinaNetHead(pyramid.out_channels, anchors.num_anchors_per_location()[0], num_classes, norm_layer=norm)
    _shorten_head(head, head_convs)
    model = GHMRetinaNet(pyramid, num_classes, cls_loss, reg_loss, per_level=per_level, backbone_weights=report,
                         anchor_generator=anchors, head=head, min_size=min_size, max_size=max_size, score_thresh=score_thresh,
                         nms_thresh=nms_thresh, detections_per_img=detections_per_img)
    if weights:
        load_weights(model, Path(weights))
    return model


def _shorten_head(head: RetinaNetHead, convs: int) -> None:
    """Keep the first ``convs`` of the 4 convolutions torchvision builds in each branch."""
    if not 1 <= convs <= 4:
        raise ValueError(f"head_convs must be in [1, 4] (convolutions per head branch), got {convs!r}")
    for branch in (head.classification_head, head.regression_head):
        branch.conv = branch.conv[:convs]


def load_weights(model: nn.Module, path: Path) -> None:
    """Load matching tensors of a local state dict (never pickled code: ``weights_only=True``)."""
    if not path.is_file():
        raise FileNotFoundError(f"model.weights: no such file {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"model.weights: {path} has no tensor matching this model's names and shapes")
    model.load_state_dict(usable, strict=False)
    log.info("loaded %d of %d tensors from %s (%d of the model's left as initialised)", len(usable), len(state), path,
             len(own) - len(usable))
