"""Digits-Det: a built-in detection dataset made from the real data that ships with scikit-learn.

Handwritten digits (``load_digits``, 1797 scans of 8x8) are composed onto cluttered backgrounds
(crops of the photos ``load_sample_images`` ships, plus noise and strokes), with scale variation
(log-uniform sizes: many small objects), occlusion, low contrast, unlabelled distractors (strokes
and digit fragments) and a long-tailed class frequency, so the easy/hard and positive/negative
imbalance GHM addresses is really there.

The 1797 scans are split once, per class, into a training pool and a validation pool
(:func:`scan_pool`): the val split draws only from the validation pool, the train split and the
backbone pretraining (:mod:`ghm.detection.pretraining`) only from the training pool, so no handwriting the
detector is evaluated on was ever seen in training.

Two parameters make the regime GHM's paper says it is for, without changing anything else of an
image: ``unlabelled_fraction`` leaves that share of the training split's digits out of its annotations
(drawn but unlabelled: outliers whose gradient norm stays near 1; the val split stays fully
annotated), and ``lookalikes`` pastes that many look-alike negatives into every image (digits
rotated by a quarter turn, or mirrored where that makes no digit). Their draws come from
generators of their own, so the images and the other digits stay those of the default dataset.

Generation is deterministic in its parameters and writes a COCO-format dataset (PNG images and
one JSON per split) to ``<cache_dir>/<key>``, where the key hashes the parameters; one process
generates it while parallel trials that need it wait (:mod:`ghm.data.cache`), into a private folder
renamed in place, so an interrupted generation never leaves a dataset that looks complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ghm.data.cache import exclusive
from ghm.data.coco import CocoDetection, DetectionData

log = logging.getLogger(__name__)

# Bump when the generator's output changes for the same parameters: it is part of the cache key.
GENERATOR_VERSION = 2
# The scan split is fixed (its own seed), so every parameter set and the pretraining share it.
_SCAN_SPLIT_SEED = 1797
# The regime parameters and their defaults: at the default they are left out of the cache key (the datasets made before
# them keep their key) and the backbone's pretraining never sees them (it is the benchmark's ImageNet, one for every regime).
REGIME_DEFAULTS = {"unlabelled_fraction": 0.0, "lookalikes": 0}
# Digits whose mirror image is no digit (0, 1 and 8 mirror into themselves): the mirrored look-alikes.
_MIRRORABLE = (2, 3, 4, 5, 6, 7, 9)


@dataclass
class DigitsDetParams:
    """Everything that determines the generated dataset."""

    image_size: int = 128
    train_images: int = 4000
    val_images: int = 200
    min_objects: int = 2
    max_objects: int = 7
    min_digit_size: int = 20
    max_digit_size: int = 48
    class_tail: float = 0.5  # class frequency ~ 1 / rank^class_tail
    min_contrast: float = 0.9
    occlusion_prob: float = 0.05
    max_distractors: int = 2
    noise_std: float = 0.02
    max_overlap: float = 0.1  # largest IoU between two digits of an image
    min_luminance_gap: float = 0.5  # a digit's colour differs from its background's luminance by at least this
    box_opacity: float = 0.35  # a digit's box bounds its pixels at least this opaque
    background_blur: float = 2.0  # Gaussian blur radius (pixels) of the background photo
    val_scan_fraction: float = 0.25  # share of each digit's scans reserved for the val split
    seed: int = 0
    unlabelled_fraction: float = 0.0  # share of the training split's digits drawn but left out of its annotations
    lookalikes: int = 0  # look-alike negatives per image: digits turned a quarter, or mirrored where that makes no digit

    def identity(self) -> dict[str, object]:
        """The parameters that make the dataset, the regime parameters left out at their defaults."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(DigitsDetParams)}
        return {k: v for k, v in fields.items() if k not in REGIME_DEFAULTS or v != REGIME_DEFAULTS[k]}

    def key(self) -> str:
        """Cache key: a hash of the parameters and the generator version."""
        payload = json.dumps({"version": GENERATOR_VERSION, **self.identity()}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:12]

    def without_regime(self) -> DigitsDetParams:
        """The same look with the regime parameters at their defaults: what the backbone's pretraining sees."""
        return dataclasses.replace(self, **REGIME_DEFAULTS)


