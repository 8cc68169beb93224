"""What MLflow's own clients see of a sweep and of a run: logged models, the Model Registry, datasets, system tags and metrics.

Everything is read back as a user would, through ``MlflowClient``, MLflow's REST API (an ``mlflow
server`` over the sweep's store) and ``mlflow.pyfunc.load_model`` in a fresh process, and checked
against expectations computed independently (the annotation files' hashes, git, the runs' metrics).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from devtools.cluster import free_port, stop_process_group
from devtools.mlflow_screenshots import wait_http
from tests.conftest import ROOT, SMALL_DATA
from tests.test_dashboard import rest

pytestmark = pytest.mark.slow
REGISTERED = "ghm-detector"  # hydra.sweeper.registry.name's default, as README's snippet loads it


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, ray_head: Mapping[str, str]) -> dict[str, Any]:
    """GHM against focal loss on seeds 0 and 1 (2 short epochs), the verdict registered, system metrics sampled each second."""
    tmp = tmp_path_factory.mktemp("native")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    args = ["launch.py", "-m", "loss=focal,ghm", "seed=0,1", "train=smoke", "train.epochs=2", "train.figures=false", *SMALL_DATA,
            f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=native", "mlflow.system_metrics_interval=1",
            "hydra.sweeper.registry.enabled=true", f"hydra.sweep.dir={tmp / 'multirun'}",
            f"hydra.sweeper.ray.storage_path={tmp / 'ray'}"]
    commit, dirty = git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))  # the code the runs record
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, **ray_head}, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("native").experiment_id
    parent = client.search_runs([experiment], filter_string="tags.sweep_parent != ''")[0]
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return {"uri": uri, "client": client, "parent": parent, "children": children, "output": result.stdout + result.stderr,
            "commit": commit, "dirty": dirty}


def test_the_verdict_is_registered_with_its_numbers_and_the_better_one_aliased(sweep: dict[str, Any]) -> None:
    client, parent, children = sweep["client"], sweep["parent"], sweep["children"]
    by_setting: dict[str, dict[int, Any]] = {}
    for run in children:
        by_setting.setdefault(run.data.tags["param.loss"], {})[int(run.data.tags["param.seed"])] = run
    difference = statistics.fmean(by_setting["ghm"][s].data.metrics["mAP"] - by_setting["focal"][s].data.metrics["mAP"] for s in (0, 1))
    versions = {v.tags["role"]: client.get_model_version(REGISTERED, v.version)
                for v in client.search_model_versions(f"name = '{REGISTERED}'")}
    assert set(versions) == {"best_setting", "baseline"}
    for role, loss in (("best_setting", "ghm"), ("baseline", "focal")):
        version = versions[role]
        best_seed = max((0, 1), key=lambda s: by_setting[loss][s].data.metrics["mAP"])
        run = by_setting[loss][best_seed]
        assert version.run_id == run.info.run_id and version.source == f"models:/{run.outputs.model_outputs[0].model_id}"
        assert version.tags["sweep"] == parent.data.tags["sweep_parent"] and version.tags["setting"] == f"loss={loss}"
        assert version.tags["seed"] == str(best_seed) and float(version.tags["mAP"]) == pytest.approx(run.data.metrics["mAP"], abs=1e-4)
        assert float(version.tags["paired_difference"]) == pytest.approx(difference, abs=1e-4)
        assert float(version.tags["paired_difference"]) == pytest.approx(parent.data.metrics["diff/loss_ghm"], abs=1e-4)
        assert version.tags["t_interval_95"].startswith("[") and version.tags["regime"].startswith("Regime: baseline loss=focal")
    champion = "best_setting" if difference > 0 else "baseline"
    aliases = client.get_registered_model(REGISTERED).aliases
    assert aliases["champion"] == versions[champion].version
    assert aliases["challenger"] == versions[{"best_setting": "baseline", "baseline": "best_setting"}[champion]].version
    assert client.get_model_version_by_alias(REGISTERED, "champion").run_id == versions[champion].run_id

    # Registering the finished sweep again (the command the README gives) makes no new version.
    again = subprocess.run([sys.executable, "-m", "ghm.sweep.verdict", "--experiment", "native", "--tracking-uri", sweep["uri"]],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(client.search_model_versions(f"name = '{REGISTERED}'")) == 2


def test_the_parent_runs_description_is_the_comparison_table(sweep: dict[str, Any]) -> None:
    parent = sweep["parent"]
    note = parent.data.tags["mlflow.note.content"]
    row = next(line for line in note.splitlines() if line.startswith("| `loss=ghm`"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "2" and float(cells[4].strip("*")) == pytest.approx(parent.data.metrics["diff/loss_ghm"], abs=1e-4)
    assert "Regime: baseline loss=focal" in note and f"Registered model `{REGISTERED}`" in note


def test_each_trial_logs_its_detector_linked_to_the_run_and_its_final_metrics(sweep: dict[str, Any]) -> None:
    client = sweep["client"]
    for run in sweep["children"]:
        [output] = run.outputs.model_outputs
        model = client.get_logged_model(output.model_id)
        assert model.name == "detector" and model.source_run_id == run.info.run_id and output.step == 2
        linked = {m.key: m.value for m in model.metrics or []}
        assert linked["mAP"] == run.data.metrics["mAP"] and linked["AP50"] == run.data.metrics["AP50"]
        assert model.params["loss.cls.name"] == run.data.params["loss.cls.name"]
        assert model.tags["loss_family"] == run.data.tags["loss_family"] and model.tags["seed"] == run.data.tags["param.seed"]
        assert model.tags["mlflow.source.name"] == run.data.tags["mlflow.source.name"]  # launch.py, not Ray's worker script
        top = client.list_logged_model_artifacts(output.model_id)
        names = {Path(f.path).name for f in top} | {Path(a.path).name for f in top if f.is_dir
                                                     for a in client.list_logged_model_artifacts(output.model_id, f.path)}
        assert {"MLmodel", "input_example.json", "serving_input_example.json", "detector.pt", "spec.json"} <= names


def test_runs_on_the_same_data_show_the_same_datasets(sweep: dict[str, Any]) -> None:
    cache = ROOT / ".cache" / "digits_det"
    seen = set()
    for run in sweep["children"]:
        inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
        assert set(inputs) == {"train", "val"}
        for context, dataset in inputs.items():
            source = Path(json.loads(dataset.source)["uri"])
            assert source.is_file() and source.is_relative_to(cache) and source.name == f"{context}.json"
            assert dataset.digest == hashlib.sha256(source.read_bytes()).hexdigest()[:16]  # the annotation file's own hash
            assert dataset.name == f"{run.data.tags['dataset']}/{context}" and dataset.source_type == "local"
            profile = json.loads(dataset.profile)
            assert profile["images"] == len(json.loads(source.read_text())["images"])
            seen.add((context, dataset.digest))
    assert len(seen) == 2  # four runs, one train and one val dataset between them


def test_every_run_has_the_system_tags_the_ui_reads(sweep: dict[str, Any]) -> None:
    commit, dirty = sweep["commit"], sweep["dirty"]
    for run in [sweep["parent"], *sweep["children"]]:
        tags = run.data.tags
        assert tags["mlflow.source.name"] == str(ROOT / "launch.py") and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.source.git.commit"] == commit and tags["mlflow.source.git.dirty"] == str(dirty).lower()
        assert tags["mlflow.user"] == getpass.getuser()


def test_trials_sample_mlflows_system_metrics(sweep: dict[str, Any]) -> None:
    client = sweep["client"]
    for run in sweep["children"]:
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
        cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
        assert cpu and all(0 <= m.value <= 100 * os.cpu_count() for m in cpu)


def test_the_rest_api_shows_models_datasets_and_the_registry(sweep: dict[str, Any], tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", sweep["uri"],
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=tmp_path,
                              env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_http(f"{base}/health", server)
        child = sweep["children"][0]
        run = rest(base, f"/api/2.0/mlflow/runs/get?run_id={child.info.run_id}")["run"]
        contexts = {t["value"] for i in run["inputs"]["dataset_inputs"] for t in i["tags"] if t["key"] == "mlflow.data.context"}
        assert contexts == {"train", "val"}
        assert run["outputs"]["model_outputs"][0]["model_id"] == child.outputs.model_outputs[0].model_id
        champion = rest(base, f"/api/2.0/mlflow/registered-models/alias?name={REGISTERED}&alias=champion")["model_version"]
        assert champion["version"] == str(sweep["client"].get_registered_model(REGISTERED).aliases["champion"])
    finally:
        stop_process_group(server.pid, grace=5)


def test_the_sweeps_console_ends_with_its_table_not_optunas_study_line(sweep: dict[str, Any]) -> None:
    assert "95% t interval" in sweep["output"] and "A new study created in memory" not in sweep["output"]


def test_the_readmes_three_lines_load_the_winner_and_detect(sweep: dict[str, Any], tmp_path: Path) -> None:
    """README's snippet, verbatim but for the store (the sweep's) and the image (a val image of its data)."""
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("<!-- load the winner -->", 1)[1].split("```python", 1)[1].split("```", 1)[0].strip()
    assert len(snippet.splitlines()) == 3
    val = next((ROOT / ".cache" / "digits_det").glob("*/val/*.png"))
    code = snippet.replace("sqlite:///mlflow.db", sweep["uri"]).replace("digit.png", str(val)) + "\nprint(detections.to_json())"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    detections = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(detections) == {"boxes", "scores", "labels", "names"} and len(detections["boxes"]) == 1  # one row: the image
