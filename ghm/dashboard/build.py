"""Build a sweep's dashboard, and serve it: ``python -m ghm.dashboard --experiment ghm_vs_focal [--serve]``."""

from __future__ import annotations

import argparse
import http.server
import os
from functools import partial
from pathlib import Path

import optuna

from ghm.dashboard.page import render
from ghm.dashboard.source import DashboardError, load_sweep
from ghm.tracking.store import default_tracking_uri, tracking_client

DASHBOARD_DIR = Path("dashboards")  # under the working directory


def build_dashboard(experiment: str, sweep: str | None = None, *, tracking_uri: str | None = None,
                    optuna_storage: str | None = None, output: Path | None = None) -> Path:
    """Write the dashboard of a sweep (default: ``dashboards/<sweep>.html``) and return its path."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a few small downloads: no progress bars
    client = tracking_client(tracking_uri or default_tracking_uri(Path.cwd()))
    view = load_sweep(client, experiment, sweep)
    path = Path(output or DASHBOARD_DIR / f"{view.record.name}.html")
    path.parent.mkdir(parents=True, exist_ok=True)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the charts' in-memory study of the trials is no news to the user
    try:
        page = render(client, view, optuna_storage or os.environ.get("OPTUNA_STORAGE"))
    finally:
        optuna.logging.set_verbosity(verbosity)
    path.write_text(page, encoding="utf-8")
    return path


def serve(path: Path, port: int) -> None:
    """Serve the dashboard's directory on 127.0.0.1 (the file also opens straight from disk)."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        print(f"serving http://127.0.0.1:{server.server_address[1]}/{path.name}  (Ctrl-C stops)", flush=True)
        server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ghm.dashboard", description="The comparison dashboard of a sweep.")
    parser.add_argument("--experiment", default="ghm_vs_focal", help="MLflow experiment (default: the main job's)")
    parser.add_argument("--sweep", help="the sweep's name (its parent run's sweep_parent tag); default: the latest")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else the embedded store")
    parser.add_argument("--optuna-storage", help="a sweep recorded before sweep.json version 2: its study's storage "
                                                 "(default: OPTUNA_STORAGE)")
    parser.add_argument("-o", "--output", type=Path, help="default: dashboards/<sweep>.html")
    parser.add_argument("--serve", action="store_true", help="then serve it on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    try:
        path = build_dashboard(args.experiment, args.sweep, tracking_uri=args.tracking_uri, optuna_storage=args.optuna_storage,
                               output=args.output)
    except DashboardError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"dashboard: {path}")
    if args.serve:
        serve(path, args.port)
