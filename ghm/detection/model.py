"""RetinaNet (torchvision's) with its classification and box losses replaced by any configured pair.

Which examples share one GHM density estimate (``ghm_scope``, :data:`GHM_SCOPES`):

* ``official`` (the default): what the official code and mmdetection do, so that the published
  numbers can be reproduced. The batch is cut into groups of ``ghm_group_images`` images (one GPU
  of the paper's 8 x 2), and each group calls the GHM losses once per FPN level (levels summed,
  groups averaged as DDP averages GPUs). Each group keeps its own loss state (EMA of the counts),
  as each GPU does, and nothing is synchronised across ranks.
* ``per_level``: once per FPN level over the whole batch, one shared state.
* ``whole_batch``: one call over every anchor of every level and image, the paper's definition
  of the density over all examples of an iteration.

Losses other than GHM-C and GHM-R always see the whole batch in one call.
"""

from __future__ import annotations

import copy
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
GHM_SCOPES = ("official", "per_level", "whole_batch")  # which examples share one GHM density estimate (module docstring)


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
    every checkpoint; under ``ghm_scope="official"`` the groups after the first have their own
    copies (``cls_loss_groups``, ``reg_loss_groups``), one per group of ``ghm_groups``.
    """

    LOSS_MODULES = ("cls_loss", "reg_loss", "cls_loss_groups", "reg_loss_groups")  # their state is training state

    def __init__(self, backbone: nn.Module, num_classes: int, cls_loss: nn.Module, reg_loss: nn.Module, *,
                 ghm_scope: str = "official", ghm_group_images: int = 2, ghm_groups: int = 1,
                 backbone_weights: WeightsReport | None = None, **kwargs) -> None:
        super().__init__(backbone, num_classes, **kwargs)
        if ghm_scope not in GHM_SCOPES:
            raise ValueError(f"ghm_scope must be one of {', '.join(GHM_SCOPES)}, got {ghm_scope!r}")
        if ghm_group_images < 1 or ghm_groups < 1:
            raise ValueError(f"ghm_group_images and ghm_groups must be >= 1, got {ghm_group_images} and {ghm_groups}")
        self.cls_loss = cls_loss
        self.reg_loss = reg_loss
        self.ghm_scope = ghm_scope
        self.ghm_group_images = ghm_group_images
        groups = ghm_groups if ghm_scope == "official" else 1
        self.cls_loss_groups = _group_copies(cls_loss, groups)
        self.reg_loss_groups = _group_copies(reg_loss, groups)
        if ghm_scope == "official":  # each group is one GPU of the official code: its density is its own
            for loss in (cls_loss, reg_loss, *self.cls_loss_groups, *self.reg_loss_groups):
                if isinstance(loss, GHMC | GHMR):
                    loss.density.dist_reduce = False
        self.backbone_weights = backbone_weights  # how the backbone was initialised, when from a checkpoint
        self.loss_inputs = LossInputsProbe()

    def inference_state_dict(self) -> dict[str, Tensor]:
        """The detector's state without its losses' (GHM's EMA, one copy per group under the official scope): what
        inference needs, loadable into this detector built with any losses and any number of groups."""
        return {k: v for k, v in self.state_dict().items() if k.split(".", 1)[0] not in self.LOSS_MODULES}

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
        groups = self._ghm_calls(dense, whole) if isinstance(self.cls_loss, GHMC) or isinstance(self.reg_loss, GHMR) else [[whole]]
        return {
            "classification": self._loss([self.cls_loss, *self.cls_loss_groups], groups, whole, "cls"),
            "bbox_regression": self._loss([self.reg_loss, *self.reg_loss_groups], groups, whole, "box"),
        }

    def _ghm_calls(self, dense: tuple[Tensor, ...], whole: LossInputs) -> list[list[LossInputs]]:
        """The inputs of GHM's calls under ``ghm_scope``: per group of images, the parts (FPN levels) it calls on."""
        if self.ghm_scope == "whole_batch":
            return [[whole]]
        levels = self.anchor_generator.num_anchors_per_level
        images = dense[0].shape[0]
        size = self.ghm_group_images if self.ghm_scope == "official" else images
        if images % size:
            raise ValueError(f"ghm_scope=official cuts the batch into groups of {size} images (ghm_group_images), "
                             f"got a batch of {images}")
        groups = [tuple(t[start:start + size] for t in dense) for start in range(0, images, size)]
        return [[self._flatten(*(t.split(levels, dim=1)[level] for t in group)) for level in range(len(levels))] for group in groups]

    @staticmethod
    def _loss(modules: list[nn.Module], groups: list[list[LossInputs]], whole: LossInputs, kind: str) -> Tensor:
        """A GHM loss summed over each group's parts and averaged over the groups (as DDP averages GPUs); others on ``whole``."""
        def call(loss: nn.Module, part: LossInputs) -> Tensor:
            if kind == "cls":
                return loss(part.cls_logits, part.cls_targets, part.cls_weights)
            return loss(part.box_deltas, part.box_targets, part.box_weights)

        if not isinstance(modules[0], GHMC | GHMR):
            return call(modules[0], whole)
        if len(groups) > len(modules):
            raise ValueError(f"a batch of {len(groups)} GHM groups, but the model was built for {len(modules)} (ghm_groups): "
                             "build it with ghm_groups = images per step / ghm_group_images")
        per_group = [torch.stack([call(loss, part) for part in parts]).sum() for loss, parts in zip(modules, groups, strict=False)]
        return torch.stack(per_group).mean()

    @staticmethod
    def _flatten(cls_logits: Tensor, cls_targets: Tensor, cls_weights: Tensor, box_regression: Tensor,
                 box_targets: Tensor, foreground: Tensor) -> LossInputs:
        classes = cls_logits.shape[-1]
        box_deltas = box_regression[foreground]
        return LossInputs(cls_logits.reshape(-1, classes), cls_targets.reshape(-1, classes), cls_weights.reshape(-1, classes),
                          box_deltas, box_targets[foreground], torch.ones_like(box_deltas))


def _group_copies(loss: nn.Module, groups: int) -> nn.ModuleList:
    """Fresh copies of a GHM loss for the groups after the first (each group's EMA is its own); none for other losses."""
    return nn.ModuleList(copy.deepcopy(loss) for _ in range(groups - 1)) if isinstance(loss, GHMC | GHMR) else nn.ModuleList()


def _anchor_generator(base_sizes: list[int], aspect_ratios: list[float]) -> LevelAnchorGenerator:
    sizes = tuple(tuple(round(base * s, 2) for s in OCTAVE_SCALES) for base in base_sizes)
    return LevelAnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))


