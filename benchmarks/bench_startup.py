"""A sweep's start-up, side by side in one run: the 20-trial sphere sweep of hydra-optuna-sweeper's documentation.

Four ways to run the same app (``tests/apps/sphere.py``: 20 trials, one at a time), interleaved ``--repeats`` times:

- ``drop-in``: ``hydra/sweeper: optuna``, the project's Ray-free hydra-optuna-sweeper (the reference);
- ``embedded``: ``hydra/sweeper=ghm hydra.sweeper.ray.warm_head=false``, a local Ray started and stopped by the sweep;
- ``warm, cold``: ``hydra/sweeper=ghm`` with no warm head running (the sweep starts one);
- ``warm``: ``hydra/sweeper=ghm`` joining the head an earlier sweep left;
- ``Tune alone``: ``benchmarks/tune_floor.py`` on that head, 20 trials that only report ``x ** 2`` through Ray Tune as
  the sweeper drives it (no Hydra job, Optuna study or MLflow): the floor under any Tune-based sweep of the app.

Prints each run's wall time and the time until its first trial started (its ``#0 :`` line; none for ``Tune alone``),
then the medians and each one's ratio to the drop-in. The warm heads live in a folder of the benchmark's own and are stopped at the end.

    python benchmarks/bench_startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ghm.cluster.local_head import HEADS_DIR_ENV, WarmHead

APPS = Path(__file__).resolve().parents[1] / "tests" / "apps"
VARIANTS = {"drop-in": [], "embedded": ["hydra/sweeper=ghm", "hydra.sweeper.ray.warm_head=false"],
            "warm, cold": ["hydra/sweeper=ghm"], "warm": ["hydra/sweeper=ghm"], "Tune alone": []}
FLOOR = Path(__file__).resolve().parent / "tune_floor.py"
FIRST_TRIAL = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[HYDRA\] #0 : ", re.MULTILINE)  # both sweepers' line


def run(variant: str, workdir: Path, index: int) -> tuple[float, float | None]:
    """Wall time and time to the first trial of one sweep (None for Tune alone, which has no Hydra job)."""
    name = f"{variant.replace(', ', '-').replace(' ', '-')}-{index}"
    command = [sys.executable, "sphere.py", "-m", *VARIANTS[variant], f"hydra.sweep.dir={workdir / name}",
               f"hydra.sweeper.study_name={name}"]
    if variant == "Tune alone":
        command = [sys.executable, str(FLOOR), str(workdir / "ray")]
    elif variant != "drop-in":
        command += [f"hydra.sweeper.ray.storage_path={workdir / 'ray'}", f"hydra.sweeper.storage=sqlite:///{workdir / 'optuna.db'}"]
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, HEADS_DIR_ENV: str(workdir / "heads")}
    started = time.time()
    result = subprocess.run(command, cwd=APPS, env=env, capture_output=True, text=True, timeout=900)
    wall = time.time() - started
    if result.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    if variant == "Tune alone":
        return wall, None
    first = FIRST_TRIAL.search(result.stdout + result.stderr)
    if first is None:
        raise RuntimeError(f"{variant}: no '#0 :' line in its output")
    first_at = datetime.datetime.strptime(first.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return wall, first_at - started


def after(first: float | None) -> str:
    return f", first trial after {first:4.1f} s" if first is not None else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[tuple[float, float | None]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.environ[HEADS_DIR_ENV] = str(workdir / "heads")  # the sweeps' heads folder (run() passes it on)
        head = WarmHead()
        try:
            for index in range(args.repeats):
                for variant in VARIANTS:
                    if variant == "warm, cold":
                        head.stop()
                    wall, first = run(variant, workdir, index)
                    times[variant].append((wall, first))
                    print(f"{variant:>10}: {wall:5.1f} s{after(first)}", flush=True)
        finally:
            head.stop()
    print(f"\nmedians over {args.repeats} rounds (load average now {os.getloadavg()[0]:.1f}):")
    for variant, runs in times.items():
        firsts = [f for _, f in runs if f is not None]
        print(f"{variant:>10}: {statistics.median(w for w, _ in runs):5.1f} s{after(statistics.median(firsts) if firsts else None)}")
    reference = statistics.median(w for w, _ in times["drop-in"])
    for variant in ("embedded", "warm, cold", "warm", "Tune alone"):
        print(f"{variant} / drop-in: {statistics.median(w for w, _ in times[variant]) / reference:.2f}x")


if __name__ == "__main__":
    main()
