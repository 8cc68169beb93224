"""Ray Tune alone, as the sweeper drives it: the floor under any Tune-based run of the 20-trial sphere sweep.

The sweeper's own Ray session (:func:`ghm.sweep.trials.ray_session`: the warm local head) and Tune settings (one trial
at a time, actors reused, Tune's automatic loggers off, its console quiet), 20 trials of a trainable that only reports
``x ** 2``: no Hydra job, no Optuna study, no MLflow. What a sweep adds to this is the sweeper's; what this costs is
Ray's and Tune's. ``benchmarks/bench_startup.py`` runs it beside the sweeps.

    python benchmarks/tune_floor.py [Tune's storage folder; default: a temporary one]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from ghm.sweep.config import RaySettings
from ghm.sweep.trials import ray_session


def sphere(config: dict) -> None:
    from ray import tune

    tune.report({"objective": config["x"] ** 2})


def main(storage: str) -> None:
    from ray import tune

    os.environ.update(TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1", RAY_AIR_NEW_OUTPUT="0")
    with ray_session(RaySettings()):
        tuner = tune.Tuner(sphere, param_space={"x": tune.grid_search([x / 2 for x in range(-10, 10)])},
                           tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
                           run_config=tune.RunConfig(storage_path=storage, verbose=0))
        results = tuner.fit()
    if results.num_errors or len(results) != 20:
        raise SystemExit(f"{len(results)} trials, {results.num_errors} failed")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        started = time.time()
        main(sys.argv[1] if len(sys.argv) > 1 else scratch)
        print(f"20 trials through Ray Tune alone: {time.time() - started:.1f} s after the imports")
