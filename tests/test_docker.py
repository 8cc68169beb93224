"""The real stack: ``docker compose up`` of docker-compose.yml with the CPU override, used and broken.

One stack serves the module: a compose project of its own, a .env written here with random secrets,
2 Ray workers of one CPU each (so that two concurrent trials run on two different workers). Sweeps are
launched as a user would (``docker compose run --rm launcher ...``) and their results read back through
the published ports: MLflow's REST API at 127.0.0.1:5000, optuna-dashboard's API at 127.0.0.1:8080.
Everything the module creates (containers, networks, volumes) is removed at the end; the project image
``ghm-sweep:latest`` is built first (seconds when it is up to date) and kept.

Skipped when no Docker engine answers, unless GHM_REQUIRE_DOCKER=1 (CI), where that is a failure.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import secrets
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, SMALL_DATA

pytestmark = pytest.mark.docker

COMPOSE_FILES = [ROOT / "docker-compose.yml", ROOT / "docker-compose.cpu.yml"]
MLFLOW = "http://127.0.0.1:5000"
OPTUNA = "http://127.0.0.1:8080"
RAY_DASHBOARD = "http://127.0.0.1:8265"
UP_BOUND_S = 300  # `up -d --wait` with built images; measured ~1 min on 2 cores (docs/benchmarks.md)
WORKERS = 2
SMALL = [*SMALL_DATA, "train=smoke", "train.threads=1"]


def docker_engine_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class Stack:
    """A compose project brought up from the repository's files; its .env is the only source of its secrets."""

    workdir: Path
    project: str = field(default_factory=lambda: f"ghm-test-{uuid.uuid4().hex[:8]}")
    settings: dict[str, str] = field(default_factory=lambda: {
        "POSTGRES_USER": "ghm", "POSTGRES_PASSWORD": secrets.token_hex(16), "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "MLFLOW_AUTH": "", "MLFLOW_ADMIN_USERNAME": "admin", "MLFLOW_ADMIN_PASSWORD": secrets.token_hex(16),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32), "RAY_WORKERS": str(WORKERS), "RAY_WORKER_GPUS": "0",
        "RAY_WORKER_SHM_SIZE": "1gb", "RAY_WORKER_CPUS": "1"})  # workers of one CPU: two trials at once land on two workers
    up_seconds: list[float] = field(default_factory=list)
    files: list[Path] = field(default_factory=lambda: list(COMPOSE_FILES))

    def __post_init__(self) -> None:
        self.write_env()

    def write_env(self) -> None:
        env_file = self.workdir / ".env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in self.settings.items()))
        env_file.chmod(0o600)

    def command(self, *args: str) -> list[str]:
        files = [a for f in self.files for a in ("--file", str(f))]
        return ["docker", "compose", "--project-name", self.project, "--project-directory", str(ROOT),
                "--env-file", str(self.workdir / ".env"), *files, *args]

    @staticmethod
    def environment() -> dict[str, str]:
        """Only what docker needs from this environment: compose's interpolation takes the shell's variables first."""
        return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME") or k.startswith("DOCKER_")}

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(self.command(*args), cwd=ROOT, env=self.environment(), capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def run(self, *args: str, env: dict[str, str] | None = None, log: Path) -> subprocess.Popen:
        """``docker compose run --rm [--env K=V ...] <args>`` in the background, its output into ``log``."""
        extra = [a for k, v in (env or {}).items() for a in ("--env", f"{k}={v}")]
        with log.open("w") as out:
            return subprocess.Popen(self.command("run", "--rm", "--no-TTY", *extra, *args), cwd=ROOT, env=self.environment(),
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @staticmethod
    def build() -> None:
        """The project image, as .ci/run and users build it (`compose build` would label it with this project): seconds
        when only the source changed; behind a TLS-intercepting proxy, a dependency change needs the README's build first."""
        built = subprocess.run(["docker", "build", "--quiet", "--tag", "ghm-sweep:latest", str(ROOT)], env=Stack.environment(),
                               capture_output=True, text=True, timeout=3600)
        assert built.returncode == 0, f"docker build failed:\n{built.stderr[-4000:]}"

    def up(self, *services: str) -> None:
        started = time.monotonic()
        self.compose("up", "--detach", "--wait", "--wait-timeout", str(UP_BOUND_S), *services, timeout=UP_BOUND_S + 60)
        self.up_seconds.append(time.monotonic() - started)

    def launcher(self, *overrides: str, log: Path) -> subprocess.Popen:
        """``docker compose run --rm launcher <overrides>``: a sweep, as a user starts one."""
        return self.run("launcher", *overrides, log=log)

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "--quiet", service).stdout.split()

    def credentials(self) -> tuple[str, str] | None:
        if self.settings["MLFLOW_AUTH"] != "basic-auth":
            return None
        return self.settings["MLFLOW_ADMIN_USERNAME"], self.settings["MLFLOW_ADMIN_PASSWORD"]


def run_to_end(process: subprocess.Popen, log: Path, timeout: float = 900) -> str:
    process.wait(timeout=timeout)
    output = log.read_text(errors="replace")
    assert process.returncode == 0, output[-6000:]
    return output


def inspect(container: str) -> dict[str, Any]:
    return json.loads(subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True).stdout)[0]


