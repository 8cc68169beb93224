"""Feature pyramids the detector stands on: a small CNN for CPUs, and torchvision's ResNet-50 FPN (P3-P7).

Each builder returns a :class:`~torchvision.models.detection.backbone_utils.BackboneWithFPN`-like
module with ``out_channels``, whose feature maps RetinaNet's anchors and head use level by level.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import Conv2dNormActivation


class TinyBackbone(nn.Sequential):
    """A small CNN for CPU training: strides 2, 4, 8, 16, 32 with BatchNorm, trained from scratch."""

    def __init__(self, width: int) -> None:
        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(Conv2dNormActivation(cin, cout, stride=2), Conv2dNormActivation(cout, cout))

        super().__init__()
        self.add_module("stem", Conv2dNormActivation(3, width, stride=2))
        self.add_module("layer1", stage(width, width))
        self.add_module("layer2", stage(width, 2 * width))
        self.add_module("layer3", stage(2 * width, 4 * width))
        self.add_module("layer4", stage(4 * width, 8 * width))


def tiny_fpn(width: int, fpn_channels: int) -> BackboneWithFPN:
    """:class:`TinyBackbone` with an FPN on its strides 8, 16, 32 (P3-P5, plus a max-pooled P6)."""
    return BackboneWithFPN(TinyBackbone(width), return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
                           in_channels_list=[2 * width, 4 * width, 8 * width], out_channels=fpn_channels)


def resnet50_fpn() -> BackboneWithFPN:
    """ResNet-50 with the paper's FPN (P3-P7, P6 and P7 from P5), every stage trainable, no weights loaded."""
    return resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5, returned_layers=[2, 3, 4],
                               extra_blocks=LastLevelP6P7(256, 256))
