"""The topology of ``docker-compose.yml`` as native processes on one machine, for tests and users without Docker.

``python -m devtools.cluster up`` starts an MLflow server on PostgreSQL (a database of its own), a Ray
head (no CPUs for trials, like the compose head) plus worker nodes, all with Ray's token
authentication, and optuna-dashboard on PostgreSQL; it waits until each answers, prints the
environment that points ``launch.py`` at the cluster, and stops every process it started when
interrupted. ``up --detach`` leaves the cluster running and ``down`` stops it later. Processes are
stopped by their own process groups, never with ``ray stop`` (which kills every Ray on the machine).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ghm.cluster.processes import alive as _alive
from ghm.cluster.processes import console_script, free_port, stop_process_group, stop_process_groups
from ghm.cluster.processes import process_tree as _tree

CHECKOUT_DIR = Path(__file__).resolve().parents[1]  # the Ray nodes import this checkout's code
STATE_FILE = "cluster.json"


class ClusterError(RuntimeError):
    """A component did not start or answer; the message names it and its log file."""


@dataclass
class ClusterSpec:
    """Where the cluster keeps its files, which PostgreSQL databases it uses, its size and its ports (0: a free one)."""

    workdir: Path
    postgres: str = "postgresql+psycopg2://postgres@127.0.0.1:5432"  # the server; databases are created on it
    mlflow_database: str = "ghm_mlflow"
    optuna_database: str = "ghm_optuna"
    workers: int = 1
    cpus_per_worker: int = 1
    mlflow_port: int = 5000
    ray_port: int = 0
    dashboard_port: int = 8265
    client_port: int = 10001
    optuna_port: int = 8080
    mlflow_service_name: str = "mlflow"  # the host name the compose network gives the MLflow server, allowed as in compose

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        for name in ("mlflow_port", "ray_port", "dashboard_port", "client_port", "optuna_port"):
            if getattr(self, name) == 0:
                setattr(self, name, free_port())
        if self.workers < 1 or self.cpus_per_worker < 1:
            raise ValueError("a cluster needs workers >= 1 and cpus_per_worker >= 1")


@dataclass
class Component:
    """One started process: its name, process (group) id and log file."""

    name: str
    pid: int
    log: str


@dataclass
class ClusterState:
    """What ``down`` needs to stop a detached cluster, and what clients need to reach it."""

    spec: dict
    token_path: str
    temp_dir: str
    components: list[Component] = field(default_factory=list)


class NativeCluster:
    """Starts, checks and stops the cluster's processes; :meth:`environment` is how a driver joins it."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        spec.workdir.mkdir(parents=True, exist_ok=True)
        self.token_path = spec.workdir / "ray_token"
        # Ray's socket paths must stay short, and a temp dir of its own keeps a plain ray.init() from finding this cluster.
        self.temp_dir = tempfile.mkdtemp(prefix="ghm-ray-", dir="/tmp")
        self.components: list[Component] = []
        self._worker_count = 0

    # -- addresses --------------------------------------------------------------------------

    @property
    def ray_address(self) -> str:
        return f"127.0.0.1:{self.spec.ray_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.spec.mlflow_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.spec.dashboard_port}"

    @property
    def optuna_url(self) -> str:
        return f"http://127.0.0.1:{self.spec.optuna_port}"

    def database_url(self, database: str) -> str:
        return f"{self.spec.postgres}/{database}"

    @property
    def optuna_storage(self) -> str:
        return self.database_url(self.spec.optuna_database)

    def environment(self) -> dict[str, str]:
        """The variables a driver (``launch.py -m``) needs to sweep on this cluster."""
        return {"RAY_ADDRESS": self.ray_address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path),
                "MLFLOW_TRACKING_URI": self.mlflow_uri, "OPTUNA_STORAGE": self.optuna_storage}

    # -- start and stop ---------------------------------------------------------------------

    def start(self) -> None:
        """Start every component and wait until each answers; on any failure stop what started and raise."""
        try:
            self.create_databases()
            self._write_token()
            self.start_mlflow()
            self._start_ray_head()
            for count in range(1, self.spec.workers + 1):
                self.add_worker()
                self.wait_for_ray_nodes(1 + count)  # one at a time: nodes starting together on one host can time out
            self._start_optuna_dashboard()
        except BaseException:
            self.stop()
            raise
        self.save_state()

    def stop(self) -> None:
        """Stop every started process group and its descendants, then remove Ray's temp dir."""
        stop_process_groups([c.pid for c in self.components])
        self.components.clear()
        subprocess.run(["rm", "-rf", self.temp_dir], check=False)
        (self.spec.workdir / STATE_FILE).unlink(missing_ok=True)

    def create_databases(self) -> None:
        """Create the MLflow and Optuna databases unless they exist, and Optuna's tables (optuna-dashboard only reads)."""
        import optuna

        with self._postgres() as connection, connection.cursor() as cursor:
            for database in (self.spec.mlflow_database, self.spec.optuna_database):
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{database}"')
        optuna.storages.RDBStorage(self.optuna_storage).engine.dispose()

    def drop_databases(self) -> None:
        """Drop the cluster's databases (tests do, after stopping the cluster)."""
        with self._postgres() as connection, connection.cursor() as cursor:
            for database in (self.spec.mlflow_database, self.spec.optuna_database):
                cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    def _postgres(self) -> contextlib.closing:
        import psycopg2
        from sqlalchemy.engine import make_url

        url = make_url(self.database_url("postgres"))
        try:
            connection = psycopg2.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                                          dbname=url.database, connect_timeout=10)
        except psycopg2.OperationalError as err:
            raise ClusterError(f"cannot reach PostgreSQL at {self.spec.postgres} (--postgres): {err}") from err
        connection.autocommit = True
        return contextlib.closing(connection)

    def _write_token(self) -> None:
        if not self.token_path.exists():
            self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)

    def _ray_environment(self) -> dict[str, str]:
        # a cluster of several nodes: never Ray's local-only mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which a caller's
        # warm local head sets) that refuses every worker node
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path),
               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
        env.pop("RAY_AUTH_TOKEN", None)  # the token file is the one source
        env.pop("RAY_ADDRESS", None)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHECKOUT_DIR), os.environ.get("PYTHONPATH")) if p)
        return env

    def start_mlflow(self) -> None:
        """The tracking server on its own PostgreSQL database, artifacts served from the workdir, job execution off."""
        port = self.spec.mlflow_port
        hosts = ",".join(f"{h}{p}" for h in (self.spec.mlflow_service_name, "127.0.0.1", "localhost") for p in ("", f":{port}"))
        command = [console_script("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                   "--backend-store-uri", self.database_url(self.spec.mlflow_database),
                   "--artifacts-destination", str(self.spec.workdir / "mlartifacts"), "--serve-artifacts",
                   "--allowed-hosts", hosts]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self._launch("mlflow", command, env)
        self._wait_http("mlflow", f"{self.mlflow_uri}/health", timeout=180)

    def stop_mlflow(self) -> None:
        """Stop the MLflow server alone (tests of an outage); :meth:`start_mlflow` brings it back on the same port."""
        for component in [c for c in self.components if c.name == "mlflow"]:
            stop_process_group(component.pid)
            self.components.remove(component)
        self.save_state()

    def _start_ray_head(self) -> None:
        command = [console_script("ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                   "--port", str(self.spec.ray_port), "--num-cpus", "0", "--num-gpus", "0",
                   "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.spec.dashboard_port),
                   "--ray-client-server-port", str(self.spec.client_port), "--temp-dir", self.temp_dir,
                   *self._node_ports()]
        self._launch("ray-head", command, self._ray_environment())
        self._wait_http("ray-head", f"{self.dashboard_url}/api/version", timeout=120,
                        headers={"Authorization": f"Bearer {self.token_path.read_text().strip()}"})

    def add_worker(self) -> str:
        """Start one more Ray worker node; returns its component name (``ray-worker-<n>``)."""
        self._worker_count += 1
        name = f"ray-worker-{self._worker_count}"
        command = [console_script("ray"), "start", "--block", "--address", self.ray_address, "--node-ip-address", "127.0.0.1",
                   "--num-cpus", str(self.spec.cpus_per_worker), "--num-gpus", "0", *self._node_ports()]
        self._launch(name, command, self._ray_environment())
        return name

    @staticmethod
    def _node_ports() -> list[str]:
        # Several nodes on one machine: each needs ports of its own where Ray's defaults are fixed.
        return ["--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port())]

    def kill_node(self, name: str) -> None:
        """Kill a Ray node's whole process group at once (SIGKILL): a machine that dies."""
        component = next(c for c in self.components if c.name == name)
        stop_process_group(component.pid, grace=0)
        self.components.remove(component)
        self.save_state()

    def node_of(self, pid: int) -> str | None:
        """The component that started ``pid`` (a trial's worker process), if any."""
        return next((c.name for c in self.components if pid in _tree(c.pid)), None)

    def _start_optuna_dashboard(self) -> None:
        command = [console_script("optuna-dashboard"), self.optuna_storage, "--host", "127.0.0.1", "--port", str(self.spec.optuna_port)]
        self._launch("optuna-dashboard", command, dict(os.environ))
        self._wait_http("optuna-dashboard", f"{self.optuna_url}/api/meta", timeout=120)

    def wait_for_ray_nodes(self, count: int, timeout: float = 180) -> None:
        """Wait until ``count`` Ray nodes are alive, asked of the cluster by a driver that holds the token."""
        probe = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False); "
                 "print(sum(1 for n in ray.nodes() if n['Alive']))")
        deadline = time.monotonic() + timeout
        alive = 0
        while time.monotonic() < deadline:
            result = subprocess.run([sys.executable, "-c", probe, self.ray_address], env=self._ray_environment(),
                                    capture_output=True, text=True, timeout=120)
            lines = result.stdout.strip().splitlines()
            alive = int(lines[-1]) if result.returncode == 0 and lines and lines[-1].isdigit() else 0
            if alive >= count:
                return
            time.sleep(2)
        raise ClusterError(f"{alive} of {count} Ray nodes alive after {timeout:.0f} s; logs: {self.spec.workdir / 'logs'}")

    # -- processes --------------------------------------------------------------------------

    def _launch(self, name: str, command: list[str], env: dict[str, str]) -> None:
        logs = self.spec.workdir / "logs"
        logs.mkdir(exist_ok=True)
        log_path = logs / f"{name}.log"
        with log_path.open("ab") as log:
            log.write(f"$ {shlex.join(command)}\n".encode())
            log.flush()
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                       cwd=CHECKOUT_DIR, start_new_session=True)
        self.components.append(Component(name, process.pid, str(log_path)))
        self.save_state()

    def _wait_http(self, name: str, url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
        component = next(c for c in self.components if c.name == name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(component.pid):
                raise ClusterError(f"{name} exited while starting; see {component.log}:\n{_tail(component.log)}")
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1)
        raise ClusterError(f"{name} did not answer {url} within {timeout:.0f} s; see {component.log}:\n{_tail(component.log)}")

    def save_state(self) -> None:
        spec = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.spec).items()}
        state = ClusterState(spec=spec, token_path=str(self.token_path), temp_dir=self.temp_dir, components=self.components)
        (self.spec.workdir / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))

    @classmethod
    def load(cls, workdir: Path) -> NativeCluster:
        """The cluster that ``up --detach`` started in ``workdir``."""
        path = Path(workdir).resolve() / STATE_FILE
        if not path.is_file():
            raise ClusterError(f"no running cluster recorded in {path}")
        state = json.loads(path.read_text())
        cluster = cls.__new__(cls)
        cluster.spec = ClusterSpec(**state["spec"])
        cluster.token_path = Path(state["token_path"])
        cluster.temp_dir = state["temp_dir"]
        cluster.components = [Component(**c) for c in state["components"]]
        cluster._worker_count = sum(c.name.startswith("ray-worker-") for c in cluster.components)
        return cluster