def build_detector(num_classes: int, cls_loss: nn.Module, reg_loss: nn.Module, *, backbone: str = "tiny", width: int = 32,
                   fpn_channels: int = 64, anchor_sizes: Sequence[int] = (12, 24, 48, 96),
                   aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), min_size: int = 128, max_size: int = 128,
                   ghm_scope: str = "official", ghm_group_images: int = 2, images_per_step: int | None = None,
                   score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                   weights: str | None = None, backbone_weights: str | None = None, frozen_stages: int = -1,
                   norm_eval: bool = False, head_convs: int = 2) -> GHMRetinaNet:
    """RetinaNet on the ``tiny`` CNN (P3-P6, P6 max-pooled; GroupNorm head) or on a ResNet (the paper's, P3-P7).

    The defaults are ``retinanet_tiny``'s, as in :class:`ghm.config.ModelConfig`; ``width`` and
    ``fpn_channels`` apply to the tiny CNN alone. ``backbone_weights`` (a local torchvision-format
    classification checkpoint) initialises the backbone, with mmdetection's ``frozen_stages`` and
    ``norm_eval`` (frozen BatchNorm); without them BatchNorm trains. ``ghm_scope`` and ``ghm_group_images`` say which
    examples share a GHM density (module docstring); ``images_per_step``, the images of one process's step, sizes the
    ``official`` scope's groups (one group when not given). ``head_convs`` is the depth of
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
    groups = max(1, (images_per_step or ghm_group_images) // ghm_group_images)
    model = GHMRetinaNet(pyramid, num_classes, cls_loss, reg_loss, ghm_scope=ghm_scope, ghm_group_images=ghm_group_images,
                         ghm_groups=groups, backbone_weights=report,
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