@dataclass(frozen=True)
class CocoSplit:
    """Where one split of a COCO-format dataset lives."""

    images_dir: Path
    annotation_file: Path


@dataclass(frozen=True)
class ScanPool:
    """Digit scans (8x8, values 0..16) and their labels, one pool of the fixed split."""

    scans: np.ndarray
    labels: np.ndarray
    indices: np.ndarray  # positions in ``load_digits()``, for checking the split


def scan_pool(split: str, val_fraction: float) -> ScanPool:
    """The ``"train"`` or ``"val"`` pool of sklearn's digits: per class, a fixed random share goes to val."""
    from sklearn.datasets import load_digits

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    digits = load_digits()
    rng = np.random.default_rng(_SCAN_SPLIT_SEED)
    val = np.zeros(len(digits.target), dtype=bool)
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(digits.target == digit))
        val[members[: round(len(members) * val_fraction)]] = True
    indices = np.flatnonzero(val if split == "val" else ~val)
    return ScanPool(digits.images[indices], digits.target[indices], indices)


def _class_probabilities(params: DigitsDetParams, rng: np.random.Generator) -> np.ndarray:
    ranks = rng.permutation(10) + 1  # which digit is frequent is itself seeded
    weights = 1.0 / ranks.astype(float) ** params.class_tail
    return weights / weights.sum()


def _background(photos: list[np.ndarray], size: int, blur: float, rng: np.random.Generator) -> np.ndarray:
    photo = photos[rng.integers(len(photos))]
    crop = int(rng.integers(size, min(photo.shape[:2]) + 1))
    top = int(rng.integers(photo.shape[0] - crop + 1))
    left = int(rng.integers(photo.shape[1] - crop + 1))
    patch = Image.fromarray(photo[top:top + crop, left:left + crop]).resize((size, size), Image.BILINEAR)
    if blur > 0:  # softer texture: the clutter stays, the digits stand out
        patch = patch.filter(ImageFilter.GaussianBlur(blur))
    image = np.asarray(patch, dtype=np.float32) / 255.0
    gray = image.mean(axis=2, keepdims=True)
    desaturate = rng.uniform(0.0, 0.7)
    return (1 - desaturate) * image + desaturate * gray


