"""The compose pair for several hosts: the head host's stack and docker-compose.worker.yml on a simulated second host.

Host A, this machine, runs ``docker-compose.yml`` + ``docker-compose.cpu.yml`` + ``docker-compose.hosts.yml``. Host B is a
network namespace of its own (held by a container started without a network) joined to A by a veth pair and nothing
else, so it reaches A only at A's address on that link, CLUSTER_ADDRESS, as a second server reaches the head host's
published address. The worker file runs in B as written, with its ``network_mode: host`` pointed at B's namespace and
no GPU reserved (tests/data/second-host.yml). Both hosts mount one folder as SHARED_DIR, as two hosts mount one NFS
export. Checked: a sweep's trials run on both hosts and log to MLflow from both over HTTPS; from host B, MLflow refuses
plain HTTP, a wrong certificate authority and requests without a login, and PostgreSQL refuses connections without TLS
and accepts them with TLS verified against the cluster's CA; a host-B worker killed mid-trial is retried on host A.

Needs a Docker engine, root and iproute2 (CI has them); skipped otherwise, unless GHM_REQUIRE_DOCKER=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ghm.cluster.processes import free_port
from ghm.cluster.tls import issue
from tests.conftest import ROOT
from tests.test_docker import SMALL, MlflowRest, Stack, require_docker, run_to_end, tags, take_down

pytestmark = pytest.mark.docker

HEAD_FILES = [ROOT / "docker-compose.yml", ROOT / "docker-compose.cpu.yml", ROOT / "docker-compose.hosts.yml"]
WORKER_FILES = [ROOT / "docker-compose.worker.yml", ROOT / "tests" / "data" / "second-host.yml"]


@dataclass
class SecondHost:
    """Host B: a container without a network holds a namespace that a veth pair joins to this machine (host A)."""

    holder: str
    link: str
    address_a: str
    address_b: str
    certs: Path = Path()  # what the worker host holds: the CA's certificate and its own, never ca.key

    @classmethod
    def create(cls) -> SecondHost:
        tag = uuid.uuid4().hex[:6]
        subnet = 16 + int(tag, 16) % 200
        host = cls(f"ghm-host-b-{tag}", f"ghmd{tag}", f"10.232.{subnet}.1", f"10.232.{subnet}.2")
        subprocess.run(["docker", "run", "--detach", "--network", "none", "--name", host.holder, "--entrypoint", "sleep",
                        "ghm-sweep:latest", "infinity"], check=True, capture_output=True)
        pid = subprocess.run(["docker", "inspect", "--format", "{{.State.Pid}}", host.holder], check=True, capture_output=True,
                             text=True).stdout.strip()
        inside = ["nsenter", "--target", pid, "--net", "ip"]
        for command in (["ip", "link", "add", host.link, "type", "veth", "peer", "name", f"{host.link}b"],
                        ["ip", "link", "set", f"{host.link}b", "netns", pid],
                        ["ip", "addr", "add", f"{host.address_a}/30", "dev", host.link],
                        ["ip", "link", "set", host.link, "up"], [*inside, "addr", "add", f"{host.address_b}/30", "dev", f"{host.link}b"],
                        [*inside, "link", "set", f"{host.link}b", "up"]):
            subprocess.run(command, check=True, capture_output=True)
        return host

    def remove(self) -> None:
        subprocess.run(["ip", "link", "delete", self.link], capture_output=True)
        subprocess.run(["docker", "rm", "--force", self.holder], capture_output=True)

    def probe(self, *args: str) -> dict[str, Any]:
        """tests/apps/endpoint_probe.py in the project image on host B (its certificates' folder at /certs)."""
        result = subprocess.run(["docker", "run", "--rm", "--network", f"container:{self.holder}", "--volume", f"{self.certs}:/certs:ro",
                                 "ghm-sweep:latest", "python", "tests/apps/endpoint_probe.py", *args], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.splitlines()[-1])


@dataclass
class Cluster:
    head: Stack
    worker: Stack
    second: SecondHost

    @property
    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.second.certs / "ca.crt"))

    @property
    def mlflow(self) -> str:
        return f"https://{self.second.address_a}:5000"

    def auth(self) -> tuple[str, str]:
        return self.head.settings["MLFLOW_ADMIN_USERNAME"], self.head.settings["MLFLOW_ADMIN_PASSWORD"]


