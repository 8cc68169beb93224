"""What logging a run's detector as an MLflow model costs: its size and time, beside the epoch checkpoint's, in one run.

The default detector (``retinanet_tiny`` on Digits-Det's 10 classes) is logged ``--repeats`` times as
a run's ``detector`` (``ghm.tracking.model.log_detector``, with the input example and its check)
into a fresh SQLite store, and written as many times as an epoch checkpoint (``Checkpoint.save``:
model, optimiser and identity), alternately, so that both see the same load.

    python benchmarks/bench_model_logging.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from ghm.config import register
from ghm.detection.checkpoint import Checkpoint, RunIdentity
from ghm.detection.model import build_detector
from ghm.tracking.model import detector_spec, log_detector, logged_model_bytes

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    register()  # the config's schemas
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        config = compose("config", overrides=["paths.root_dir=.", "paths.output_dir=."])
    model_config = OmegaConf.to_container(config.model, resolve=True)
    arguments = {k: v for k, v in model_config.items() if k not in ("_target_", "name", "weights")}
    model = build_detector(10, nn.Identity(), nn.Identity(), **arguments)
    digits = SimpleNamespace(category_ids=list(range(1, 11)), category_names={i: str(i - 1) for i in range(1, 11)})  # Digits-Det's
    spec = detector_spec(model_config, False, digits)
    example = [np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)]
    optimizer_state = {"state": {}, "param_groups": [{"lr": 0.01}]}
    logged, saved, sizes = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        mlflow.set_tracking_uri(f"sqlite:///{Path(folder) / 'mlflow.db'}")
        checkpoint = Checkpoint(Path(folder) / "ckpt", RunIdentity.of(config, "bench"))
        checkpoint.path.parent.mkdir()
        client = mlflow.MlflowClient()
        for _ in range(args.repeats):
            with mlflow.start_run():
                started = time.perf_counter()
                model_id = log_detector(model, spec, example, step=1, tags={})
                logged.append(time.perf_counter() - started)
            sizes.append(logged_model_bytes(client, model_id))
            started = time.perf_counter()
            checkpoint.save({"epoch": 1, "model": model.state_dict(), "optimizer": optimizer_state})
            saved.append(time.perf_counter() - started)
        checkpoint_bytes = checkpoint.path.stat().st_size
    weights = sum(p.numel() for p in model.parameters())
    print(f"detector: {weights / 1e6:.2f} M parameters")
    print(f"logged model: {statistics.median(sizes) / 1e6:.2f} MB, {statistics.median(logged):.2f} s (median of {args.repeats}; "
          f"min {min(logged):.2f} s, max {max(logged):.2f} s)")
    print(f"epoch checkpoint: {checkpoint_bytes / 1e6:.2f} MB, {statistics.median(saved):.3f} s")
    print(f"logging / checkpoint time: {statistics.median(logged) / statistics.median(saved):.0f}x")


if __name__ == "__main__":
    main()
