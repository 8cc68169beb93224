"""Digits-Det generation and COCO-format loading, bad inputs included."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ghm.data.cache import exclusive
from ghm.data.coco import CocoDetection, DataError, collate
from ghm.data.digits_det import DigitsDetParams, ensure_digits_det

SMALL = DigitsDetParams(train_images=12, val_images=6, image_size=96, max_digit_size=40, seed=3)


def test_digits_det_is_deterministic_cached_and_coco_format(tmp_path: Path) -> None:
    first = ensure_digits_det(SMALL, tmp_path / "a")
    second = ensure_digits_det(SMALL, tmp_path / "b")
    for split in ("train", "val"):
        a = json.loads(first[split].annotation_file.read_text())
        b = json.loads(second[split].annotation_file.read_text())
        assert a == b
        assert {c["id"] for c in a["categories"]} == set(range(1, 11))
        assert len(a["images"]) == {"train": 12, "val": 6}[split]
        for image in a["images"]:
            pixels_a = np.asarray(Image.open(first[split].images_dir / image["file_name"]))
            pixels_b = np.asarray(Image.open(second[split].images_dir / image["file_name"]))
            assert pixels_a.shape == (96, 96, 3) and np.array_equal(pixels_a, pixels_b)
        for ann in a["annotations"]:
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and x + w <= 96 and y + h <= 96 and w > 0 and h > 0
            assert ann["area"] == pytest.approx(w * h, abs=0.05)
    mtime = first["train"].annotation_file.stat().st_mtime_ns
    assert ensure_digits_det(SMALL, tmp_path / "a")["train"].annotation_file.stat().st_mtime_ns == mtime  # cached
    other = DigitsDetParams(**{**SMALL.__dict__, "seed": 4})
    assert other.key() != SMALL.key()


def _split(root: dict, split: str) -> tuple[dict, list[np.ndarray]]:
    document = json.loads(root[split].annotation_file.read_text())
    return document, [np.asarray(Image.open(root[split].images_dir / i["file_name"])) for i in document["images"]]


def test_unlabelled_digits_are_drawn_but_left_out_of_the_training_annotations_only(tmp_path: Path) -> None:
    base = ensure_digits_det(SMALL, tmp_path)
    regime = ensure_digits_det(DigitsDetParams(**{**SMALL.__dict__, "train_images": 60, "unlabelled_fraction": 0.4}), tmp_path)
    full = ensure_digits_det(DigitsDetParams(**{**SMALL.__dict__, "train_images": 60}), tmp_path)
    (annotated, images), (complete, full_images) = _split(regime, "train"), _split(full, "train")
    assert all(np.array_equal(a, b) for a, b in zip(images, full_images, strict=True))  # the same pictures: every digit drawn
    kept = {(a["image_id"], tuple(a["bbox"])) for a in annotated["annotations"]}
    every = {(a["image_id"], tuple(a["bbox"])) for a in complete["annotations"]}
    assert kept < every and abs(len(kept) / len(every) - 0.6) < 0.1  # about 40% left out, none invented
    assert _split(regime, "val")[0]["annotations"] == _split(base, "val")[0]["annotations"]  # the val split stays complete
    assert SMALL.key() == DigitsDetParams(**{**SMALL.__dict__, "unlabelled_fraction": 0.0, "lookalikes": 0}).key()


def test_lookalikes_are_pasted_clear_of_the_digits_which_stay_as_they_were(tmp_path: Path) -> None:
    base, regime = ensure_digits_det(SMALL, tmp_path), ensure_digits_det(DigitsDetParams(**{**SMALL.__dict__, "lookalikes": 3}), tmp_path)
    for split in ("train", "val"):
        (annotations, images), (base_annotations, base_images) = _split(regime, split), _split(base, split)
        assert annotations["annotations"] == base_annotations["annotations"]  # negatives: nothing annotated
        changed = [np.abs(a.astype(int) - b).sum(axis=2) > 0 for a, b in zip(images, base_images, strict=True)]
        assert all(c.mean() > 0.02 for c in changed)  # every image got some
        inside = outside = 0
        for mask, image in zip(changed, annotations["images"], strict=True):
            boxes = np.zeros_like(mask)
            for a in (a for a in annotations["annotations"] if a["image_id"] == image["id"]):
                x, y, w, h = (round(v) for v in a["bbox"])
                boxes[y:y + h, x:x + w] = True
            inside, outside = inside + (mask & boxes).sum(), outside + (mask & ~boxes).sum()
        assert inside < 0.15 * outside  # placed clear of the digits (IoU <= max_overlap): at most their edges are touched


def test_the_backbones_pretraining_is_the_same_for_every_regime() -> None:
    from ghm.detection.pretraining import PretrainingParams, cache_key

    regime = DigitsDetParams(unlabelled_fraction=0.3, lookalikes=5)
    assert regime.key() != DigitsDetParams().key()
    assert cache_key(PretrainingParams(), regime, 32) == cache_key(PretrainingParams(), DigitsDetParams(), 32)
    assert regime.without_regime() == DigitsDetParams()


def test_a_dataset_another_process_is_generating_is_waited_for_not_made_twice(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    holding, release = threading.Event(), threading.Event()

    def other_process() -> None:  # holds the dataset's lock as a trial generating it does
        with exclusive(tmp_path / f".{SMALL.key()}.lock"):
            holding.set()
            release.wait(60)

    other = threading.Thread(target=other_process)
    other.start()
    holding.wait(60)
    splits: dict = {}
    waiting = threading.Thread(target=lambda: splits.update(ensure_digits_det(SMALL, tmp_path)))
    with caplog.at_level(logging.INFO, logger="ghm.data.digits_det"):
        waiting.start()
        waiting.join(1.0)
        assert waiting.is_alive() and not (tmp_path / SMALL.key()).exists()  # it waits while the other holds the lock
        release.set()
        other.join()
        waiting.join(60)
    assert len(json.loads(splits["val"].annotation_file.read_text())["images"]) == 6
    assert "generating Digits-Det (12 train + 6 val images, once" in caplog.text and "Digits-Det generated in" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{SMALL.key()}.lock", SMALL.key()]  # no staging folder left


def test_digits_det_is_long_tailed_and_small(tmp_path: Path) -> None:
    params = DigitsDetParams(train_images=150, val_images=1, seed=0)
    split = ensure_digits_det(params, tmp_path)["train"]
    annotations = json.loads(split.annotation_file.read_text())["annotations"]
    counts = np.bincount([a["category_id"] - 1 for a in annotations], minlength=10)
    assert counts.max() >= 4 * max(counts.min(), 1)  # head class at least 4x the rarest
    areas = np.array([a["area"] for a in annotations])
    assert (areas < 32 * 32).mean() > 0.6  # mostly COCO-small objects


def write_coco(root: Path, document: object, images: dict[str, tuple[int, int]]) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, (w, h) in images.items():
        Image.new("RGB", (w, h), (90, 120, 150)).save(root / "images" / name)
    path = root / "ann.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def document(annotations: list[dict], images: list[dict] | None = None) -> dict:
    return {"images": images or [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
            "annotations": annotations, "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}


def test_loads_boxes_labels_and_category_mapping(tmp_path: Path) -> None:
    path = write_coco(tmp_path, document([
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 5]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [30, 20, 20, 20]},  # clipped to the image
    ]), {"a.png": (40, 30)})
    dataset = CocoDetection(tmp_path / "images", path)
    assert dataset.category_ids == [3, 7] and dataset.num_classes == 2
    image, target = dataset[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32 and image.max() <= 1
    torch.testing.assert_close(target["boxes"], torch.tensor([[2.0, 3.0, 12.0, 8.0], [30.0, 20.0, 40.0, 30.0]]))
    assert target["labels"].tolist() == [1, 0] and int(target["image_id"]) == 1
    images, targets = collate([dataset[0], dataset[0]])
    assert len(images) == 2 and len(targets) == 2


def test_broken_json_names_the_file_and_position(tmp_path: Path) -> None:
    path = write_coco(tmp_path, '{"images": [}', {})
    with pytest.raises(DataError, match=r"ann.json: broken JSON at line 1, column 13"):
        CocoDetection(tmp_path / "images", path)


def test_missing_key_is_named(tmp_path: Path) -> None:
    path = write_coco(tmp_path, {"images": [], "annotations": []}, {})
    with pytest.raises(DataError, match="missing or non-list key 'categories'"):
        CocoDetection(tmp_path / "images", path)


def test_missing_image_file_is_named(tmp_path: Path) -> None:
    images = [{"id": 1, "file_name": "a.png"}, {"id": 9, "file_name": "gone.png"}]
    path = write_coco(tmp_path, document([], images), {"a.png": (40, 30)})
    with pytest.raises(DataError, match=r"1 of 2 image files listed in .*ann.json are missing, e.g. 'gone.png' \(image id 9\)"):
        CocoDetection(tmp_path / "images", path)


def test_unknown_category_is_named(tmp_path: Path) -> None:
    path = write_coco(tmp_path, document([{"id": 5, "image_id": 1, "category_id": 4, "bbox": [1, 1, 5, 5]}]), {"a.png": (40, 30)})
    with pytest.raises(DataError, match=r"annotation 5 has unknown category_id 4; the categories are \[3, 7\]"):
        CocoDetection(tmp_path / "images", path)


def test_unknown_image_and_malformed_entries_are_named(tmp_path: Path) -> None:
    path = write_coco(tmp_path, document([{"id": 6, "image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5]}]), {"a.png": (40, 30)})
    with pytest.raises(DataError, match="annotation 6 refers to unknown image_id 2"):
        CocoDetection(tmp_path / "images", path)
    path = write_coco(tmp_path, document([{"id": 8, "image_id": 1, "bbox": [1, 1, 5, 5]}]), {"a.png": (40, 30)})
    with pytest.raises(DataError, match="annotation 8 lacks category_id"):
        CocoDetection(tmp_path / "images", path)


def test_degenerate_boxes_are_dropped_with_a_counted_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_coco(tmp_path, document([
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 0, 5]},  # zero width
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, -2]},  # negative height
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [50, 40, 5, 5]},  # outside the 40x30 image
        {"id": 4, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]},
        {"id": 5, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5], "iscrowd": 1},
    ]), {"a.png": (40, 30)})
    with caplog.at_level(logging.WARNING):
        dataset = CocoDetection(tmp_path / "images", path)
    assert (dataset.dropped.degenerate, dataset.dropped.outside, dataset.dropped.crowd) == (2, 1, 1)
    assert "dropped 3 degenerate boxes (2 of zero area, 1 outside their image)" in caplog.text
    assert dataset[0][1]["labels"].tolist() == [1]


def test_horizontal_flip_is_seeded_per_epoch(tmp_path: Path) -> None:
    path = write_coco(tmp_path, document([{"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 3, 10, 5]}]), {"a.png": (40, 30)})
    dataset = CocoDetection(tmp_path / "images", path, hflip=True)
    seen = []
    for epoch in range(8):
        dataset.set_epoch(epoch, seed=0)
        boxes = dataset[0][1]["boxes"]
        dataset.set_epoch(epoch, seed=0)
        torch.testing.assert_close(dataset[0][1]["boxes"], boxes)  # same epoch, same flip
        seen.append(boxes[0, 0].item())
    assert set(seen) == {2.0, 28.0}  # both flipped (40 - 12) and not