def _digit_alpha(scan: np.ndarray, height: int, width: int) -> np.ndarray:
    """An 8x8 scan (0..16) resized to height x width, as opacity in [0, 1]."""
    image = Image.fromarray((scan * (255.0 / 16.0)).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    if boxes.size == 0:
        return np.zeros(0)
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def _luminance(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _legible(color: np.ndarray, background: np.ndarray, gap: float) -> np.ndarray:
    """``color`` shifted in luminance, away from the background's, until they differ by ``gap`` (as far as [0, 1] allows)."""
    difference = _luminance(color) - _luminance(background)
    if abs(difference) >= gap:
        return color
    direction = 1.0 if _luminance(background) < 0.5 else -1.0
    return np.clip(color + direction * (gap - direction * difference), 0.0, 1.0)


def _paste(image: np.ndarray, alpha: np.ndarray, top: int, left: int, color: np.ndarray) -> None:
    h, w = alpha.shape
    region = image[top:top + h, left:left + w]
    region[:] = region * (1 - alpha[..., None]) + color * alpha[..., None]


@dataclass(frozen=True)
class DigitObject:
    """One annotated digit: its box (x, y, w, h), its class and the scan (index in ``load_digits()``) drawn."""

    bbox: list[float]
    digit: int
    scan: int


def _compose(params: DigitsDetParams, photos: list[np.ndarray], pool: ScanPool, class_p: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, list[DigitObject]]:
    """One image and its digits; every scan, distractors' included, comes from ``pool``."""
    size = params.image_size
    scans = pool.scans
    image = _background(photos, size, params.background_blur, rng)
    boxes: list[np.ndarray] = []
    annotations = []
    for _ in range(int(rng.integers(params.min_objects, params.max_objects + 1))):
        digit = int(rng.choice(10, p=class_p))
        chosen = int(rng.choice(np.flatnonzero(pool.labels == digit)))
        scan = scans[chosen]
        height = int(np.exp(rng.uniform(np.log(params.min_digit_size), np.log(params.max_digit_size))))
        width = max(4, int(height * rng.uniform(0.7, 1.1)))
        top, left = int(rng.integers(0, size - height + 1)), int(rng.integers(0, size - width + 1))
        alpha = _digit_alpha(scan, height, width) * rng.uniform(params.min_contrast, 1.0)
        ys, xs = np.nonzero(alpha > params.box_opacity)
        if ys.size == 0:
            continue
        box = np.array([left + xs.min(), top + ys.min(), left + xs.max() + 1, top + ys.max() + 1], dtype=float)
        if np.any(_iou(box, np.array(boxes).reshape(-1, 4)) > params.max_overlap):
            continue
        local = image[top:top + height, left:left + width].mean(axis=(0, 1))
        color = np.clip(1.0 - local + rng.normal(0, 0.25, 3), 0, 1)  # roughly opposite the background
        color = _legible(color, local, params.min_luminance_gap)
        _paste(image, alpha, top, left, color)
        if rng.random() < params.occlusion_prob:  # a patch of background colour over part of the digit
            oh, ow = max(2, int(height * rng.uniform(0.2, 0.5))), max(2, int(width * rng.uniform(0.2, 0.5)))
            oy, ox = top + int(rng.integers(0, height - oh + 1)), left + int(rng.integers(0, width - ow + 1))
            image[oy:oy + oh, ox:ox + ow] = local + rng.normal(0, 0.05, 3)
        boxes.append(box)
        annotations.append(DigitObject([box[0], box[1], box[2] - box[0], box[3] - box[1]], digit, int(pool.indices[chosen])))
    canvas = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, params.max_distractors + 1))):
        if rng.random() < 0.5:  # a stroke
            points = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(int(rng.integers(2, 4)))]
            draw.line(points, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 4)))
        else:  # the top or bottom half of a digit: digit-like, but no digit
            scan = scans[rng.integers(len(scans))].copy()
            scan[:4] = 0 if rng.random() < 0.5 else scan[:4]
            scan[4:] = 0 if scan[:4].any() else scan[4:]
            height = int(rng.integers(params.min_digit_size, params.max_digit_size + 1))
            alpha = _digit_alpha(scan, height, height)
            top, left = int(rng.integers(0, size - height + 1)), int(rng.integers(0, size - height + 1))
            array = np.asarray(canvas, dtype=np.float32) / 255.0
            _paste(array, alpha, top, left, rng.uniform(0, 1, 3))
            canvas = Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8))
            draw = ImageDraw.Draw(canvas)
    pixels = np.asarray(canvas, dtype=np.float32) / 255.0 + rng.normal(0, params.noise_std, (size, size, 3))
    return (np.clip(pixels, 0, 1) * 255).astype(np.uint8), annotations


def generate_images(params: DigitsDetParams, pool: ScanPool, count: int, seed: int,
                    unlabelled_fraction: float = 0.0) -> Iterator[tuple[np.ndarray, list[DigitObject]]]:
    """``count`` images (H x W x 3 uint8) with their annotated digits, drawn from ``pool``.

    ``params.lookalikes`` look-alike negatives are pasted into each image, and ``unlabelled_fraction`` of its digits
    are left out of the annotations, each from a generator of its own: the images and digits stay the default's.
    """
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    rng = np.random.default_rng(seed)
    lookalike_rng, unlabelled_rng = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])
    class_p = _class_probabilities(params, np.random.default_rng(params.seed))
    for _ in range(count):
        pixels, objects = _compose(params, photos, pool, class_p, rng)
        if params.lookalikes:
            pixels = _paste_lookalikes(pixels, objects, params, pool, lookalike_rng)
        if unlabelled_fraction > 0:
            objects = [o for o in objects if unlabelled_rng.random() >= unlabelled_fraction]
        yield pixels, objects


