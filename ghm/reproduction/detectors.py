"""One arm's trained detectors of a comparison of arms, by seed: the starting points of a warm-start study.

``python -m ghm.reproduction.detectors --experiment ghm_vs_focal_tuned --arm focal --out multirun/focal_detectors``
writes ``seed<N>.pt`` (the detector's tensors, what ``model.weights`` loads) for each run of the arm's best settings (its
confirmation seeds and the tuning seeds it was chosen on), read from the run's own checkpoint (its ``checkpoint_dir``
param), so that ``experiments=ghm_warm_start`` continues each seed's detector on the same seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from mlflow.tracking import MlflowClient

from ghm.comparison.record import TrialRecord
from ghm.dashboard.source import load_sweep
from ghm.tracking.store import default_tracking_uri, tracking_client


def export(client: MlflowClient, experiment: str, arm: str, out: Path, sweep: str | None = None) -> dict[int, Path]:
    """Each run of ``arm``'s best settings (the latest sweep of ``experiment`` by default): its confirmation runs and the
    search trial it was chosen from, on the tuning seeds, as ``out/seed<N>.pt``; by seed."""
    record = load_sweep(client, experiment, sweep).record
    arms = sorted({t.arm for t in record.trials if t.arm})
    if arm not in arms:
        raise SystemExit(f"--arm {arm!r}: the sweep's arms are {arms}")
    def settings(trial: TrialRecord) -> dict[str, Any]:  # a job's values but its seed (a dict: key order may differ)
        return {k: v for k, v in trial.params.items() if k != record.pairing.pair_by}

    confirmed = [t for t in record.trials if t.arm == arm and t.search_trial is None and t.mlflow_run_id]
    if not confirmed:
        raise SystemExit(f"arm {arm!r} of {experiment!r} has no confirmation run in MLflow yet")
    # the best's runs on the tuning seeds too: the search trial it was chosen from ran the same settings there
    runs = {t.seed: t.mlflow_run_id for t in record.trials
            if t.arm == arm and t.mlflow_run_id and t.seed is not None and settings(t) == settings(confirmed[0])}
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for seed, run_id in sorted(runs.items()):
        checkpoint = Path(client.get_run(run_id).data.params["checkpoint_dir"]) / "last.pt"
        if not checkpoint.is_file():
            raise SystemExit(f"run {run_id} (seed {seed}): no checkpoint at {checkpoint} (written on another host?)")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        torch.save({"model": state["model"]}, out / f"seed{seed}.pt")
        written[seed] = out / f"seed{seed}.pt"
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ghm.reproduction.detectors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True, help="the MLflow experiment of the comparison of arms")
    parser.add_argument("--arm", required=True, help="whose detectors (an arm of hydra.sweeper.arms)")
    parser.add_argument("--out", type=Path, required=True, help="the folder for seed<N>.pt")
    parser.add_argument("--sweep", default=None, help="the sweep (default: the experiment's latest)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    args = parser.parse_args(argv)
    client = tracking_client(args.tracking_uri or default_tracking_uri(Path.cwd()))
    for seed, path in export(client, args.experiment, args.arm, args.out, args.sweep).items():
        print(f"seed {seed}: {path}")


if __name__ == "__main__":
    main()
