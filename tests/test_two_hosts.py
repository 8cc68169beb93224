"""Ray across two hosts with token authentication and mutual TLS, the second host simulated by a network namespace.

Host A (this machine's network namespace) runs the head, which offers one CPU, and the sweeps' drivers; host B (a
network namespace of its own, joined to A by a veth pair and nothing else) runs one worker node with the fixed node
ports of ``docker-compose.worker.yml``, and reaches A only at A's address on that link, as a second server reaches the
head's published address. The CA and each host's certificate come from ``python -m ghm.cluster certs``'s code
(:mod:`ghm.cluster.tls`). Checked: a sweep's trials run on both hosts; a worker without the token, and one whose
certificate another CA signed, never join; a host-B worker killed mid-trial is retried on host A.

Needs root and iproute2 (CI runs as root); skipped otherwise, unless ``GHM_REQUIRE_NETNS=1``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ghm.cluster.processes import free_port, stop_process_group
from ghm.cluster.tls import issue, ray_tls_environment
from tests.conftest import ROOT

APPS = ROOT / "tests" / "apps"
pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# The worker's fixed node ports, as docker-compose.worker.yml gives them (a real second host opens these in its firewall).
WORKER_PORTS = ["--node-manager-port", "6380", "--object-manager-port", "6381", "--dashboard-agent-listen-port", "52365",
                "--dashboard-agent-grpc-port", "6382", "--metrics-export-port", "6383", "--runtime-env-agent-port", "6384",
                "--min-worker-port", "10002", "--max-worker-port", "10031"]


def can_make_namespaces() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


@dataclass
class Hosts:
    """Host A (here) and host B (a network namespace), the cluster's certificates and token, the Ray nodes started."""

    workdir: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)
    temp_dirs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        subnet = 16 + int(self.tag, 16) % 200
        self.namespace, self.link_a, self.link_b = f"ghm-b-{self.tag}", f"ghma{self.tag}", f"ghmb{self.tag}"
        self.address_a, self.address_b = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
        self.certs = self.workdir / "certs"
        issue(self.certs, "host-a", [self.address_a])
        issue(self.certs, "host-b", [self.address_b])
        self.token = self.workdir / "token"
        self.token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
        self.token.chmod(0o600)
        self.head_port = free_port()

    def create_namespace(self) -> None:
        inside = ["-n", self.namespace]
        for command in (["netns", "add", self.namespace], ["link", "add", self.link_a, "type", "veth", "peer", "name", self.link_b],
                        ["link", "set", self.link_b, "netns", self.namespace], ["addr", "add", f"{self.address_a}/30", "dev", self.link_a],
                        ["link", "set", self.link_a, "up"], [*inside, "addr", "add", f"{self.address_b}/30", "dev", self.link_b],
                        [*inside, "link", "set", self.link_b, "up"], [*inside, "link", "set", "lo", "up"]):
            subprocess.run(["ip", *command], check=True, capture_output=True)

    def remove_namespace(self) -> None:
        subprocess.run(["ip", "link", "delete", self.link_a], capture_output=True)
        subprocess.run(["ip", "netns", "delete", self.namespace], capture_output=True)

    def environment(self, host: str, token: bool = True, certs: Path | None = None) -> dict[str, str]:
        """A Ray process's environment on ``host`` (``a`` or ``b``): the token and the host's certificate."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # not the test run's local-only mode
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token)} if token else {"RAY_AUTH_MODE": "disabled"})
        env.update(ray_tls_environment(certs or self.certs, f"host-{host}"))
        env["RAY_TLS_CA_CERT"] = str(self.certs / "ca.crt")  # every node trusts the cluster's CA
        return env

    @property
    def head_address(self) -> str:
        return f"{self.address_a}:{self.head_port}"

    def start_head(self) -> None:
        command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address", self.address_a,
                   "--port", str(self.head_port), "--num-cpus", "1", "--num-gpus", "0", "--include-dashboard", "false",
                   "--ray-client-server-port", str(free_port()), "--node-manager-port", str(free_port()),
                   "--object-manager-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
                   "--dashboard-agent-grpc-port", str(free_port()), "--metrics-export-port", str(free_port()),
                   "--runtime-env-agent-port", str(free_port()), "--min-worker-port", "0", "--max-worker-port", "0"]
        self.start("head", command, self.environment("a"))
        self.wait_started("head")

    def start_worker(self, name: str, token: bool = True, certs: Path | None = None) -> None:
        """A worker node on host B, joined to the head at A's address."""
        command = ["ip", "netns", "exec", self.namespace, sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
                   "--address", self.head_address, "--node-ip-address", self.address_b, "--num-cpus", "1", "--num-gpus", "0",
                   *WORKER_PORTS]
        self.start(name, command, self.environment("b", token, certs))

    def start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        temp_dir = self.temp_dirs[name] = tempfile.mkdtemp(prefix="ghm-2h-", dir="/tmp")
        with (self.workdir / f"{name}.log").open("wb") as out:
            self.nodes[name] = subprocess.Popen([*command, "--temp-dir", temp_dir], env=env, stdout=out, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_started(self, name: str, timeout: float = 180) -> None:
        log = self.workdir / f"{name}.log"
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in log.read_text(errors="replace"):
            assert self.nodes[name].poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)

    def stop(self, name: str, grace: float = 5) -> None:
        stop_process_group(self.nodes.pop(name).pid, grace=grace)
        shutil.rmtree(self.temp_dirs.pop(name), ignore_errors=True)

    def alive_nodes(self) -> list[str]:
        """The node addresses the cluster counts alive, asked by a driver on host A that holds the token and a certificate."""
        probe = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False); "
                 "print(' '.join(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive'])))")
        result = subprocess.run([sys.executable, "-c", probe, self.head_address], env=self.environment("a"), capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout.split()


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    if not can_make_namespaces():
        if os.environ.get("GHM_REQUIRE_NETNS") == "1":
            pytest.fail("GHM_REQUIRE_NETNS=1: network namespaces need root and iproute2")
        pytest.skip("network namespaces need root and iproute2 (`ip`)")
    running = Hosts(tmp_path_factory.mktemp("hosts"))
    try:
        running.create_namespace()
        running.start_head()
        running.start_worker("worker-b")
        running.wait_started("worker-b")
        deadline = time.monotonic() + 120
        while running.alive_nodes() != sorted([running.address_a, running.address_b]):
            assert time.monotonic() < deadline, "host B's worker did not join"
            time.sleep(2)
        yield running
    finally:
        for name in list(running.nodes):
            running.stop(name, grace=2)
        running.remove_namespace()


def sweep(hosts: Hosts, tmp_path: Path, name: str, *overrides: str) -> subprocess.Popen:
    """A grid of the curves app from a driver on host A, its console in ``<tmp_path>/<name>.log``."""
    command = [sys.executable, "curves.py", "-m", f"log={tmp_path / 'executions'}", f"hydra.sweeper.ray.address={hosts.head_address}",
               f"hydra.sweep.dir={tmp_path / name}", f"hydra.sweeper.ray.storage_path={tmp_path / 'ray'}",
               f"hydra.sweeper.study_name={name}", "hydra.sweeper.n_jobs=2", *overrides]
    with (tmp_path / f"{name}.log").open("w") as out:
        # Every trial's lines with the address of its host: Ray would merge identical lines of several nodes into one.
        return subprocess.Popen(command, cwd=APPS, env={**hosts.environment("a"), "RAY_DEDUP_LOGS": "0"}, stdout=out,
                                stderr=subprocess.STDOUT)


def trial_hosts(output: str, driver_host: str) -> set[str]:
    """The hosts whose Ray workers ran trials: Ray names another node's address before each line (none for the driver's)."""
    return {ip or driver_host for ip in re.findall(r"\(run_trial pid=\d+(?:, ip=([\d.]+))?\)", output)}


def test_a_sweeps_trials_run_on_both_hosts_over_tls(hosts: Hosts, tmp_path: Path) -> None:
    process = sweep(hosts, tmp_path, "both", "x=0.1,0.2,0.3,0.4", "seconds_per_epoch=0.5")
    assert process.wait(timeout=600) == 0, (tmp_path / "both.log").read_text()[-5000:]
    output = (tmp_path / "both.log").read_text()
    assert "Ray: the cluster at" in output.splitlines()[0]
    assert trial_hosts(output, hosts.address_a) == {hosts.address_a, hosts.address_b}, output[-5000:]
    assert sorted((tmp_path / "executions").read_text().splitlines()) == [f"x={x} seed=0" for x in (0.1, 0.2, 0.3, 0.4)]


def test_workers_without_the_token_or_a_certificate_of_the_cas_never_join(hosts: Hosts, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign-ca"  # a CA of its own, which signs a certificate for host B's address
    issue(foreign, "host-b", [hosts.address_b])
    hosts.stop("worker-b")  # host B's fixed ports, for the intruders
    try:
        hosts.start_worker("no-token", token=False)
        hosts.start_worker("foreign-cert", certs=foreign)  # trusts the cluster's CA, presents a certificate it did not sign
        time.sleep(30)
        assert hosts.alive_nodes() == [hosts.address_a]  # neither joined
        assert "Ray runtime started" not in (hosts.workdir / "no-token.log").read_text(errors="replace")
        assert "Ray runtime started" not in (hosts.workdir / "foreign-cert.log").read_text(errors="replace")
    finally:
        for name in ("no-token", "foreign-cert"):
            hosts.stop(name, grace=2)
        hosts.start_worker("worker-b")
        hosts.wait_started("worker-b")


def test_a_host_b_worker_killed_mid_trial_is_retried_on_host_a(hosts: Hosts, tmp_path: Path) -> None:
    deadline = time.monotonic() + 120
    while hosts.alive_nodes() != sorted([hosts.address_a, hosts.address_b]):
        assert time.monotonic() < deadline, "host B's worker did not join again"
        time.sleep(2)
    process = sweep(hosts, tmp_path, "kill", "x=0.1,0.2,0.3", "seconds_per_epoch=2", "train.epochs=4")
    log = tmp_path / "kill.log"
    deadline = time.monotonic() + 300
    while hosts.address_b not in trial_hosts(log.read_text(), hosts.address_a):
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()[-5000:]
        time.sleep(0.5)
    time.sleep(3)  # mid-trial
    hosts.stop("worker-b", grace=0)  # the second server dies
    assert process.wait(timeout=600) == 0, log.read_text()[-5000:]
    assert sorted((tmp_path / "executions").read_text().splitlines()) == [f"x={x} seed=0" for x in (0.1, 0.2, 0.3)]  # each once
    assert len((tmp_path / "executions.started").read_text().split()) >= 4  # the killed trial ran again, on host A