def _paste_lookalikes(pixels: np.ndarray, objects: list[DigitObject], params: DigitsDetParams, pool: ScanPool,
                      rng: np.random.Generator) -> np.ndarray:
    """``params.lookalikes`` digit-like negatives (a scan turned a quarter, or mirrored where that makes no digit), sized and
    coloured as the digits, each placed clear of every digit's box (IoU <= max_overlap; skipped after 20 tries)."""
    image = pixels.astype(np.float32) / 255.0
    size = params.image_size
    boxes = np.array([[o.bbox[0], o.bbox[1], o.bbox[0] + o.bbox[2], o.bbox[1] + o.bbox[3]] for o in objects]).reshape(-1, 4)
    for _ in range(params.lookalikes):
        chosen = int(rng.integers(len(pool.scans)))
        scan = pool.scans[chosen]
        if rng.random() < 0.5 and int(pool.labels[chosen]) in _MIRRORABLE:
            scan = scan[:, ::-1]
        else:
            scan = np.rot90(scan, k=1 if rng.random() < 0.5 else 3)
        height = int(np.exp(rng.uniform(np.log(params.min_digit_size), np.log(params.max_digit_size))))
        width = max(4, int(height * rng.uniform(0.7, 1.1)))
        for _ in range(20):
            top, left = int(rng.integers(0, size - height + 1)), int(rng.integers(0, size - width + 1))
            if not np.any(_iou(np.array([left, top, left + width, top + height], dtype=float), boxes) > params.max_overlap):
                break
        else:
            continue
        alpha = _digit_alpha(np.ascontiguousarray(scan), height, width) * rng.uniform(params.min_contrast, 1.0)
        local = image[top:top + height, left:left + width].mean(axis=(0, 1))
        color = _legible(np.clip(1.0 - local + rng.normal(0, 0.25, 3), 0, 1), local, params.min_luminance_gap)
        _paste(image, alpha, top, left, color)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def _write_split(params: DigitsDetParams, split: str, count: int, seed: int, root: Path) -> None:
    pool = scan_pool(split, params.val_scan_fraction)
    (root / split).mkdir(parents=True)
    images, annotations = [], []
    unlabelled = params.unlabelled_fraction if split == "train" else 0.0  # the val split stays fully annotated
    for image_id, (pixels, objects) in enumerate(generate_images(params, pool, count, seed, unlabelled), start=1):
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(root / split / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": params.image_size, "height": params.image_size})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": obj.digit + 1,
                                "bbox": [round(v, 2) for v in obj.bbox], "area": round(obj.bbox[2] * obj.bbox[3], 2),
                                "iscrowd": 0, "scan": obj.scan})
    categories = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]
    document = {"info": {"description": "Digits-Det", "params": dataclasses.asdict(params)},
                "images": images, "annotations": annotations, "categories": categories}
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"{split}.json").write_text(json.dumps(document))


def ensure_digits_det(params: DigitsDetParams, cache_dir: str | os.PathLike[str]) -> dict[str, CocoSplit]:
    """Generate the dataset once per parameter set (parallel trials wait for the one generating it); return its splits."""
    root = Path(cache_dir) / params.key()
    if not (root / "params.json").exists():
        with exclusive(Path(cache_dir) / f".{params.key()}.lock"):
            if not (root / "params.json").exists():
                _generate(params, root)
    return {split: CocoSplit(root / split, root / "annotations" / f"{split}.json") for split in ("train", "val")}


def _generate(params: DigitsDetParams, root: Path) -> None:
    log.info("generating Digits-Det (%d train + %d val images, once; cached in %s)", params.train_images, params.val_images, root)
    started = time.monotonic()
    staging = root.with_name(f".staging-{root.name}-{uuid.uuid4().hex[:8]}")
    try:
        _write_split(params, "train", params.train_images, params.seed * 2 + 1, staging)
        _write_split(params, "val", params.val_images, params.seed * 2 + 2, staging)
        (staging / "params.json").write_text(json.dumps(dataclasses.asdict(params), indent=2))
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("Digits-Det generated in %.0f s", time.monotonic() - started)


def digits_det_dataset(cache_dir: str, hflip: bool, **params: object) -> DetectionData:
    """Digits-Det with these generator parameters, generated into ``cache_dir`` on first use."""
    generator = DigitsDetParams(**params)
    splits = ensure_digits_det(generator, cache_dir)
    return DetectionData(CocoDetection(splits["train"].images_dir, splits["train"].annotation_file, hflip=hflip),
                         CocoDetection(splits["val"].images_dir, splits["val"].annotation_file),
                         f"digits-det-{generator.key()}")
