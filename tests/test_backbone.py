"""Backbone initialisation: torchvision-format checkpoints mapped onto the detector, frozen stages and BatchNorm."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.ops.misc import FrozenBatchNorm2d

from ghm.detection.backbones import BackboneWeightsError, TinyBackbone
from ghm.detection.model import build_detector
from ghm.losses import FocalLoss, SmoothL1Loss


def random_checkpoint(module: nn.Module, path: Path, seed: int) -> dict[str, torch.Tensor]:
    """The module's state dict in its own (torchvision) naming with random values (nothing downloaded): its random
    initialisation, and BatchNorm statistics and affine parameters drawn away from the identity."""
    torch.manual_seed(seed)
    module.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if key.endswith(("running_var", "running_mean", "bias")) or (key.endswith("weight") and value.ndim == 1):
            low = 0.5 if key.endswith(("running_var", "weight")) else -0.1
            state[key] = low + torch.rand(value.shape, generator=generator) * (1.0 if low == 0.5 else 0.2)
        else:
            state[key] = value.clone()
    torch.save(state, path)
    return state


def detector(**kwargs) -> nn.Module:
    settings = {"backbone": "resnet50", "anchor_sizes": (32, 64, 128, 256, 512), "min_size": 128, "max_size": 128} | kwargs
    return build_detector(3, FocalLoss(), SmoothL1Loss(), **settings)


def train_steps(model: nn.Module, steps: int = 2) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    images = [torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 70.0, 90.0]]), "labels": torch.tensor([1])}] * 2
    model.train()
    for _ in range(steps):
        losses = model(images, targets)
        optimizer.zero_grad()
        (losses["classification"] + losses["bbox_regression"]).backward()
        optimizer.step()


@pytest.mark.slow  # ResNet-50s
def test_an_imagenet_style_resnet50_checkpoint_maps_onto_the_detector(tmp_path: Path) -> None:
    state = random_checkpoint(resnet50(), tmp_path / "resnet50.pth", seed=0)
    model = detector(backbone_weights=str(tmp_path / "resnet50.pth"), frozen_stages=1, norm_eval=True)
    body = model.backbone.body.state_dict()
    loaded = {k for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert set(body) == loaded  # every backbone tensor came from the checkpoint (FrozenBatchNorm has no counter)
    for key in loaded:
        torch.testing.assert_close(body[key], state[key], rtol=0, atol=0, msg=key)
        torch.testing.assert_close(model.state_dict()[f"backbone.body.{key}"], state[key], rtol=0, atol=0, msg=key)
    report = model.backbone_weights
    assert set(report.loaded) == loaded and {"fc.weight", "fc.bias"} <= set(report.unused)
    assert all(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.body.modules() if "Norm" in type(m).__name__)


@pytest.mark.slow  # ResNet-50s
def test_frozen_stages_and_frozen_batchnorm_do_not_change_in_training(tmp_path: Path) -> None:
    random_checkpoint(resnet50(), tmp_path / "resnet50.pth", seed=1)
    torch.manual_seed(0)
    model = detector(backbone_weights=str(tmp_path / "resnet50.pth"), frozen_stages=1, norm_eval=True)
    before = {k: v.clone() for k, v in model.backbone.body.state_dict().items()}
    train_steps(model)
    after = model.backbone.body.state_dict()
    for key, value in before.items():
        frozen = key.startswith(("conv1.", "bn1.", "layer1.")) or not key.endswith(".weight") or ".bn" in key \
            or "downsample.1" in key
        if frozen:  # the stem, layer1, and every BatchNorm statistic and affine parameter
            torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)
    changed = [k for k in before if k.startswith("layer2.") and k.endswith("conv1.weight") and not torch.equal(before[k], after[k])]
    assert changed, "layer2's convolutions must train"
    assert not any(p.requires_grad for name, p in model.backbone.body.named_parameters() if name.startswith(("conv1", "layer1")))


@pytest.mark.slow  # ResNet-50s
@pytest.mark.parametrize("frozen_stages, trainable", [(-1, "conv1"), (0, "layer1"), (2, "layer3"), (4, None)])
def test_frozen_stages_follow_mmdetection(frozen_stages: int, trainable: str | None) -> None:
    model = detector(frozen_stages=frozen_stages)
    order = ["conv1", "layer1", "layer2", "layer3", "layer4"]
    first_trainable = next((stage for stage in order
                            if any(p.requires_grad for n, p in model.backbone.body.named_parameters() if n.startswith(stage))), None)
    assert first_trainable == trainable


@pytest.mark.slow  # ResNet-50s
def test_from_scratch_batchnorm_trains_and_is_never_identity_frozen() -> None:
    model = detector()
    norms = [m for m in model.backbone.body.modules() if "Norm" in type(m).__name__]
    assert norms and all(type(m) is nn.BatchNorm2d for m in norms)
    before = model.backbone.body.bn1.running_mean.clone()
    train_steps(model, steps=1)
    assert not torch.equal(model.backbone.body.bn1.running_mean, before)  # statistics follow the data


def test_the_tiny_backbone_loads_its_own_format_and_freezes_its_stem(tmp_path: Path) -> None:
    state = random_checkpoint(TinyBackbone(16), tmp_path / "tiny.pt", seed=2)
    model = build_detector(3, FocalLoss(), SmoothL1Loss(), backbone="tiny", width=16, min_size=96, max_size=96,
                           backbone_weights=str(tmp_path / "tiny.pt"), frozen_stages=0, norm_eval=True)
    torch.testing.assert_close(model.backbone.body.stem[0].weight, state["stem.0.weight"], rtol=0, atol=0)
    assert not model.backbone.body.stem[0].weight.requires_grad and model.backbone.body.layer1[0][0].weight.requires_grad


@pytest.mark.slow  # ResNet-50s
def test_checkpoints_that_do_not_fit_fail_with_the_names(tmp_path: Path) -> None:
    random_checkpoint(resnet18(), tmp_path / "resnet18.pth", seed=3)
    with pytest.raises(BackboneWeightsError, match=r"does not fit the ResNet backbone: .*shapes differ for layer1\.0\.conv1\.weight"):
        detector(backbone_weights=str(tmp_path / "resnet18.pth"))
    state = random_checkpoint(resnet50(), tmp_path / "prefixed.pth", seed=4)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "prefixed.pth")
    with pytest.raises(BackboneWeightsError, match=r"tensors missing \(e\.g\. .*unknown names \(e\.g\. module\."):
        detector(backbone_weights=str(tmp_path / "prefixed.pth"))
    with pytest.raises(BackboneWeightsError, match="no such file"):
        detector(backbone_weights=str(tmp_path / "absent.pth"))
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, tmp_path / "nested.pth")
    with pytest.raises(BackboneWeightsError, match="not a state dict of tensors"):
        detector(backbone_weights=str(tmp_path / "nested.pth"))

    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    torch.save({"conv1.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match=r"(?i)weights only|unpickl"):
        detector(backbone_weights=str(tmp_path / "evil.pth"))
