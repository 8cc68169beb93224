"""The trained detector as an MLflow logged model: a ``pyfunc`` that takes images and returns their detections.

Each run logs its final detector with :func:`log_detector` (MLflow 3's ``mlflow.pyfunc.log_model``,
``name="detector"``), linked to the run, its params and its final metrics. The model holds the
detector's weights (a state dict, read back with ``weights_only=True``), what builds it (the
``model`` config node, the number of classes, the category ids and names) and this package's code,
so that anyone can load it with ``mlflow.pyfunc.load_model(<uri>)`` and call ``predict`` on a
DataFrame with an ``image`` column, each image an array (``H x W x 3`` RGB or ``H x W`` grey,
uint8 in 0-255 or float in 0-1) or the path of an image file, and get one row per image:
``boxes`` (``[x1, y1, x2, y2]`` in the image's pixels), ``scores``, ``labels`` (the dataset's
category ids) and ``names`` (their names), best first. The param ``min_score`` (default 0.05, the
detector's own threshold) drops weaker detections. The detector's transform resizes each image as
in training and maps the boxes back to its size. The pyfunc is logged as "models from code"
(:mod:`ghm.tracking.detector_pyfunc`): loading it runs that file and this package's code, and
unpickles nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

if TYPE_CHECKING:
    from ghm.data.coco import CocoDetection
    from ghm.detection.model import GHMRetinaNet

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PYFUNC_FILE = Path(__file__).with_name("detector_pyfunc.py")  # the model's code: it sets DetectorModel() as the model
MODEL_NAME = "detector"  # the logged model's name in every run
MIN_SCORE = 0.05  # the detectors' own score threshold (model.score_thresh's default)

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(AnyType(), "image")]),  # an array or a file path
    outputs=Schema([ColSpec(Array(Array(DataType.double)), "boxes"), ColSpec(Array(DataType.double), "scores"),
                    ColSpec(Array(DataType.long), "labels"), ColSpec(Array(DataType.string), "names")]),
    params=ParamSchema([ParamSpec("min_score", DataType.double, MIN_SCORE)]),
)


def detector_spec(model_config: Mapping[str, Any], norm_eval: bool, split: CocoDetection) -> dict[str, Any]:
    """What rebuilds the detector for inference: ``build_detector``'s arguments and the categories its labels index."""
    arguments = {k: v for k, v in model_config.items() if k not in ("_target_", "name", "weights")}
    return {"model": model_config.get("name"), "build_detector": {**arguments, "norm_eval": norm_eval},
            "category_ids": list(split.category_ids), "category_names": [split.category_names[c] for c in split.category_ids]}


class DetectorModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: the detector rebuilt from its spec and weights in ``load_context``, run on CPU or the first GPU."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from torch import nn

        from ghm.detection.model import build_detector

        spec = json.loads(Path(context.artifacts["spec"]).read_text())
        self.category_ids = spec["category_ids"]
        self.category_names = spec["category_names"]
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # The losses are no part of inference: the detector is built without them, and their state is not in the weights.
        model = build_detector(len(self.category_ids), nn.Identity(), nn.Identity(), **spec["build_detector"])
        model.load_state_dict(torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True))
        self.model = model.to(self.device).eval()

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:  # a DataFrame hint: MLflow's signature applies as logged
        min_score = float((params or {}).get("min_score", MIN_SCORE))
        images = [to_tensor(image) for image in _images(model_input)]
        rows = []
        with torch.no_grad():
            outputs = self.model([image.to(self.device) for image in images]) if images else []
        for output in outputs:
            keep = output["scores"] >= min_score
            labels = output["labels"][keep].tolist()
            rows.append({"boxes": output["boxes"][keep].cpu().tolist(), "scores": output["scores"][keep].cpu().tolist(),
                         "labels": [self.category_ids[i] for i in labels], "names": [self.category_names[i] for i in labels]})
        return pd.DataFrame(rows, columns=["boxes", "scores", "labels", "names"])


def _images(model_input: Any) -> list[Any]:
    """The images of a DataFrame's ``image`` column (a bare list, when the signature is not enforced)."""
    if isinstance(model_input, pd.DataFrame):
        if "image" not in model_input.columns:
            raise ValueError(f"the input DataFrame needs an 'image' column (arrays or file paths), got columns {list(model_input.columns)}")
        return list(model_input["image"])
    return list(model_input)


def to_tensor(image: Any) -> torch.Tensor:
    """One image as the detector takes it: float ``3 x H x W`` in [0, 1] (an array, a nested list, or a file path)."""
    if isinstance(image, str | Path):
        from PIL import Image

        with Image.open(image) as pil:
            array = np.asarray(pil.convert("RGB"))
    else:
        array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"an image must be H x W x 3 (RGB), H x W x 4 (RGBA) or H x W (grey), got shape {array.shape}")
    pixels = torch.tensor(array[..., :3]).permute(2, 0, 1)
    return pixels.float().div(255.0) if array.dtype == np.uint8 or array.max(initial=0) > 1.0 else pixels.float()


def log_detector(model: GHMRetinaNet, spec: dict[str, Any], example: Sequence[Any], *, step: int, tags: Mapping[str, str]) -> str:
    """Log the detector as the active run's model ``detector`` (linked to its metrics at ``step``); returns its model id.

    ``example`` (one image array) is the model's input example; the weights exclude the losses' state.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # MLflow's check of the input example: no progress bars
    state = model.inference_state_dict()
    with tempfile.TemporaryDirectory() as folder:
        weights, spec_file = Path(folder) / "detector.pt", Path(folder) / "spec.json"
        torch.save(state, weights)
        spec_file.write_text(json.dumps(spec, indent=1))
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=str(PYFUNC_FILE), artifacts={"weights": str(weights), "spec": str(spec_file)},
            code_paths=[str(PACKAGE_DIR)], signature=SIGNATURE, input_example=pd.DataFrame({"image": [np.asarray(e) for e in example]}),
            pip_requirements=_requirements(), step=step, tags=dict(tags))
    return info.model_id


def _requirements() -> list[str]:
    """What the pyfunc imports beside its own code (given, so that MLflow does not load the model to infer them)."""
    from importlib import metadata

    return [f"{name}=={metadata.version(name)}" for name in ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow")]


def logged_model_bytes(client: mlflow.MlflowClient, model_id: str) -> int:
    """The size of a logged model's files in its artifact store."""
    def size(path: str | None) -> int:
        return sum(size(f.path) if f.is_dir else (f.file_size or 0) for f in client.list_logged_model_artifacts(model_id, path))

    return size(None)
