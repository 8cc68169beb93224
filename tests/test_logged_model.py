"""The detector a run logs, loaded with ``mlflow.pyfunc.load_model`` in a fresh process, detects a Digits-Det val image's digits.

The references are independent of MLflow: the val split's own COCO annotation (every digit found by
a box of IoU >= 0.5) and the trained detector itself in the training process (the same boxes, scores'
order and labels); the pyfunc is fed each image both as a file path and as an array.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from ghm.detection.training import train
from tests.conftest import build_test_job

pytestmark = pytest.mark.slow

# A detector that finds digits after about a minute on 2 idle cores: one or two big digits on small images, the embedded
# pretraining (small). Its boxes are good long before its labels are (docs/benchmarks.md), so the boxes are what is checked.
DETECTOR = ["loss=focal", "data.train_images=400", "data.val_images=8", "data.image_size=64", "data.min_objects=1", "data.max_objects=2",
            "data.min_digit_size=28", "data.max_digit_size=40", "model.min_size=64", "model.max_size=64", "pretrain.images=200",
            "pretrain.epochs=3", "train.epochs=3", "train.max_iters_per_epoch=50", "train.batch_size=8", "train.warmup_iters=50",
            "train.lr_steps=[3]", "train.figures=false", "mlflow.system_metrics=false", "mlflow.experiment_name=detector"]
MIN_SCORE = 0.1

LOAD_AND_PREDICT = """
import json, sys
import mlflow, numpy as np, pandas as pd
from PIL import Image
min_score, model, paths = float(sys.argv[1]), mlflow.pyfunc.load_model(sys.argv[2]), sys.argv[3:]
by_path = model.predict(pd.DataFrame({"image": paths}), params={"min_score": min_score})
arrays = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
by_array = model.predict(pd.DataFrame({"image": arrays}), params={"min_score": min_score})
print(json.dumps({"path": by_path.to_dict("records"), "array": by_array.to_dict("records"),
                  "inputs": [c.name for c in model.metadata.get_input_schema().inputs]}))
"""


def iou(a: list[float], b: list[float]) -> float:
    width, height = max(0.0, min(a[2], b[2]) - max(a[0], b[0])), max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_the_logged_detector_detects_a_val_images_digits_in_a_fresh_process(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = build_test_job([*DETECTOR, f"checkpoint_dir={tmp_path / 'ckpt'}", f"mlflow.tracking_uri={uri}"])
    result = train(job)
    run = MlflowClient(uri).get_run(result.run_id)
    [output] = run.outputs.model_outputs
    assert not any(key.startswith("system/") for key in run.data.metrics)  # mlflow.system_metrics=false: none sampled
    val = job.data.val
    annotations = json.loads(val.annotation_file.read_text())
    images = annotations["images"][:3]
    paths = [str(val.images_dir / i["file_name"]) for i in images]
    answer = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, str(MIN_SCORE), f"models:/{output.model_id}", *paths], cwd=tmp_path,
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True, timeout=300)
    assert answer.returncode == 0, answer.stderr[-3000:]
    predicted = json.loads(answer.stdout.strip().splitlines()[-1])
    assert predicted["inputs"] == ["image"] and predicted["path"] == predicted["array"]
    job.model.eval()
    for image, detections in zip(images, predicted["path"], strict=True):
        with torch.no_grad():  # the same detector in this process, on the dataset's own tensor of the image
            reference = job.model([val[[i["id"] for i in val.images].index(image["id"])][0]])[0]
        keep = reference["scores"] >= MIN_SCORE
        np.testing.assert_allclose(np.array(detections["boxes"]).reshape(-1, 4), reference["boxes"][keep].numpy(), atol=1e-3)
        assert detections["labels"] == [val.category_ids[label] for label in reference["labels"][keep].tolist()]
        truth = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations["annotations"] if a["image_id"] == image["id"])]
        assert truth and detections["scores"] == sorted(detections["scores"], reverse=True)
        for box in truth:  # every digit of the image is found: a box of IoU >= 0.5 with its annotation
            assert max(iou(found, box) for found in detections["boxes"]) >= 0.5, (image["file_name"], box, detections)
        assert max(iou(detections["boxes"][0], box) for box in truth) >= 0.5  # and the most confident detection is a digit
