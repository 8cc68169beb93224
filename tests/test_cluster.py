"""The cluster topology of docker-compose.yml, started natively (devtools.cluster): sweeps, faults and security.

One cluster serves the module: MLflow server on PostgreSQL (databases of its own, dropped at the
end), a Ray head without CPUs plus two 1-CPU worker nodes with token authentication, and
optuna-dashboard. Every sweep is launched by a separate driver process, as a user would.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import psycopg2
import pytest
from mlflow.tracking import MlflowClient

from devtools.cluster import ClusterSpec, NativeCluster
from tests.conftest import ROOT

APPS = ROOT / "tests" / "apps"

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NativeCluster]:
    suffix = uuid.uuid4().hex[:8]
    spec = ClusterSpec(workdir=tmp_path_factory.mktemp("cluster"), mlflow_database=f"ghm_test_mlflow_{suffix}",
                       optuna_database=f"ghm_test_optuna_{suffix}", workers=2, mlflow_port=0, dashboard_port=0,
                       client_port=0, optuna_port=0)
    native = NativeCluster(spec)
    try:
        native.start()
        yield native
    finally:
        native.stop()
        native.drop_databases()


def driver(cluster: NativeCluster, args: list[str], tmp_path: Path, name: str, config: str = "curves") -> subprocess.Popen:
    """A sweep of the curves app launched by its own process, joined to the cluster through its environment only."""
    env = {**os.environ, **cluster.environment()}
    command = [sys.executable, "curves.py", "--config-name", config, "-m", f"log={tmp_path / 'log'}", f"+mlflow_uri={cluster.mlflow_uri}",
               f"+mlflow.experiment_name={name}", f"hydra.sweeper.study_name={name}", f"hydra.sweep.dir={tmp_path / 'multirun'}",
               f"hydra.sweeper.ray.storage_path={tmp_path / 'ray'}", *args]
    return subprocess.Popen(command, cwd=APPS, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: int = 420) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-5000:]
    return output


def child_runs(client: MlflowClient, name: str) -> tuple[object, list]:
    experiment = client.get_experiment_by_name(name)
    parent = client.search_runs([experiment.experiment_id], filter_string=f"tags.sweep_parent = '{name}'")
    assert len(parent) == 1
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent[0].info.run_id}'")
    return parent[0], children


def test_a_sweep_from_a_separate_driver_runs_on_the_cluster(cluster: NativeCluster, tmp_path: Path) -> None:
    name = "cluster-search"
    output = finish(driver(cluster, ["hydra.sweeper.n_trials=4", "seconds_per_epoch=0.3"], tmp_path, name, "curves_search"))
    assert "Connecting to existing Ray cluster" in output

    study = optuna.load_study(study_name=name, storage=cluster.optuna_storage)  # the study is in PostgreSQL
    states = [t.state for t in study.trials]
    assert len(states) == 4 and set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert completed and all(abs(t.value - t.params["x"]) < 1e-9 for t in completed)
    with urllib.request.urlopen(f"{cluster.optuna_url}/api/studies", timeout=30) as answer:  # optuna-dashboard shows it
        assert name in {s["study_name"] for s in json.loads(answer.read())["study_summaries"]}

    client = MlflowClient(cluster.mlflow_uri)  # the runs are on the tracking server
    parent, children = child_runs(client, name)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_finished"] == len(completed)
    assert len(children) == 4
    finished = [r for r in children if r.data.tags.get("trial_state") == "finished"]
    assert sorted(r.data.metrics["objective"] for r in finished) == pytest.approx(sorted(t.value for t in completed))
    for run in finished:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "objective")] == [1, 2, 3, 4]

    # ... whose backend store is the cluster's own PostgreSQL database.
    with psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=cluster.spec.mlflow_database) as db, \
            db.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM runs WHERE experiment_id = %s", (int(parent.info.experiment_id),))
        assert cursor.fetchone()[0] == 5


def test_a_worker_node_killed_mid_trial_is_survived(cluster: NativeCluster, tmp_path: Path) -> None:
    name = "cluster-node-death"
    cluster.add_worker()
    cluster.wait_for_ray_nodes(4)  # head + 3 workers
    process = driver(cluster, ["x=0.1,0.2,0.3,0.4", "hydra.sweeper.n_jobs=2", "seconds_per_epoch=1.5"], tmp_path, name)
    started = tmp_path / "log.started"
    deadline = time.monotonic() + 180
    victim = None
    while victim is None and time.monotonic() < deadline and process.poll() is None:
        pids = [int(line) for line in started.read_text().split()] if started.exists() else []
        victim = next((node for node in map(cluster.node_of, pids) if node and node.startswith("ray-worker")), None)
        time.sleep(0.5)
    assert victim is not None, "no trial started on a worker node"
    time.sleep(2)  # mid-trial: past its first epoch
    cluster.kill_node(victim)
    finish(process)

    ends = sorted((tmp_path / "log").read_text().splitlines())
    assert ends == [f"x={x} seed=0" for x in (0.1, 0.2, 0.3, 0.4)]  # every trial completed exactly once
    assert len(started.read_text().split()) >= 5  # the killed trial ran again
    _, children = child_runs(MlflowClient(cluster.mlflow_uri), name)
    finished = sorted(r.data.metrics["objective"] for r in children if r.data.tags.get("trial_state") == "finished")
    assert finished == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_a_driver_without_the_token_is_refused(cluster: NativeCluster, tmp_path: Path) -> None:
    connect = "import ray, sys; ray.init(address=sys.argv[1]); print('connected')"
    bare = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    attempts = {
        "no token": {**bare, "HOME": str(tmp_path)},  # no ~/.ray/auth_token either
        "wrong token": {**bare, "HOME": str(tmp_path), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"},
        "the token": {**bare, **cluster.environment()},
    }
    running = {label: subprocess.Popen([sys.executable, "-c", connect, cluster.ray_address], env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for label, env in attempts.items()}
    outputs = {label: p.communicate(timeout=180)[0] for label, p in running.items()}
    for label in ("no token", "wrong token"):
        assert running[label].returncode != 0 and "connected" not in outputs[label].splitlines(), outputs[label][-2000:]
        assert "InvalidAuthToken" in outputs[label] or "Unauthenticated" in outputs[label], outputs[label][-2000:]
    assert running["the token"].returncode == 0 and "connected" in outputs["the token"], outputs["the token"][-2000:]

    with pytest.raises(urllib.error.HTTPError) as refused:  # the dashboard (Jobs API) too
        urllib.request.urlopen(f"{cluster.dashboard_url}/api/version", timeout=10)
    assert refused.value.code in (401, 403)
    token = Path(cluster.environment()["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    request = urllib.request.Request(f"{cluster.dashboard_url}/api/version", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


def mlflow_status(cluster: NativeCluster, host: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", cluster.spec.mlflow_port, timeout=10)
    connection.request("GET", "/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host})
    response = connection.getresponse()
    return response.status, response.read().decode(errors="replace")


def test_mlflow_answers_its_service_name_and_refuses_other_hosts(cluster: NativeCluster) -> None:
    port = cluster.spec.mlflow_port
    for host in (f"mlflow:{port}", "mlflow", f"127.0.0.1:{port}", f"localhost:{port}"):
        status, body = mlflow_status(cluster, host)
        assert status == 200, (host, body)
    for host in ("attacker.example", f"attacker.example:{port}", f"mlflow.attacker.example:{port}"):
        status, body = mlflow_status(cluster, host)
        assert status == 403 and "Invalid Host header" in body, (host, status, body)


def test_an_mlflow_outage_mid_trial_loses_no_metrics(cluster: NativeCluster, tmp_path: Path) -> None:
    name = "cluster-mlflow-outage"
    epochs = 10
    process = driver(cluster, ["x=0.7", f"train.epochs={epochs}", "seconds_per_epoch=1.5"], tmp_path, name)
    client = MlflowClient(cluster.mlflow_uri)
    deadline = time.monotonic() + 180
    runs: list = []
    while time.monotonic() < deadline and process.poll() is None:
        experiment = client.get_experiment_by_name(name)
        runs = client.search_runs([experiment.experiment_id], filter_string="metrics.objective > 0") if experiment else []
        if runs:
            break
        time.sleep(0.5)
    assert runs, "the trial logged no metric"
    down_at = time.time()
    cluster.stop_mlflow()
    time.sleep(8)  # trials go on logging into the outage
    cluster.start_mlflow()
    up_at = time.time()
    output = finish(process)

    run = client.get_run(runs[0].info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["trial_state"] == "finished", output[-3000:]
    history = client.get_metric_history(run.info.run_id, "objective")
    assert sorted(m.step for m in history) == list(range(1, epochs + 1))  # no gap
    assert any(down_at * 1000 <= m.timestamp <= up_at * 1000 for m in history)  # some were logged during the outage
    assert history[-1].value == pytest.approx(0.7)
