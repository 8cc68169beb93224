"""docker-compose.yml, checked statically (tests/test_docker.py brings it up): the Compose schema and the security defaults."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?+][^}]*)?\}")
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$")


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def interpolate(text: str, env: dict[str, str]) -> str:
    """What docker compose does with ${VAR}, ${VAR:-default}, ${VAR:?error} and ${VAR:+$VAR's use}; $$ stays a literal $."""
    def value(match: re.Match) -> str:
        name, rest = match.group(1), match.group(0)[len(match.group(1)) + 2:-1]
        if rest.startswith(":+"):
            return re.sub(r"\$(\w+)", lambda inner: env.get(inner.group(1), ""), rest[2:]) if env.get(name) else ""
        if env.get(name):
            return env[name]
        return rest[2:] if rest.startswith(":-") else ""
    return INTERPOLATION.sub(value, text.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def test_the_file_and_its_interpolated_form_validate_against_the_compose_schema(compose: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    validator.validate(compose)
    validator.validate(yaml.safe_load(interpolate(COMPOSE.read_text(), env_example())))
    with pytest.raises(jsonschema.ValidationError):  # the check can fail: a wrong type is caught
        validator.validate({**compose, "services": {"x": {"ports": {"8080": "8080"}}}})


def test_the_stack_has_the_services_of_the_cluster(services: dict[str, Any]) -> None:
    assert {"postgres", "mlflow", "ray-head", "ray-worker", "optuna-dashboard", "launcher"} <= set(services)


def published_ports(service: dict[str, Any]) -> list[tuple[str | None, str]]:
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.append((port.get("host_ip"), str(port.get("published"))))
        else:
            parts = str(port).split(":")
            ports.append((parts[0] if len(parts) == 3 else None, parts[-2] if len(parts) >= 2 else parts[0]))
    return ports


def test_every_published_port_is_bound_to_localhost(services: dict[str, Any]) -> None:
    published = {name: published_ports(s) for name, s in services.items()}
    assert published["mlflow"] and published["ray-head"] and published["optuna-dashboard"]
    for name, ports in published.items():
        for host_ip, port in ports:
            assert host_ip == "127.0.0.1", f"{name} publishes {port} on {host_ip or 'every interface'}"
    for name in ("postgres", "ray-worker", "launcher"):
        assert not published[name], f"{name} needs no published port"


def test_ray_token_authentication_is_on_for_every_ray_process(services: dict[str, Any]) -> None:
    for name in ("ray-head", "ray-worker", "launcher"):
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert INTERPOLATION.fullmatch(env["RAY_AUTH_TOKEN"]).group(1) == "RAY_AUTH_TOKEN", name


def test_no_secret_is_written_in_the_file(services: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    for url in re.findall(r"\w+(?:\+\w+)?://[^\s\"']+", text):  # credentials in URLs come from the environment
        userinfo = url.split("://", 1)[1].split("@")[0] if "@" in url else ""
        if ":" in userinfo:
            assert userinfo.split(":", 1)[1].startswith("${"), url
    for name, service in services.items():
        env = service.get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        for key, value in env.items():
            if SECRET_NAME.search(key):
                match = INTERPOLATION.fullmatch(str(value))
                assert match and ":-" not in value.replace(":-}", ""), f"{name}: {key} must come from .env without a default"
    referenced = set(INTERPOLATION.findall(text.replace("$$", "")))  # $${...} is the container shell's
    assert referenced <= set(env_example()), f".env.example lacks {referenced - set(env_example())}"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_workers_reserve_gpus_and_every_ray_process_runs_the_same_image(services: dict[str, Any]) -> None:
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert services["ray-worker"]["shm_size"]
    images = {(services[n]["image"], json.dumps(services[n].get("build"), sort_keys=True)) for n in ("ray-head", "ray-worker", "launcher")}
    assert len(images) == 1 and services["ray-head"].get("build"), images
    assert "--num-gpus=0" in services["ray-head"]["command"]
    assert "scale" not in services["ray-worker"] and "container_name" not in services["ray-worker"]  # RAY_WORKERS replicas work


def test_mlflow_is_served_safely_and_services_wait_for_health(services: dict[str, Any]) -> None:
    mlflow = services["mlflow"]
    command = " ".join(mlflow["command"])
    hosts = re.search(r'--allowed-hosts "([^$"]+)', command).group(1).split(",")
    assert "mlflow" in hosts and "mlflow:5000" in hosts
    assert mlflow["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "postgresql" in mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"] and "--serve-artifacts" in command
    assert any(v.split(":")[0] == "mlflow-artifacts" for v in mlflow["volumes"])
    assert any(v.split(":")[0] == "postgres-data" for v in services["postgres"]["volumes"])
    for name in ("postgres", "mlflow", "ray-head", "ray-worker", "optuna-dashboard"):
        assert services[name]["healthcheck"]["test"], name
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["ray-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    shared = [{v.split(":")[0] for v in services[n]["volumes"]} for n in ("ray-head", "ray-worker", "launcher")]
    assert set.intersection(*shared) == {"shared"}
    assert "hydra.sweeper.ray.storage_path=/shared/ray_results" in services["launcher"]["entrypoint"]
    assert "hydra.sweeper.registry.enabled=true" in services["launcher"]["entrypoint"]  # the stack registers each verdict


WORKER_HOST_ENV = {"RAY_HEAD_ADDRESS": "192.0.2.10", "RAY_NODE_ADDRESS": "192.0.2.11", "RAY_AUTH_TOKEN": "t", "SHARED_DIR": "/mnt/shared",
                   "MLFLOW_ADMIN_PASSWORD": "p"}
HEAD_HOST_ENV = {**env_example(), "CLUSTER_ADDRESS": "192.0.2.10", "SHARED_DIR": "/mnt/shared", "RAY_WORKER_CPUS": "4"}


def flags_of(command: str) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in command.split() if arg.startswith("--") and "=" in arg)


def test_the_worker_file_for_another_host_joins_with_tls_the_token_and_the_tested_fixed_ports() -> None:
    """docker-compose.worker.yml: what a second GPU host runs (tests/test_two_hosts.py runs its command's ports and TLS natively;
    tests/test_docker_hosts.py runs the file itself beside the head host's stack)."""
    from tests.test_two_hosts import WORKER_PORTS

    path = ROOT / "docker-compose.worker.yml"
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    validator.validate(yaml.safe_load(path.read_text()))
    services = yaml.safe_load(interpolate(path.read_text(), WORKER_HOST_ENV))["services"]
    validator.validate({"services": services})
    worker = services["ray-worker"]
    command = worker["command"].split()
    assert command[:3] == ["ray", "start", "--address=192.0.2.10:6379"] and "--node-ip-address=192.0.2.11" in command
    assert "--num-cpus" not in worker["command"]  # every CPU unless RAY_WORKER_CPUS says otherwise
    flags = flags_of(worker["command"])
    assert {k: flags[k] for k in (a.removeprefix("--") for a in WORKER_PORTS[::2])} == dict(
        zip((a.removeprefix("--") for a in WORKER_PORTS[::2]), WORKER_PORTS[1::2], strict=True))
    env = yaml.safe_load(path.read_text())["services"]["ray-worker"]["environment"]
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_USE_TLS"] == "1" and ":-" not in env["RAY_AUTH_TOKEN"]
    assert {env[k] for k in ("RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT", "MLFLOW_TRACKING_SERVER_CERT_PATH")} == {
        "/certs/node.crt", "/certs/node.key", "/certs/ca.crt"}
    assert ":-" not in env["MLFLOW_TRACKING_PASSWORD"]
    assert "node-certs:/certs:ro" in worker["volumes"] and worker["network_mode"] == "host" and "ports" not in worker
    assert worker["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    assert "install -m 600 -o 1000 -g 1000" in services["certs"]["entrypoint"][-1]  # the key readable by the worker's user only


@pytest.fixture(scope="module")
def head_host() -> dict[str, Any]:
    """docker-compose.hosts.yml as compose merges it onto docker-compose.yml (the keys it sets replace the base's)."""
    path = ROOT / "docker-compose.hosts.yml"
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(yaml.safe_load(path.read_text().replace("!override", "")
                                                                                       .replace("!reset", "")))
    return yaml.safe_load(interpolate(path.read_text().replace("!override", "").replace("!reset", ""), HEAD_HOST_ENV))


def test_the_head_hosts_ray_processes_advertise_the_cluster_address_on_distinct_fixed_ports(head_host: dict[str, Any]) -> None:
    services = head_host["services"]
    commands = {n: services[n]["command"] for n in ("ray-head", "ray-worker")}
    commands["launcher"] = services["launcher"]["environment"]["RAY_NODE_OPTIONS"]
    ports: list[int] = []
    for name, command in commands.items():
        flags = flags_of(command)
        assert flags["node-ip-address"] == "192.0.2.10", name
        assert services[name]["network_mode"] == "host", name  # the address others connect to is the host's
        ports += [int(v) for k, v in flags.items() if k.endswith("-port") and k not in ("min-worker-port", "max-worker-port")]
        ports += list(range(int(flags["min-worker-port"]), int(flags["max-worker-port"]) + 1))
    assert len(ports) == len(set(ports)), "two Ray processes of the head host share a port"
    assert flags_of(commands["ray-worker"])["num-cpus"] == "4"
    assert flags_of(commands["ray-head"])["dashboard-host"] == "127.0.0.1"
    for name in ("ray-head", "ray-worker", "launcher"):
        env = services[name]["environment"]
        assert env["RAY_USE_TLS"] == "1" and env["RAY_ADDRESS"] == "192.0.2.10:6379", name
        assert env["MLFLOW_TRACKING_URI"] == "https://192.0.2.10:5000" and env["MLFLOW_TRACKING_SERVER_CERT_PATH"] == "/certs/ca.crt"
        assert env["OPTUNA_STORAGE"].endswith("@192.0.2.10:5432/optuna?sslmode=verify-full&sslrootcert=/certs/ca.crt"), name


def test_the_head_host_publishes_only_tls_endpoints_with_logins_beyond_localhost(head_host: dict[str, Any]) -> None:
    services = head_host["services"]
    beyond = {(n, p) for n, s in services.items() for host_ip, p in published_ports(s) if host_ip != "127.0.0.1"}
    assert beyond == {("mlflow", "5000"), ("postgres", "5432")}
    assert all(host_ip == "192.0.2.10" for n in ("mlflow", "postgres") for host_ip, _ in published_ports(services[n])
               if host_ip != "127.0.0.1")
    mlflow = services["mlflow"]["environment"]
    assert mlflow["MLFLOW_AUTH"] == "basic-auth" and mlflow["MLFLOW_SERVER_CERT"] == "/certs/node.crt"
    assert "https://localhost:5000/health" in services["mlflow"]["healthcheck"]["test"]
    postgres = services["postgres"]["command"]
    assert {"ssl=on", "hba_file=/etc/postgresql/ghm_hba.conf", "ssl_key_file=/certs/postgres.key"} <= set(postgres)
    hba = [line.split() for line in head_host["configs"]["postgres-hba"]["content"].splitlines() if line and not line.startswith("#")]
    assert hba == [["local", "all", "all", "trust"], ["hostssl", "all", "all", "all", "scram-sha-256"]]  # no plain TCP at all
    assert head_host["volumes"]["shared"]["driver_opts"]["device"] == "/mnt/shared"