def login(auth: tuple[str, str] | None) -> dict[str, str]:
    """The HTTP basic-auth header for ``(user, password)``; none for ``None``."""
    return {"Authorization": "Basic " + base64.b64encode(":".join(auth).encode()).decode()} if auth else {}


def get(url: str, auth: tuple[str, str] | None = None, timeout: float = 30, tls: ssl.SSLContext | None = None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=login(auth)), timeout=timeout, context=tls) as answer:
        return answer.read()


def get_json(url: str, auth: tuple[str, str] | None = None, tls: ssl.SSLContext | None = None, **params: Any) -> dict[str, Any]:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    return json.loads(get(url + query, auth, tls=tls))


class MlflowRest:
    """What a sweep left in MLflow, read through the tracking server's REST API on the published port (over HTTPS when
    given the CA's context)."""

    def __init__(self, auth: tuple[str, str] | None = None, base: str = MLFLOW, tls: ssl.SSLContext | None = None) -> None:
        self.auth, self.base, self.tls = auth, base, tls

    def runs(self, experiment: str) -> list[dict[str, Any]]:
        found = get_json(f"{self.base}/api/2.0/mlflow/experiments/get-by-name", self.auth, self.tls, experiment_name=experiment)
        request = urllib.request.Request(
            f"{self.base}/api/2.0/mlflow/runs/search", method="POST",
            data=json.dumps({"experiment_ids": [found["experiment"]["experiment_id"]], "max_results": 1000}).encode(),
            headers={"Content-Type": "application/json", **login(self.auth)})
        with urllib.request.urlopen(request, timeout=30, context=self.tls) as answer:
            return json.loads(answer.read()).get("runs", [])

    def sweep(self, experiment: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The sweep's parent run and its child runs (one per trial)."""
        runs = self.runs(experiment)
        parents = [r for r in runs if "sweep_parent" in tags(r)]
        assert len(parents) == 1, [tags(r) for r in runs]
        parent = parents[0]
        children = [r for r in runs if tags(r).get("mlflow.parentRunId") == parent["info"]["run_id"]]
        return parent, children

    def history(self, run: dict[str, Any], metric: str) -> list[dict[str, Any]]:
        return get_json(f"{self.base}/api/2.0/mlflow/metrics/get-history", self.auth, self.tls, run_id=run["info"]["run_id"],
                        metric_key=metric).get("metrics", [])

    def artifact(self, run: dict[str, Any], path: str) -> bytes:
        """An artifact through the server's artifact proxy (mlflow-artifacts:/<experiment>/<run>/artifacts/...)."""
        root = run["info"]["artifact_uri"]
        assert root.startswith("mlflow-artifacts:/"), root  # served by the tracking server, not a local path
        return get(f"{self.base}/api/2.0/mlflow-artifacts/artifacts/{root.removeprefix('mlflow-artifacts:/')}/{path}", self.auth,
                   tls=self.tls)


def tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def metrics(run: dict[str, Any]) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_docker()
    running = Stack(tmp_path_factory.mktemp("stack"))
    try:
        running.build()
        running.up()
        yield running
    finally:
        take_down(running)


def require_docker() -> None:
    if not docker_engine_answers():
        message = "no Docker engine answers `docker info` (start dockerd; .ci/run installs and starts one)"
        if os.environ.get("GHM_REQUIRE_DOCKER") == "1":
            pytest.fail(f"GHM_REQUIRE_DOCKER=1: {message}")
        pytest.skip(message)


def take_down(running: Stack) -> None:
    """``down --volumes``, and a failure if any container, volume or network of the project is left."""
    running.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)
    label = f"label=com.docker.compose.project={running.project}"
    left = {kind: subprocess.run(["docker", *command, "--quiet", "--filter", label], capture_output=True, text=True).stdout.split()
            for kind, command in (("containers", ["ps", "--all"]), ("volumes", ["volume", "ls"]), ("networks", ["network", "ls"]))}
    assert not any(left.values()), f"left behind by the test stack: {left}"


