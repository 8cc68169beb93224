"""The detector's backbone and feature pyramid: the tiny CNN for CPUs or a torchvision ResNet, from scratch or a checkpoint.

The paper's protocol starts the backbone from ImageNet weights, freezes the stem and the first
residual stage (mmdetection's ``frozen_stages=1``) and freezes BatchNorm (``norm_eval``); a
backbone trained from scratch keeps trainable BatchNorm. Weights come only from local files in
torchvision's classification format (``conv1.weight``, ``layer1.0.conv1.weight``, ``fc.*`` for
ResNets; ``stem.*``, ``layer1.*`` for the tiny CNN), read with ``weights_only=True``; the report
says which tensors matched, and a checkpoint that does not fit fails with the names that differ.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import Conv2dNormActivation, FrozenBatchNorm2d

log = logging.getLogger(__name__)

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
           "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")
# A classification checkpoint's tensors that a detector backbone has no use for.
CLASSIFIER_KEYS = ("fc.", "head.")


class TinyBackbone(nn.Sequential):
    """A small CNN for CPU training: strides 2, 4, 8, 16, 32 (stem, layer1-layer4), with BatchNorm."""

    def __init__(self, width: int, norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d) -> None:
        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(Conv2dNormActivation(cin, cout, stride=2, norm_layer=norm_layer),
                                 Conv2dNormActivation(cout, cout, norm_layer=norm_layer))

        super().__init__()
        self.add_module("stem", Conv2dNormActivation(3, width, stride=2, norm_layer=norm_layer))
        self.add_module("layer1", stage(width, width))
        self.add_module("layer2", stage(width, 2 * width))
        self.add_module("layer3", stage(2 * width, 4 * width))
        self.add_module("layer4", stage(4 * width, 8 * width))


def stages(body: nn.Module) -> list[list[nn.Module]]:
    """The backbone's stages in order: the stem (stage 0), then layer1-layer4 (stages 1-4)."""
    stem = [body.stem] if isinstance(body, TinyBackbone) else [body.conv1, body.bn1]
    return [stem, *([getattr(body, f"layer{i}")] for i in range(1, 5))]


def freeze_stages(body: nn.Module, frozen_stages: int) -> None:
    """mmdetection's ``frozen_stages``: -1 trains everything, k >= 0 freezes the stem and layer1..layer k."""
    if not -1 <= frozen_stages <= 4:
        raise ValueError(f"frozen_stages must be in [-1, 4] (-1: none, 0: the stem, k: the stem and layer1..layer{{k}}), "
                         f"got {frozen_stages!r}")
    for stage in stages(body)[: frozen_stages + 1]:
        for module in stage:
            module.requires_grad_(False)


def build_body(name: str, *, width: int = 32, frozen_norm: bool = False) -> nn.Module:
    """``tiny`` or a torchvision ResNet (``RESNETS``), with frozen BatchNorm or trainable BatchNorm."""
    norm_layer = FrozenBatchNorm2d if frozen_norm else nn.BatchNorm2d
    if name == "tiny":
        return TinyBackbone(width, norm_layer)
    if name not in RESNETS:
        raise ValueError(f"unknown backbone {name!r}; allowed: tiny, {', '.join(RESNETS)}")
    return getattr(resnet, name)(weights=None, norm_layer=norm_layer)


def feature_pyramid(body: nn.Module, fpn_channels: int) -> BackboneWithFPN:
    """An FPN on the body's strides 8, 16, 32: P3-P5 and a max-pooled P6 on the tiny CNN (``fpn_channels`` wide);
    the paper's P3-P7 (P6 and P7 from P5, 256 channels) on a ResNet."""
    layers = {"layer2": "0", "layer3": "1", "layer4": "2"}
    if isinstance(body, TinyBackbone):
        width = body.stem[0].out_channels
        return BackboneWithFPN(body, layers, [2 * width, 4 * width, 8 * width], fpn_channels)
    c5 = body.fc.in_features  # 2048 for ResNet-50
    return BackboneWithFPN(body, layers, [c5 // 4, c5 // 2, c5], 256, extra_blocks=LastLevelP6P7(256, 256))


@dataclass(frozen=True)
class WeightsReport:
    """How a checkpoint mapped onto a backbone: the tensors loaded, and the checkpoint's unused ones."""

    path: str
    loaded: tuple[str, ...]
    unused: tuple[str, ...]

    def summary(self) -> str:
        unused = f"; unused: {', '.join(self.unused)}" if self.unused else ""
        return f"{len(self.loaded)} tensors of {self.path} loaded into the backbone{unused}"


class BackboneWeightsError(ValueError):
    """A backbone checkpoint that does not fit the configured backbone."""


def load_backbone_weights(body: nn.Module, path: str | Path) -> WeightsReport:
    """Load a torchvision-format classification checkpoint into ``body`` (all of its tensors, or an error)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"backbone weights: no such file {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"backbone weights: {path} is not a state dict of tensors (torchvision's format: "
                                   f"{{'conv1.weight': ..., 'layer1.0.conv1.weight': ...}})")
    own = {k: v for k, v in body.state_dict().items() if not k.startswith(CLASSIFIER_KEYS)}  # the detector drops ``fc``
    ignored = {k for k in own if k.endswith("num_batches_tracked")}
    usable = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_KEYS) and not k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - ignored - set(usable))
    unexpected = sorted(set(usable) - set(own))
    wrong = sorted(k for k in set(usable) & set(own) if usable[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        details = [f"{len(missing)} of the backbone's tensors missing (e.g. {', '.join(missing[:3])})" if missing else "",
                   f"{len(unexpected)} unknown names (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
                   "shapes differ for " + ", ".join(f"{k} {tuple(usable[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3])
                   if wrong else ""]
        raise BackboneWeightsError(f"backbone weights: {path} does not fit the {type(body).__name__} backbone: "
                                   + "; ".join(d for d in details if d) + ". Expected torchvision's classification format "
                                   "for this architecture (keys like 'conv1.weight', 'layer1.0.conv1.weight').")
    body.load_state_dict(usable, strict=False)
    report = WeightsReport(str(path), tuple(sorted(usable)), tuple(sorted(set(state) - set(usable))))
    log.info("%s", report.summary())
    return report
