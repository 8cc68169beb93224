"""COCO-format detection data: validated loading, a torch Dataset and the batch collation.

Everything is checked before training starts, so bad input fails with the file and the entry to
fix instead of crashing mid-epoch: broken JSON, missing keys, missing image files, annotations of
unknown images or categories. Degenerate boxes (zero area, or outside the image) are dropped
with one counted warning; crowd annotations are left to the evaluation, as in torchvision.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A dataset file or entry that cannot be used, with what to fix."""


@dataclass
class DroppedBoxes:
    """Counts of annotations left out of training, reported once."""

    degenerate: int = 0
    outside: int = 0
    crowd: int = 0
    examples: list[str] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: broken JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err
    if not isinstance(document, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(document.get(key), list):
            raise DataError(f"{path}: missing or non-list key {key!r} (COCO format needs images, annotations, categories)")
    return document


def _entry(path: Path, kind: str, entry: dict[str, Any], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in entry]
    if missing:
        raise DataError(f"{path}: {kind} {entry.get('id', '?')!r} lacks {', '.join(missing)}")


class CocoDetection(Dataset):
    """Images and RetinaNet targets (``boxes`` xyxy float, ``labels`` 0..C-1) of one COCO split.

    ``labels`` index :attr:`category_ids` (the COCO ids, sorted), so evaluation maps them back.
    """

    def __init__(self, images_dir: str | Path, annotation_file: str | Path, *, hflip: bool = False) -> None:
        self.images_dir = Path(images_dir)
        self.annotation_file = Path(annotation_file)
        self.hflip = hflip
        self.epoch_seed = 0
        document = _read_json(self.annotation_file)
        for category in document["categories"]:
            _entry(self.annotation_file, "category", category, ("id", "name"))
        self.category_ids = sorted(c["id"] for c in document["categories"])
        self.category_names = {c["id"]: c["name"] for c in document["categories"]}
        label_of = {cid: i for i, cid in enumerate(self.category_ids)}
        self.images = []
        for image in document["images"]:
            _entry(self.annotation_file, "image", image, ("id", "file_name"))
            self.images.append(image)
        missing = [im for im in self.images if not (self.images_dir / im["file_name"]).is_file()]
        if missing:
            first = missing[0]
            raise DataError(
                f"{self.images_dir}: {len(missing)} of {len(self.images)} image files listed in {self.annotation_file} "
                f"are missing, e.g. {first['file_name']!r} (image id {first['id']})"
            )
        by_id = {im["id"]: im for im in self.images}
        boxes: dict[Any, list[list[float]]] = {im["id"]: [] for im in self.images}
        labels: dict[Any, list[int]] = {im["id"]: [] for im in self.images}
        self.dropped = DroppedBoxes()
        for ann in document["annotations"]:
            _entry(self.annotation_file, "annotation", ann, ("id", "image_id", "category_id", "bbox"))
            if ann["category_id"] not in label_of:
                raise DataError(
                    f"{self.annotation_file}: annotation {ann['id']} has unknown category_id {ann['category_id']!r}; "
                    f"the categories are {self.category_ids}"
                )
            if ann["image_id"] not in by_id:
                raise DataError(f"{self.annotation_file}: annotation {ann['id']} refers to unknown image_id {ann['image_id']!r}")
            box = self._clean_box(ann, by_id[ann["image_id"]])
            if box is not None:
                boxes[ann["image_id"]].append(box)
                labels[ann["image_id"]].append(label_of[ann["category_id"]])
        self.targets = [
            {"boxes": torch.tensor(boxes[im["id"]], dtype=torch.float32).reshape(-1, 4),
             "labels": torch.tensor(labels[im["id"]], dtype=torch.int64)}
            for im in self.images
        ]
        total = self.dropped.degenerate + self.dropped.outside
        if total:
            log.warning(
                "%s: dropped %d degenerate boxes (%d of zero area, %d outside their image), e.g. %s",
                self.annotation_file, total, self.dropped.degenerate, self.dropped.outside, "; ".join(self.dropped.examples),
            )

    def _clean_box(self, ann: dict[str, Any], image: dict[str, Any]) -> list[float] | None:
        """The box as xyxy clipped to the image, or None (counted) when it cannot be trained on."""
        if ann.get("iscrowd", 0):
            self.dropped.crowd += 1
            return None
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (TypeError, ValueError) as err:
            raise DataError(f"{self.annotation_file}: annotation {ann['id']} has a malformed bbox {ann['bbox']!r}") from err
        width, height = image.get("width", float("inf")), image.get("height", float("inf"))
        x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
        if w <= 0 or h <= 0:
            self.dropped.degenerate += 1
        elif x2 <= x1 or y2 <= y1:
            self.dropped.outside += 1
        else:
            return [x1, y1, x2, y2]
        if len(self.dropped.examples) < 3:
            self.dropped.examples.append(f"annotation {ann['id']} bbox {ann['bbox']}")
        return None

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Seed the augmentation of ``epoch`` so that resumed runs see the same images."""
        self.epoch_seed = seed * 100_003 + epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image = self.images[index]
        with Image.open(self.images_dir / image["file_name"]) as pil:
            pixels = pil_to_tensor(pil.convert("RGB")).float().div_(255.0)
        target = {"boxes": self.targets[index]["boxes"].clone(), "labels": self.targets[index]["labels"].clone(),
                  "image_id": torch.tensor(image["id"])}
        flip = self.hflip and torch.rand((), generator=torch.Generator().manual_seed(self.epoch_seed * 1_000_003 + index)) < 0.5
        if flip:
            pixels = pixels.flip(-1)
            boxes, width = target["boxes"], pixels.shape[-1]
            target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
        return pixels, target


def collate(batch: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Lists of images and targets, as torchvision's detection models take them."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


@dataclass(frozen=True)
class DetectionData:
    """A dataset's train and val splits, and the id its runs are tracked and paired by."""

    train: CocoDetection
    val: CocoDetection
    dataset_id: str


def coco_dataset(root: str, train_annotations: str, train_images: str, val_annotations: str, val_images: str,
                 hflip: bool) -> DetectionData:
    """Any COCO-format dataset: the splits' image folders and annotation files, relative to ``root``."""
    base = Path(root)
    train = CocoDetection(base / train_images, base / train_annotations, hflip=hflip)
    val = CocoDetection(base / val_images, base / val_annotations)
    if val.category_ids != train.category_ids:
        raise DataError(f"data: the categories of {val.annotation_file} differ from those of {train.annotation_file}")
    return DetectionData(train, val, f"coco:{base.resolve()}")
