"""Training-step time of RetinaNet with GHM against focal loss, on the same model and batch, side by side.

Builds ``retinanet_tiny`` (CPU) or ``retinanet_r50_fpn`` (``--model``) once per loss pair from the
same seed, feeds every pair the same Digits-Det batch, and times forward + backward + SGD step
(median of ``--repeats`` interleaved rounds after warm-up). Prints the step time, images/s and the ratio against
the focal baseline for: focal + smooth L1, GHM-C + GHM-R with the official code's calls (per FPN level and per
group of 2 images, ``ghm_scope=official``), the same over the whole batch (the paper's density), per FPN level over
the batch, and GHM-C with the exact density.

    python benchmarks/bench_training.py [--model retinanet_tiny] [--batch 8] [--repeats 10] [--amp]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from ghm.data.coco import CocoDetection, collate
from ghm.data.digits_det import DigitsDetParams, ensure_digits_det
from ghm.detection.model import build_detector
from ghm.losses import GHMC, GHMR, FocalLoss, SmoothL1Loss

PAIRS = {
    "focal + smooth L1": (lambda: FocalLoss(), lambda: SmoothL1Loss(), "whole_batch"),
    "GHM-C + GHM-R official": (lambda: GHMC(30, 0.75), lambda: GHMR(0.02, 10, 0.7, 10.0), "official"),
    "GHM-C + GHM-R whole batch": (lambda: GHMC(30, 0.75), lambda: GHMR(0.02, 10, 0.7, 10.0), "whole_batch"),
    "GHM-C + GHM-R per level": (lambda: GHMC(30, 0.75), lambda: GHMR(0.02, 10, 0.7, 10.0), "per_level"),
    "GHM-C exact + GHM-R": (lambda: GHMC(30, density="exact"), lambda: GHMR(0.02, 10, 0.7, 10.0), "whole_batch"),
}


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, images: list[torch.Tensor],
               targets: list[dict], device: torch.device) -> float:
    """Seconds of one forward + backward + SGD step (under fp16 autocast when the scaler is enabled: AMP)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.float16, enabled=scaler.is_enabled()):
        losses = model(images, targets)
    optimizer.zero_grad()
    scaler.scale(losses["classification"] + losses["bbox_regression"]).backward()
    scaler.step(optimizer)
    scaler.update()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="retinanet_tiny", choices=["retinanet_tiny", "retinanet_r50_fpn"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--amp", action="store_true", help="fp16 autocast and gradient scaling (CUDA only), as train.amp")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")
    split = ensure_digits_det(DigitsDetParams(train_images=args.batch, val_images=1, image_size=args.image_size,
                                              max_digit_size=min(44, args.image_size)), Path(".cache") / "digits_det")["train"]
    dataset = CocoDetection(split.images_dir, split.annotation_file)
    images, targets = collate([dataset[i] for i in range(args.batch)])
    images = [i.to(device) for i in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    backbone, anchors = (("tiny", [12, 24, 48, 96]) if args.model == "retinanet_tiny"  # as conf/model/<model>.yaml
                         else ("resnet50", [32, 64, 128, 256, 512]))
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, {args.model}, batch {args.batch} "
          f"x {args.image_size}px, {'AMP, ' if scaler.is_enabled() else ''}median of {args.repeats} steps")
    models = {}
    for name, (cls, reg, scope) in PAIRS.items():
        torch.manual_seed(0)
        model = build_detector(dataset.num_classes, cls(), reg(), backbone=backbone, anchor_sizes=anchors, min_size=args.image_size,
                               max_size=args.image_size, ghm_scope=scope, images_per_step=args.batch).to(device).train()
        models[name] = (model, torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9))
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(args.repeats + 2):  # interleaved, so drift of the machine hits every pair alike
        for name, (model, optimizer) in models.items():
            elapsed = train_step(model, optimizer, scaler, images, targets, device)
            if round_ >= 2:
                times[name].append(elapsed)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    for name, value in seconds.items():
        ratio = value / seconds["focal + smooth L1"]
        print(f"{name:26s} {value * 1e3:9.1f} ms/step {args.batch / value:8.1f} images/s  {ratio:6.3f}x focal")

if __name__ == "__main__":
    main()