def can_make_links() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("nsenter") is not None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_docker()
    if not can_make_links():
        message = "a simulated second host needs root, iproute2 and nsenter"
        if os.environ.get("GHM_REQUIRE_DOCKER") == "1":
            pytest.fail(f"GHM_REQUIRE_DOCKER=1: {message}")
        pytest.skip(message)
    workdir = tmp_path_factory.mktemp("hosts")
    Stack.build()
    second = SecondHost.create()
    head = worker = None
    try:
        # The certificates as the README makes them: the head host's for its address and services, host B's for its own.
        certs = workdir / "certs"
        issue(certs, "head", [second.address_a, "mlflow", "postgres", "localhost", "127.0.0.1"])
        issue(certs, "worker", [second.address_b, "localhost", "127.0.0.1"])
        certs_b = workdir / "certs-b"  # what is copied to the worker host: never ca.key
        certs_b.mkdir()
        for name in ("ca.crt", "worker.crt", "worker.key"):
            shutil.copy2(certs / name, certs_b / name)
        second.certs = certs_b
        shared = workdir / "shared"  # one folder for both hosts, as an NFS export mounted at the same path
        shared.mkdir()
        os.chown(shared, 1000, 1000)
        (workdir / "a").mkdir()
        (workdir / "b").mkdir()
        head = Stack(workdir / "a", files=HEAD_FILES)
        head.settings.update({"CLUSTER_ADDRESS": second.address_a, "RAY_HEAD_PORT": str(free_port()), "CERTS_DIR": str(certs),
                              "SHARED_DIR": str(shared), "RAY_WORKERS": "1", "RAY_WORKER_CPUS": "1", "MLFLOW_AUTH": ""})
        head.write_env()
        head.up()
        worker = Stack(workdir / "b", files=WORKER_FILES, settings={
            "RAY_HEAD_ADDRESS": second.address_a, "RAY_HEAD_PORT": head.settings["RAY_HEAD_PORT"], "RAY_NODE_ADDRESS": second.address_b,
            "RAY_AUTH_TOKEN": head.settings["RAY_AUTH_TOKEN"], "MLFLOW_ADMIN_USERNAME": head.settings["MLFLOW_ADMIN_USERNAME"],
            "MLFLOW_ADMIN_PASSWORD": head.settings["MLFLOW_ADMIN_PASSWORD"], "CERTS_DIR": str(certs_b), "SHARED_DIR": str(shared),
            "RAY_WORKER_CPUS": "1", "RAY_WORKER_SHM_SIZE": "1gb", "HOST_B": second.holder})
        worker.write_env()
        worker.up()
        yield Cluster(head, worker, second)
    finally:
        for stack in (worker, head):
            if stack is not None:
                take_down(stack)
        second.remove()


def trial_hosts(output: str, launcher_address: str) -> set[str]:
    """The hosts whose Ray workers ran trials: Ray names a node's address before its lines (none when it is the driver's)."""
    return {ip or launcher_address for ip in re.findall(r"\(run_trial pid=\d+(?:, ip=([\d.]+))?\)", output)}


def test_a_sweeps_trials_run_on_both_hosts_and_one_whose_host_dies_is_retried_on_the_other(cluster: Cluster, tmp_path: Path) -> None:
    """One sweep (the logged models off: test_docker.py checks them) serves both checks: its two trials start on the two
    hosts' workers, then host B's worker is killed once both trials have a checkpoint, and its trial resumes on host A."""
    log = tmp_path / "launcher.log"
    epochs = 4
    process = cluster.head.run("launcher", "loss=focal,ghm", "seed=0", *SMALL, f"train.epochs={epochs}", "hydra.sweeper.n_jobs=2",
                               "mlflow.log_model=false", "mlflow.experiment_name=two-hosts", env={"RAY_DEDUP_LOGS": "0"}, log=log)
    shared = Path(cluster.head.settings["SHARED_DIR"])
    deadline = time.monotonic() + 600
    while (cluster.second.address_b not in trial_hosts(log.read_text(errors="replace"), cluster.second.address_a)
           or len(list(shared.rglob("last.pt"))) < 2):  # both trials past their first epoch's checkpoint
        assert time.monotonic() < deadline and process.poll() is None, log.read_text(errors="replace")[-5000:]
        time.sleep(1)
    before = log.read_text(errors="replace")
    assert trial_hosts(before, cluster.second.address_a) == {cluster.second.address_a, cluster.second.address_b}, before[-5000:]
    (container,) = cluster.worker.containers("ray-worker")
    subprocess.run(["docker", "kill", container], check=True, capture_output=True)  # the second server dies mid-trial
    output = run_to_end(process, log)
    resumed = re.findall(r"\(run_trial pid=\d+(?:, ip=([\d.]+))?\).*resuming from /shared/\S+/last\.pt after epoch (\d+)", output)
    assert resumed and all(ip in ("", cluster.second.address_a) and int(epoch) >= 1 for ip, epoch in resumed), output[-6000:]
    rest = MlflowRest(cluster.auth(), cluster.mlflow, cluster.tls)  # read back over HTTPS, with the CA and the login
    parent, children = rest.sweep("two-hosts")
    assert parent["info"]["status"] == "FINISHED"
    assert sorted(tags(r)["param.loss"] for r in children) == ["focal", "ghm"], output[-5000:]  # every result, once
    for run in children:  # logged from both hosts; the resumed trial without an epoch twice
        assert run["info"]["status"] == "FINISHED" and tags(run)["trial_state"] == "finished"
        assert [m["step"] for m in rest.history(run, "mAP")] == list(range(1, epochs + 1))


def test_host_b_reaches_mlflow_only_over_https_with_a_login(cluster: Cluster) -> None:
    seen = cluster.second.probe("mlflow", cluster.mlflow, ":".join(cluster.auth()))
    assert seen["login"] == 200 and seen["no_login"] == 401, seen
    assert "CERTIFICATE_VERIFY_FAILED" in str(seen["system_cas"]), seen  # a certificate only the cluster's CA vouches for
    assert seen["plain"] != 200, seen  # no plain HTTP on the published port


def test_host_b_reaches_postgresql_only_over_tls_with_a_password(cluster: Cluster) -> None:
    settings = cluster.head.settings
    seen = cluster.second.probe("postgres", cluster.second.address_a, settings["POSTGRES_USER"], settings["POSTGRES_PASSWORD"])
    assert seen["verified"] == "ok ssl=True", seen
    assert "no encryption" in seen["plain"], seen  # pg_hba: hostssl only
    wrong = cluster.second.probe("postgres", cluster.second.address_a, settings["POSTGRES_USER"], "not-the-password")
    assert "password authentication failed" in wrong["verified"], wrong
