"""The embedded pretraining stage: the scan split, crops from the training pool only, the cache, the MLflow record."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_digits

from ghm.data import digits_det
from ghm.data.digits_det import DigitsDetParams, ensure_digits_det, scan_pool
from ghm.detection import pretraining
from ghm.detection.pretraining import BACKGROUND, PretrainingParams, ensure_pretrained_backbone, make_crops, record_in_mlflow

DATA = DigitsDetParams(train_images=6, val_images=6, image_size=96, max_digit_size=40, seed=1)
TINY = PretrainingParams(images=12, epochs=1, batch_size=32)


def test_the_scans_split_per_digit_into_disjoint_pools() -> None:
    train, val = scan_pool("train", 0.25), scan_pool("val", 0.25)
    assert not set(train.indices) & set(val.indices)
    assert sorted([*train.indices, *val.indices]) == list(range(1797))
    labels = load_digits().target
    for digit in range(10):
        share = np.isin(np.flatnonzero(labels == digit), val.indices).mean()
        assert abs(share - 0.25) < 0.01, digit  # every digit has its quarter of scans held out
    np.testing.assert_array_equal(train.labels, labels[train.indices])


def test_each_split_draws_its_digits_from_its_own_pool(tmp_path: Path) -> None:
    splits = ensure_digits_det(DATA, tmp_path)
    for split in ("train", "val"):
        pool = set(scan_pool(split, DATA.val_scan_fraction).indices)
        scans = [a["scan"] for a in json.loads(splits[split].annotation_file.read_text())["annotations"]]
        assert scans and set(scans) <= pool, split


def test_pretraining_never_sees_a_scan_of_the_val_split(monkeypatch) -> None:
    seen: list[int] = []
    drawn_from: list[set[int]] = []
    generate = digits_det.generate_images

    def spy(params, pool, count, seed):
        drawn_from.append(set(pool.indices))
        for pixels, objects in generate(params, pool, count, seed):
            seen.extend(o.scan for o in objects)
            yield pixels, objects

    monkeypatch.setattr(pretraining, "generate_images", spy)
    crops, labels = make_crops(TINY, DATA, seed=3, count=10)
    val = set(scan_pool("val", DATA.val_scan_fraction).indices)
    assert drawn_from and all(not pool & val for pool in drawn_from)  # distractor fragments come from the same pool
    assert seen and not set(seen) & val
    assert crops.shape[1:] == (3, TINY.crop_size, TINY.crop_size) and crops.dtype == torch.uint8
    assert (labels == BACKGROUND).any() and (labels < BACKGROUND).sum() == len(seen)


def _ensure(cache: str, queue) -> None:
    torch.set_num_threads(1)
    backbone = ensure_pretrained_backbone(TINY, DATA, 8, Path(cache))
    queue.put((backbone.key, str(backbone.weights), backbone.metrics["seconds"]))


@pytest.mark.slow
def test_the_backbone_is_trained_once_when_parallel_runs_need_it(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_ensure, args=(str(tmp_path), queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert results[0] == results[1]  # the same backbone, and the same training's metrics: it was trained once
    key, weights, _ = results[0]
    assert [p.name for p in tmp_path.iterdir()] == [key]
    assert sorted(p.name for p in (tmp_path / key).iterdir()) == [".lock", "backbone.pt", "metrics.json"]
    state = torch.load(weights, weights_only=True)
    assert "stem.0.weight" in state and "layer4.1.0.weight" in state  # the detector's body names, no classifier head


@pytest.mark.slow
def test_the_pretraining_is_recorded_once_per_store(tmp_path: Path) -> None:
    backbone = ensure_pretrained_backbone(TINY, DATA, 8, tmp_path / "cache")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = record_in_mlflow(backbone, uri)
    assert record_in_mlflow(backbone, uri) == run_id
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["backbone_key"] == backbone.key
    assert run.data.params["epochs"] == "1" and run.data.params["width"] == "8"
    assert run.data.metrics["holdout_accuracy"] == backbone.metrics["holdout_accuracy"]
    assert len(client.get_metric_history(run_id, "train_loss")) == TINY.epochs
    assert {a.path for a in client.list_artifacts(run_id)} == {"backbone.pt", "metrics.json"}
    assert len(client.search_runs([run.info.experiment_id])) == 1

