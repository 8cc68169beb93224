"""Sweep overhead and concurrency, measured side by side in one run.

1. Overhead per trial (sweeper + Ray Tune + MLflow on a no-op task): grid sweeps of the no-op
   ``tests/apps/curves.py`` task (one epoch, no work, one MLflow run per trial) with 1 and with
   ``--trials`` + 1 trials; the per-trial overhead is the difference divided by ``--trials``
   (the difference removes Ray's start-up, paid once per sweep).
2. Concurrency: the same fixed sweep of ``--busy-trials`` single-thread CPU-bound trials with
   ``n_jobs=1`` and ``n_jobs=2``; prints the parallel / serial wall-time ratio, of the whole sweep
   and of its trial phase (less the start-up measured by the 1-trial sweep).

    python benchmarks/bench_sweep.py [--trials 20] [--busy-trials 6] [--busy-seconds 8]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APPS = Path(__file__).resolve().parents[1] / "tests" / "apps"


def sweep_seconds(values: list[str], workdir: Path, name: str, *extra: str) -> float:
    """Wall time of one ``curves.py -m`` sweep over ``x=values``."""
    command = [sys.executable, "curves.py", "-m", f"x={','.join(values)}", f"hydra.sweeper.study_name={name}",
               f"hydra.sweep.dir={workdir / name}", f"hydra.sweeper.ray.storage_path={workdir / 'ray'}",
               f"log={workdir / 'log.txt'}", *extra]
    start = time.perf_counter()
    subprocess.run(command, cwd=APPS, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--busy-trials", type=int, default=6)
    parser.add_argument("--busy-seconds", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        mlflow = [f"+mlflow_uri=sqlite:///{workdir / 'mlflow.db'}"]
        one = sweep_seconds(["0.5"], workdir, "one", "train.epochs=1", *mlflow)
        many = sweep_seconds([f"{i / 100:.2f}" for i in range(args.trials + 1)], workdir, "many", "train.epochs=1", *mlflow)
        overhead = (many - one) / args.trials
        print(f"no-op sweep: 1 trial {one:.1f} s, {args.trials + 1} trials {many:.1f} s -> overhead {overhead:.2f} s per trial")
        busy = [f"{0.1 + i / 100:.2f}" for i in range(args.busy_trials)]
        work = [f"busy_seconds={args.busy_seconds}", "train.epochs=1"]
        serial = sweep_seconds(busy, workdir, "serial", "hydra.sweeper.n_jobs=1", *work)
        parallel = sweep_seconds(busy, workdir, "parallel", "hydra.sweeper.n_jobs=2", *work)
        print(f"{args.busy_trials} single-thread trials of {args.busy_seconds:.0f} s CPU: n_jobs=1 {serial:.1f} s, "
              f"n_jobs=2 {parallel:.1f} s -> ratio {parallel / serial:.2f} of the whole sweep, "
              f"{(parallel - one) / (serial - one):.2f} of its trial phase (less the {one:.1f} s start-up)")


if __name__ == "__main__":
    main()
