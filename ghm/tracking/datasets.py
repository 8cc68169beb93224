"""A run's data as MLflow dataset inputs: one per split, in the ``train`` and ``val`` contexts.

The UI's Datasets column shows them, and runs trained and evaluated on the same data show the same
digests: a split's digest is the hash of its COCO annotation file, which for Digits-Det is
generated from the dataset's parameters (its cache key), so two runs on the same data agree and
any change to the annotations shows. The source is the annotation file's path; the profile counts
the split's images, boxes and categories.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from typing import Any

from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource

from ghm.data.coco import CocoDetection, DetectionData


class DetectionSplit(MetaDataset):
    """One split of a COCO-format detection dataset, as MLflow records it (name, digest, source, profile)."""

    def __init__(self, split: CocoDetection, name: str) -> None:
        self.split = split
        super().__init__(LocalArtifactDatasetSource(str(split.annotation_file.resolve())), name=name, digest=file_digest(split))

    @cached_property
    def profile(self) -> dict[str, Any]:
        return {"images": len(self.split), "boxes": int(sum(len(t["labels"]) for t in self.split.targets)),
                "categories": [self.split.category_names[c] for c in self.split.category_ids], "images_dir": str(self.split.images_dir)}

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self.profile)}


def file_digest(split: CocoDetection) -> str:
    """The first 16 hex digits of the annotation file's SHA-256 (what MLflow shows as the digest)."""
    digest = hashlib.sha256()
    with split.annotation_file.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def dataset_splits(data: DetectionData) -> dict[str, DetectionSplit]:
    """The train and val splits by the context they are logged in (``mlflow.log_input(dataset, context=...)``)."""
    return {context: DetectionSplit(split, f"{data.dataset_id}/{context}") for context, split in (("train", data.train), ("val", data.val))}