@pytest.fixture(scope="module")
def grid_sweep(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A grid of both losses on one seed, two epochs, on the workers; returns the launcher's output."""
    log = tmp_path_factory.mktemp("grid") / "launcher.log"
    return run_to_end(stack.launcher("loss=focal,ghm", "seed=0", *SMALL, "train.epochs=2", "hydra.sweeper.n_jobs=2",
                                     "mlflow.experiment_name=docker-grid", log=log), log)


@pytest.fixture(scope="module")
def search(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 3-trial Optuna search of GHM's settings (no confirmation runs); returns the launcher's output."""
    log = tmp_path_factory.mktemp("search") / "launcher.log"
    return run_to_end(stack.launcher("experiments=ghm_search", *SMALL, "train.epochs=2", "hydra.sweeper.n_trials=3",
                                     "hydra.sweeper.confirm_seeds=0", "mlflow.experiment_name=docker-search", log=log), log)


def test_the_stack_comes_up_healthy_with_every_port_on_localhost_only(stack: Stack) -> None:
    assert stack.up_seconds[0] < UP_BOUND_S
    services = {s["Service"]: s for s in map(json.loads, stack.compose("ps", "--format", "json").stdout.splitlines())}
    assert set(services) == {"postgres", "mlflow", "ray-head", "ray-worker", "optuna-dashboard"}
    workers = stack.containers("ray-worker")
    assert len(workers) == WORKERS
    for container in [c for s in services for c in stack.containers(s)]:
        state = inspect(container)
        name = state["Name"]
        assert state["State"]["Health"]["Status"] == "healthy", name  # every service has a health check, and passes it
        for port, bindings in (state["NetworkSettings"]["Ports"] or {}).items():
            for binding in bindings or []:
                assert binding["HostIp"] == "127.0.0.1", f"{name} publishes {port} on {binding['HostIp'] or 'every interface'}"
        if "postgres" not in name:  # the project image runs as its own user
            assert state["Config"]["User"] == "ghm", name
    published = {(s, p): stack.compose("port", s, p).stdout.strip()
                 for s, p in (("mlflow", "5000"), ("optuna-dashboard", "8080"), ("ray-head", "8265"), ("ray-head", "10001"))}
    assert published == {key: f"127.0.0.1:{key[1]}" for key in published}
    for service in ("postgres", "ray-worker"):
        assert not any(inspect(c)["HostConfig"]["PortBindings"] for c in stack.containers(service)), f"{service} publishes a port"


def test_a_grid_sweep_runs_on_the_workers_and_reads_back_through_mlflow(stack: Stack, grid_sweep: str) -> None:
    assert "Connecting to existing Ray cluster" in grid_sweep
    rest = MlflowRest(stack.credentials())
    parent, children = rest.sweep("docker-grid")
    assert parent["info"]["status"] == "FINISHED" and metrics(parent)["trials_finished"] == 2
    assert sorted(tags(r)["param.loss"] for r in children) == ["focal", "ghm"]
    for run in children:
        assert run["info"]["status"] == "FINISHED" and tags(run)["trial_state"] == "finished"
        assert [m["step"] for m in rest.history(run, "mAP")] == [1, 2]  # per-epoch mAP
        assert tags(run)["device"] == "cpu"
    dashboard = rest.artifact(parent, "dashboard.html").decode()
    assert dashboard.lstrip().lower().startswith("<!doctype html") and "loss=ghm" in dashboard
    assert "loss=ghm" in rest.artifact(parent, "comparison.txt").decode()  # the paired table against the focal baseline
    # Both trials trained on the Ray workers (the head has no CPU for them), from one cache on the shared volume.
    assert grid_sweep.count("generating Digits-Det") == 1, grid_sweep[-6000:]
    for worker in stack.containers("ray-worker"):
        assert subprocess.run(["docker", "exec", worker, "ls", "/app/.cache"], capture_output=True).returncode != 0  # none of its own
        listing = subprocess.run(["docker", "exec", worker, "ls", "/shared/cache/digits_det"], capture_output=True, text=True)
        assert listing.returncode == 0 and listing.stdout.split(), f"worker {worker} does not see the shared dataset: {listing.stderr}"


def test_the_default_data_is_made_once_per_cluster_on_the_shared_volume(stack: Stack, tmp_path: Path) -> None:
    """The default Digits-Det (not the tests' small one) and its pretrained backbone: two trials on two workers at once, one
    makes each input while the other waits on its lock (an flock on the shared volume, across containers)."""
    log = tmp_path / "launcher.log"
    output = run_to_end(stack.launcher("loss=focal,ghm", "seed=0", "train=smoke", "train.epochs=1", "pretrain.epochs=1",
                                       "hydra.sweeper.n_jobs=2", "mlflow.experiment_name=docker-default-data", log=log), log, timeout=1800)
    assert output.count("generating Digits-Det (4000 train + 200 val images") == 1, output[-6000:]
    assert output.count("pretraining the backbone on Digits-Det crops") == 1, output[-6000:]
    trained_on = set(re.findall(r"\(run_trial pid=\d+, ip=([\d.]+)\)", output))
    assert len(trained_on) == 2, trained_on  # both workers ran a trial
    parent, children = MlflowRest(stack.credentials()).sweep("docker-default-data")
    assert metrics(parent)["trials_finished"] == 2 and len(children) == 2


def test_an_optuna_search_runs_and_its_study_is_served_by_optuna_dashboard(stack: Stack, search: str) -> None:
    rest = MlflowRest(stack.credentials())
    parent, children = rest.sweep("docker-search")
    study_name = tags(parent)["sweep_parent"]
    assert len(children) == 3 and parent["info"]["status"] == "FINISHED"
    assert {"dashboard.html", "comparison.txt", "sweep.json"} <= {f["path"] for f in get_json(
        f"{MLFLOW}/api/2.0/mlflow/artifacts/list", rest.auth, run_id=parent["info"]["run_id"])["files"]}
    studies = {s["study_name"]: s for s in get_json(f"{OPTUNA}/api/studies")["study_summaries"]}
    assert study_name in studies
    study = get_json(f"{OPTUNA}/api/studies/{studies[study_name]['study_id']}", after=0)
    states = sorted(t["state"] for t in study["trials"])
    assert len(states) == 3 and set(states) <= {"Complete", "Pruned"} and "Complete" in states
    completed = {t["number"]: t["values"][0] for t in study["trials"] if t["state"] == "Complete"}
    finished = {int(tags(r)["trial"]): metrics(r)["mAP"] for r in children if tags(r)["trial_state"] == "finished"}
    assert finished == pytest.approx(completed)  # the same trials and values in MLflow and in the study


def test_a_worker_killed_mid_trial_is_retried_on_the_other_worker_from_its_checkpoint(stack: Stack, tmp_path: Path) -> None:
    epochs = 5
    log = tmp_path / "launcher.log"
    process = stack.launcher("loss=focal,ghm", "seed=0,1", *SMALL, f"train.epochs={epochs}", "hydra.sweeper.n_jobs=2",
                             "mlflow.experiment_name=docker-kill", log=log)
    rest = MlflowRest(stack.credentials())
    deadline = time.monotonic() + 600
    running: list[dict[str, Any]] = []
    while time.monotonic() < deadline and process.poll() is None:  # two trials (one per worker) past their second epoch
        try:
            runs = [r for r in rest.runs("docker-kill") if "sweep_parent" not in tags(r) and r["info"]["status"] == "RUNNING"]
        except urllib.error.HTTPError:  # the experiment does not exist yet
            runs = []
        running = [r for r in runs if 2 <= len(rest.history(r, "mAP")) < epochs]
        if len(running) == 2:
            break
        time.sleep(1)
    assert len(running) == 2, log.read_text(errors="replace")[-4000:]
    network = f"{stack.project}_default"
    workers = {inspect(c)["NetworkSettings"]["Networks"][network]["IPAddress"]: c for c in stack.containers("ray-worker")}
    victim_ip, victim = next(iter(workers.items()))
    subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
    output = run_to_end(process, log)

    assert not inspect(victim)["State"]["Running"]  # the killed worker stayed dead: the retry ran on the other one
    (survivor_ip,) = set(workers) - {victim_ip}
    resumed = re.findall(r"ip=([\d.]+)\).*resuming from /shared/\S+/checkpoints/last\.pt after epoch (\d+)", output)
    assert resumed and all(ip == survivor_ip and int(epoch) >= 1 for ip, epoch in resumed), output[-6000:]
    parent, children = rest.sweep("docker-kill")
    assert metrics(parent)["trials_finished"] == 4
    assert sorted((tags(r)["param.loss"], tags(r)["param.seed"]) for r in children) == [
        ("focal", "0"), ("focal", "1"), ("ghm", "0"), ("ghm", "1")]  # every result, once
    for run in children:
        assert run["info"]["status"] == "FINISHED"
        assert [m["step"] for m in rest.history(run, "mAP")] == list(range(1, epochs + 1))  # resumed: no epoch twice


def ray_driver(stack: Stack, env: dict[str, str], log: Path) -> subprocess.Popen:
    """A Ray driver on the stack's network, as the launcher runs one (the launcher's image and environment, but ``env``):
    it joins the cluster as a node without resources, then connects."""
    script = ("ray start --address=ray-head:6379 --num-cpus=0 --num-gpus=0 && "
              "python -c \"import ray; ray.init(address='ray-head:6379'); print('connected')\"")
    return stack.run("--no-deps", "--entrypoint", "sh", "launcher", "-c", script, env=env, log=log)


def test_ray_refuses_drivers_without_the_token(stack: Stack, tmp_path: Path) -> None:
    attempts = {"no token": {"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": ""},
                "wrong token": {"RAY_AUTH_TOKEN": "not-the-token"},
                "the token": {}}
    running = {label: ray_driver(stack, env, tmp_path / f"{label}.log") for label, env in attempts.items()}
    outputs = {}
    for label, process in running.items():
        process.wait(timeout=300)
        outputs[label] = (tmp_path / f"{label}.log").read_text(errors="replace")
    for label in ("no token", "wrong token"):
        assert running[label].returncode != 0 and "connected" not in outputs[label].splitlines(), outputs[label][-3000:]
        assert "InvalidAuthToken" in outputs[label] or "Unauthenticated" in outputs[label], outputs[label][-3000:]
    assert running["the token"].returncode == 0 and "connected" in outputs["the token"].splitlines(), outputs["the token"][-3000:]

    with pytest.raises(urllib.error.HTTPError) as refused:  # the dashboard and Jobs API on the published port too
        get(f"{RAY_DASHBOARD}/api/version")
    assert refused.value.code in (401, 403)
    token = stack.settings["RAY_AUTH_TOKEN"]
    request = urllib.request.Request(f"{RAY_DASHBOARD}/api/version", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200


def mlflow_status(host: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", 5000, timeout=30)
    connection.request("GET", "/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host, **login(auth)})
    response = connection.getresponse()
    return response.status, response.read().decode(errors="replace")


def test_mlflow_refuses_foreign_hosts_and_requires_a_login_with_basic_auth(stack: Stack) -> None:
    assert mlflow_status("127.0.0.1:5000")[0] == 200
    status, body = mlflow_status("attacker.example:5000")
    assert status == 403 and "Invalid Host header" in body, (status, body)

    stack.settings["MLFLOW_AUTH"] = "basic-auth"  # kept on for the rest of the module
    stack.write_env()
    stack.up("mlflow")  # recreated with the login; the rest of the stack goes on
    recreated = [inspect(c)["Config"]["Env"] for c in stack.containers("mlflow")]
    assert all("MLFLOW_AUTH=basic-auth" in env for env in recreated)
    assert mlflow_status("127.0.0.1:5000")[0] == 401
    assert mlflow_status("127.0.0.1:5000", ("admin", "not-the-password"))[0] == 401
    status, body = mlflow_status("127.0.0.1:5000", stack.credentials())
    assert status == 200, body
    assert mlflow_status("attacker.example:5000", stack.credentials())[0] == 403


def test_down_then_up_keeps_runs_artifacts_and_studies(stack: Stack, grid_sweep: str, search: str) -> None:
    rest = MlflowRest(stack.credentials())

    def snapshot() -> dict[str, Any]:
        parent, children = rest.sweep("docker-grid")
        studies = sorted(s["study_name"] for s in get_json(f"{OPTUNA}/api/studies")["study_summaries"])
        return {"runs": sorted(r["info"]["run_id"] for r in [parent, *children]), "studies": studies,
                "dashboard": rest.artifact(parent, "dashboard.html"),
                "mAP": {r["info"]["run_id"]: [m["value"] for m in rest.history(r, "mAP")] for r in children}}

    before = snapshot()
    assert len(before["runs"]) == 3 and before["studies"] and len(before["dashboard"]) > 100_000
    stack.compose("down", "--timeout", "20")
    assert not stack.compose("ps", "--all", "--quiet").stdout.split()  # no container left: only the volumes remain
    stack.up()
    assert snapshot() == before
