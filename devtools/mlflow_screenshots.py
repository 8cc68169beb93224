"""Screenshots of what MLflow's UI shows of a sweep (README's figures), taken in headless Chromium.

``python -m devtools.mlflow_screenshots --store sqlite:///mlflow.db --experiment ghm_vs_focal -o docs/figures``
serves the store with ``mlflow server`` on a free port (job execution off) and saves, for the
latest sweep of the experiment: the runs table (Source, Version, Datasets, Models columns), a
trial's run page (its source and git commit, datasets, logged model), the parent run's
description (the comparison table), the trial's logged model, and the registered model with its
aliases (when the sweep's verdict was registered). Needs Debian's ``chromium`` (``/usr/bin/chromium``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from devtools.cluster import free_port, stop_process_group

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def wait_http(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until ``url`` answers 200 while ``server`` runs (its output in the error when it ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server ended: {server.stdout.read() if server.stdout else ''}")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer")


def shoot(browser: Any, url: str, path: Path, wait_for: str, *, full_page: bool = False,
          prepare: Callable[[Any], None] | None = None) -> None:
    """Open ``url``, wait until ``wait_for`` (a text) shows, close MLflow's assistant panel, ``prepare``, save the page."""
    page = browser.new_page(viewport={"width": 1600, "height": 900})
    page.goto(url)
    page.get_by_text(wait_for).first.wait_for(timeout=60_000)
    if page.get_by_role("button", name="Close").count():
        page.get_by_role("button", name="Close").first.click()
    if prepare:
        prepare(page)
    page.wait_for_timeout(1500)  # the tables' and charts' last requests
    page.screenshot(path=str(path), full_page=full_page)
    page.close()
    print(f"saved {path}")


def runs_table(sweep: str, metric: str) -> Callable[[Any], None]:
    """The runs table with the Version and User columns and the objective shown, the sweep's runs unfolded."""
    def prepare(page: Any) -> None:
        page.get_by_role("button", name="Columns").click()
        search = page.get_by_placeholder("Search columns")
        for column in ("User", "Version", metric):
            search.fill(column)
            page.wait_for_timeout(500)
            page.get_by_text(column, exact=True).last.click()
        page.keyboard.press("Escape")
        page.locator("[role=row]", has_text=sweep).first.locator("button").first.click()  # unfold the trials' runs
        page.wait_for_timeout(1000)

    return prepare


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.mlflow_screenshots", description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite:///mlflow.db", help="the MLflow store (default: make main's)")
    parser.add_argument("--experiment", default="ghm_vs_focal")
    parser.add_argument("--registered-model", default="ghm-detector")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/figures"))
    args = parser.parse_args(argv)
    client = MlflowClient(args.store)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        parser.exit(2, f"error: no experiment {args.experiment!r} in {args.store}\n")
    parent = client.search_runs([experiment.experiment_id], "tags.sweep_parent != ''", max_results=1,
                                order_by=["attributes.start_time DESC"])[0]
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  order_by=["attributes.start_time ASC"])
    trial = next(run for run in children if run.outputs and run.outputs.model_outputs)
    model_id = trial.outputs.model_outputs[0].model_id
    registered = client.search_registered_models(f"name = '{args.registered_model}'")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", args.store,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    from playwright.sync_api import sync_playwright

    args.output.mkdir(parents=True, exist_ok=True)
    try:
        wait_http(f"{base}/health", server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
            runs = f"{base}/#/experiments/{experiment.experiment_id}"
            shoot(browser, f"{runs}/runs", args.output / "mlflow_runs_table.png", parent.info.run_name,
                  prepare=runs_table(parent.info.run_name, "mAP"))
            shoot(browser, f"{runs}/runs/{trial.info.run_id}", args.output / "mlflow_trial_run.png", trial.info.run_name)
            shoot(browser, f"{runs}/runs/{parent.info.run_id}", args.output / "mlflow_sweep_description.png", "paired difference",
                  full_page=True)
            shoot(browser, f"{runs}/models/{model_id}", args.output / "mlflow_logged_model.png", model_id, full_page=True)
            if registered:
                shoot(browser, f"{base}/#/models/{args.registered_model}", args.output / "mlflow_registered_model.png", "champion",
                      full_page=True)
            browser.close()
    finally:
        stop_process_group(server.pid, grace=5)


if __name__ == "__main__":
    main()
