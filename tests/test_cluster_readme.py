"""README's cluster-without-Docker steps, followed as written: ``devtools.cluster up --detach``, its exports, ``launch.py -m``.

The Ray workers are started before the driver's shell has the exports, so nothing but the sweep
itself can tell the trials where the driver tracks its runs: every run of the sweep must be on the
cluster's MLflow server, under the sweep's parent run, and the jobs' folders under the sweep folder.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from devtools.cluster import ClusterSpec, NativeCluster
from tests.conftest import ROOT, SMALL_DATA

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

DRIVER_KEYS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI", "OPTUNA_STORAGE")


def test_readme_cluster_steps_track_every_trial_where_the_driver_tracks(tmp_path: Path) -> None:
    shell = {k: v for k, v in os.environ.items() if k not in DRIVER_KEYS}  # a fresh shell, before the exports
    workdir = tmp_path / "cluster"
    # Databases of its own: the default ones outlive a run, and a later run of the same code would reuse its baseline from them.
    suffix = uuid.uuid4().hex[:8]
    databases = {"mlflow_database": f"ghm_readme_mlflow_{suffix}", "optuna_database": f"ghm_readme_optuna_{suffix}"}
    up = subprocess.run([sys.executable, "-m", "devtools.cluster", "up", "--detach", "--workers", "2", "--workdir", str(workdir),
                         "--mlflow-port", "0", "--dashboard-port", "0", "--optuna-port", "0",
                         *(arg for key, name in databases.items() for arg in (f"--{key.replace('_', '-')}", name))],
                        cwd=ROOT, env=shell, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        exports = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1)
                       for line in up.stdout.splitlines() if line.startswith("export "))
        assert set(exports) == set(DRIVER_KEYS)
        experiment = f"readme-cluster-{uuid.uuid4().hex[:8]}"
        sweep_dir = tmp_path / "multirun"
        sweep = subprocess.run([sys.executable, "launch.py", "-m", "loss=focal,ghm", "seed=0", "train=smoke", *SMALL_DATA,
                                "train.figures=false", f"mlflow.experiment_name={experiment}", f"hydra.sweep.dir={sweep_dir}"],
                               cwd=ROOT, env={**shell, **exports}, capture_output=True, text=True, timeout=900)
        assert sweep.returncode == 0, (sweep.stdout[-3000:], sweep.stderr[-5000:])
        assert "Connecting to existing Ray cluster" in sweep.stdout + sweep.stderr

        client = MlflowClient(exports["MLFLOW_TRACKING_URI"])
        runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        parents = [r for r in runs if "sweep_parent" in r.data.tags]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert sorted(r.data.tags["trial"] for r in children) == ["0", "1"] and all(r.info.status == "FINISHED" for r in children)
        assert all("mAP" in r.data.metrics for r in children)
        assert sorted(p.name for p in sweep_dir.iterdir() if re.fullmatch(r"\d+", p.name)) == ["0", "1"]
        assert all((sweep_dir / n / ".hydra" / "config.yaml").is_file() for n in ("0", "1"))
    finally:
        subprocess.run([sys.executable, "-m", "devtools.cluster", "down", "--workdir", str(workdir)], cwd=ROOT, env=shell,
                       capture_output=True, timeout=120)
        cluster = NativeCluster(ClusterSpec(workdir=workdir, **databases))
        cluster.drop_databases()
        os.rmdir(cluster.temp_dir)