def _tail(path: str, lines: int = 20) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--workdir", type=Path, default=Path(".cluster"), help="logs, token, artifacts (default: .cluster/ here)")
    parser.add_argument("--detach", action="store_true", help="up: leave the cluster running; stop it with `down`")
    parser.add_argument("--postgres", default=ClusterSpec.postgres, help="PostgreSQL server URL, without a database")
    parser.add_argument("--mlflow-database", default=ClusterSpec.mlflow_database, help="MLflow's database (created if missing)")
    parser.add_argument("--optuna-database", default=ClusterSpec.optuna_database, help="Optuna's database (created if missing)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--cpus-per-worker", type=int, default=1)
    parser.add_argument("--mlflow-port", type=int, default=ClusterSpec.mlflow_port)
    parser.add_argument("--dashboard-port", type=int, default=ClusterSpec.dashboard_port)
    parser.add_argument("--optuna-port", type=int, default=ClusterSpec.optuna_port)
    args = parser.parse_args(argv)
    if args.action == "down":
        NativeCluster.load(args.workdir).stop()
        print("cluster stopped")
        return
    spec = ClusterSpec(workdir=args.workdir, postgres=args.postgres, mlflow_database=args.mlflow_database,
                       optuna_database=args.optuna_database, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                       mlflow_port=args.mlflow_port, dashboard_port=args.dashboard_port, optuna_port=args.optuna_port)
    cluster = NativeCluster(spec)
    print(f"starting the cluster (logs in {spec.workdir / 'logs'}) ...", flush=True)
    cluster.start()
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in cluster.environment().items())
    print(f"cluster up: MLflow {cluster.mlflow_uri}, Ray dashboard {cluster.dashboard_url}, Optuna {cluster.optuna_url}\n"
          f"point launch.py at it with:\n{exports}\n", flush=True)
    if args.detach:
        print(f"stop it with: python -m devtools.cluster down --workdir {spec.workdir}")
        return
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the cluster as Ctrl-C does
    try:
        print("Ctrl-C stops it.", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not leave half a cluster running
            signal.signal(sig, signal.SIG_IGN)
        print("stopping the cluster ...", flush=True)
        cluster.stop()
        print("cluster stopped")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
