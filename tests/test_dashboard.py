"""The sweep dashboard, in a real browser (headless Chromium), and the sweep as an MLflow server shows it.

Two sweeps feed it: a launch.py grid (GHM against focal loss, paired by seed, with gradient-norm
figures) and an Optuna search of the curves app whose trials finish, get pruned and fail. Set
``GHM_SCREENSHOTS=<dir>`` to keep the screenshots (docs/figures holds the README's).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from devtools.cluster import free_port, stop_process_group
from devtools.mlflow_screenshots import wait_http
from ghm.comparison.record import SweepRecord
from ghm.dashboard.build import build_dashboard
from tests.conftest import ROOT, SMALL_DATA

APPS = ROOT / "tests" / "apps"

pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def run(args: list[str], cwd: Path, ray_head: Mapping[str, str]) -> str:
    """A sweep on the session's Ray head."""
    result = subprocess.run([sys.executable, *args], cwd=cwd, env={**os.environ, **ray_head}, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, ray_head: Mapping[str, str]) -> dict[str, Any]:
    """GHM and focal loss on seeds 0 and 1 (2 epochs of the smoke schedule), tracked in a store of its own."""
    tmp = tmp_path_factory.mktemp("grid")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    output = run(["launch.py", "-m", "loss=focal,ghm", "seed=0,1", "train=smoke", "train.epochs=2", *SMALL_DATA,
                  f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=dashboard", f"hydra.sweep.dir={tmp / 'multirun'}",
                  f"hydra.sweeper.ray.storage_path={tmp / 'ray'}", f"hydra.sweeper.storage=sqlite:///{tmp / 'optuna.db'}"], ROOT, ray_head)
    return {"uri": uri, "dir": tmp, "output": output, "page": tmp / "multirun" / "dashboard.html"}


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory, ray_head: Mapping[str, str]) -> dict[str, Any]:
    """An Optuna search of the curves app: x above 0.8 fails, ASHA prunes some of the rest."""
    tmp = tmp_path_factory.mktemp("search")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    output = run(["curves.py", "--config-name", "curves_search", "-m", "hydra.sweeper.n_trials=8", "hydra.sweeper.study_name=search",
                  "hydra.sweeper.max_failure_rate=1.0", "fail_above=0.8", "seconds_per_epoch=0.2", f"log={tmp / 'log'}",
                  f"+mlflow_uri={uri}", f"+mlflow.tracking_uri={uri}", "+mlflow.experiment_name=search",
                  f"hydra.sweep.dir={tmp / 'multirun'}", f"hydra.sweeper.ray.storage_path={tmp / 'ray'}",
                  f"hydra.sweeper.storage=sqlite:///{tmp / 'optuna.db'}"], APPS, ray_head)
    return {"uri": uri, "dir": tmp, "output": output, "page": tmp / "multirun" / "dashboard.html",
            "storage": f"sqlite:///{tmp / 'optuna.db'}"}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, ray_head: Mapping[str, str]) -> dict[str, Any]:
    """A tuned comparison of the curves app: 4 search trials per arm on seeds 0 and 1, the bests confirmed on seeds 2 and 3."""
    tmp = tmp_path_factory.mktemp("tuned")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    output = run(["curves.py", "--config-name", "curves_tuned", "-m", "hydra.sweeper.study_name=tuned", "hydra.sweeper.tuning.budget=4",
                  "hydra.sweeper.confirm_seeds=2", "hydra.sweeper.pruner.enabled=false", f"log={tmp / 'log'}", f"+mlflow_uri={uri}",
                  f"+mlflow.tracking_uri={uri}", "+mlflow.experiment_name=tuned", f"hydra.sweep.dir={tmp / 'multirun'}",
                  f"hydra.sweeper.ray.storage_path={tmp / 'ray'}", f"hydra.sweeper.storage=sqlite:///{tmp / 'optuna.db'}"], APPS, ray_head)
    return {"uri": uri, "dir": tmp, "output": output, "page": tmp / "multirun" / "dashboard.html"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("GHM_REQUIRE_BROWSER") == "1":  # as GHM_REQUIRE_DOCKER: 1 makes a missing browser a failure
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield instance
        instance.close()


def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url}"))
    page.goto(url)
    return page, errors


def screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    if os.environ.get("GHM_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["GHM_SCREENSHOTS"]) / name)
    return path


def rendered_plots(page: Any) -> list[int]:
    """For each plot container, how many drawn SVG marks (paths, points, bars) it holds."""
    page.wait_for_function("document.querySelectorAll('.plot').length > 0 && "
                           "[...document.querySelectorAll('.plot')].every(p => p.querySelector('svg.main-svg'))", timeout=30_000)
    return page.eval_on_selector_all(".plot", "plots => plots.map(p => p.querySelectorAll('svg path, svg .point, svg rect').length)")


def plotted(page: Any) -> dict[str, list[dict[str, Any]]]:
    """What each plot draws, as Plotly holds it after rendering: its traces' names and values, by plot title."""
    return page.evaluate("() => Object.fromEntries([...document.querySelectorAll('.plot')].map(p => [p.closest('section')"
                         ".querySelector('h2').innerText, p.data.map(t => ({name: t.name, x: t.x, y: t.y}))]))")


def table(page: Any, selector: str) -> list[list[str]]:
    return page.eval_on_selector_all(f"{selector} tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.innerText.trim()))")


def test_the_grid_dashboard_renders_the_comparison(grid: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    assert f"Dashboard: {grid['page']}" in grid["output"]
    client = MlflowClient(grid["uri"])
    parent = client.search_runs([client.get_experiment_by_name("dashboard").experiment_id], "tags.sweep_parent != ''")[0]
    page, errors = open_page(browser, grid["page"].as_uri())
    assert all(count > 0 for count in rendered_plots(page))
    rows = {row[1]: row for row in table(page, "#leaderboard")}
    assert set(rows) == {"loss=focal", "loss=ghm"} and rows["loss=focal"][5] == "baseline"
    assert float(rows["loss=ghm"][5]) == pytest.approx(parent.data.metrics["diff/loss_ghm"], abs=1e-4)  # the sweep's own Δ
    assert rows["loss=ghm"][7] == "2" and rows["loss=ghm"][2] == "2"
    verdict = page.inner_text("#verdict")
    assert "loss=ghm" in verdict and "2 seed pairs" in verdict
    titles = page.eval_on_selector_all("h2", "hs => hs.map(h => h.innerText)")
    assert {"Leaderboard", "mAP curves", "train_loss curves", "Optimisation history", "Parallel coordinates", "Trials"} <= set(titles)
    sizes = page.eval_on_selector_all(".figures img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(sizes) == 4 and min(sizes) > 100  # gradient norms of classification and regression, best and baseline
    plots = plotted(page)
    (forest,) = plots["Paired differences"]
    assert forest["y"] == ["loss=ghm"] and forest["x"] == pytest.approx([parent.data.metrics["diff/loss_ghm"]], abs=1e-9)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    for loss in ("focal", "ghm"):  # each curve is the mean over the setting's seeds of what its runs logged per epoch
        runs = [c.info.run_id for c in children if c.data.tags["param.loss"] == loss]
        histories = [{m.step: m.value for m in client.get_metric_history(run, "mAP")} for run in runs]
        (curve,) = [t for t in plots["mAP curves"] if t["name"] == f"loss={loss}"]
        assert len(histories) == 2 and curve["x"] == [1, 2]
        assert curve["y"] == pytest.approx([statistics.fmean(h[step] for h in histories) for step in (1, 2)], abs=1e-9)
    assert errors == []
    screenshot(page, tmp_path, "dashboard.png")


def test_the_search_dashboard_shows_pruned_and_failed_trials(search: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    page, errors = open_page(browser, search["page"].as_uri())
    assert all(count > 0 for count in rendered_plots(page))
    trials = table(page, "#trials")
    assert len(trials) == 8
    states = [row[4] for row in trials]  # number, setting, role (a tuned comparison's), seed, state, objective, error
    assert "failed" in states and "pruned" in states and "finished" in states
    for row in trials:
        x = float(row[1].removeprefix("x="))
        assert (row[4] == "failed") == (x > 0.8) and row[2] == ""
        if row[4] == "failed":
            assert f"x={row[1].removeprefix('x=')} is above 0.8" in row[6]
    for row in table(page, "#leaderboard"):  # the curves app's objective is x itself
        if "finished" in row[8]:
            assert float(row[3]) == pytest.approx(float(row[1].removeprefix("x=")), abs=1e-4)
    titles = page.eval_on_selector_all("h2", "hs => hs.map(h => h.innerText)")
    assert {"Optimisation history", "Parameter importances", "Parallel coordinates", "Slices"} <= set(titles)
    finished = sorted((int(row[0]), float(row[5])) for row in trials if row[4] == "finished")
    objective = next(t for t in plotted(page)["Optimisation history"] if t["name"] == "Objective Value")
    assert objective["x"] == [number for number, _ in finished]  # the finished trials, only, at their values
    assert objective["y"] == pytest.approx([value for _, value in finished], abs=1e-4)
    assert errors == []
    screenshot(page, tmp_path, "dashboard_search.png")


def test_the_tuned_dashboard_shows_each_arms_budget_best_and_tuning_curve(tuned: dict[str, Any], browser: Any,
                                                                          tmp_path: Path) -> None:
    client = MlflowClient(tuned["uri"])
    parent = client.search_runs([client.get_experiment_by_name("tuned").experiment_id], "tags.sweep_parent = 'tuned'")[0]
    record = SweepRecord.from_json(json.loads(Path(client.download_artifacts(parent.info.run_id, "sweep.json", str(tmp_path))).read_text()))
    page, errors = open_page(browser, tuned["page"].as_uri())
    assert all(count > 0 for count in rendered_plots(page))
    arms = {row[0]: row for row in table(page, "#arms")}
    assert set(arms) == {"baseline", "candidate"} and all(row[2].startswith("4 x 2 seeds") for row in arms.values())
    for arm in record.tuning:
        assert float(arms[arm.name][4]) == pytest.approx(arm.best_value, abs=1e-4)
        assert f"lr={arm.best['lr']:.4g}" in arms[arm.name][5]
    curves = {trace["name"]: trace for trace in plotted(page)["Tuning curves"]}
    for arm in record.tuning:  # each arm's best so far, as the sweep recorded it, against the search trial
        assert curves[f"{arm.name}: best so far"]["x"] == [1, 2, 3, 4]
        assert curves[f"{arm.name}: best so far"]["y"] == pytest.approx(arm.curve, abs=1e-9)
    leaderboard = {row[1]: row for row in table(page, "#leaderboard")}
    (comparison,) = record.comparisons
    assert set(leaderboard) == {"baseline", "candidate"} and float(leaderboard["candidate"][5]) == pytest.approx(comparison.mean, abs=1e-4)
    assert "Tuned comparison: each arm (baseline, candidate) searched lr" in page.inner_text("#tuning")
    verdict = page.inner_text("#verdict")
    assert "Best setting candidate beats the baseline" in verdict and "P(better) 1.00 [" in verdict
    assert f"with 80% power: {comparison.mde:.4f}" in verdict
    roles = [row[2] for row in table(page, "#trials")]
    assert roles.count("candidate: confirmation") == 2 and sum(r.startswith("baseline: search trial") for r in roles) == 8
    assert errors == []
    screenshot(page, tmp_path, "dashboard_tuned.png")


def test_one_command_builds_and_serves_the_dashboard(search: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    built = tmp_path / "again.html"
    path = build_dashboard("search", "search", tracking_uri=search["uri"], optuna_storage=search["storage"], output=built)
    assert path == built and "<script src=" not in built.read_text()  # self-contained: no external script
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ghm.dashboard", "--experiment", "search", "--tracking-uri", search["uri"],
                               "--optuna-storage", search["storage"], "-o", str(tmp_path / "served.html"), "--serve",
                               "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/served.html", server)
        page, errors = open_page(browser, f"http://127.0.0.1:{port}/served.html")
        assert all(count > 0 for count in rendered_plots(page)) and errors == []
    finally:
        stop_process_group(server.pid, grace=5)
    missing = subprocess.run([sys.executable, "-m", "ghm.dashboard", "--experiment", "nope", "--tracking-uri", search["uri"]],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no MLflow experiment 'nope'" in missing.stderr


def rest(base: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def test_an_mlflow_server_shows_the_sweep_its_runs_metrics_and_dashboard(grid: dict[str, Any], browser: Any,
                                                                         tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", grid["uri"],
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=tmp_path,
                              env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no GenAI job runners
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_http(f"{base}/health", server)
        experiment = rest(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=dashboard")["experiment"]
        runs = rest(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
        parents = [run for run, tag in zip(runs, tags, strict=True) if "sweep_parent" in tag]
        assert len(parents) == 1
        parent_id = parents[0]["info"]["run_id"]
        children = [run for run, tag in zip(runs, tags, strict=True) if tag.get("mlflow.parentRunId") == parent_id]
        assert len(children) == 4 and all(run["info"]["status"] == "FINISHED" for run in children)
        for child in children:
            history = rest(base, f"/api/2.0/mlflow/metrics/get-history?run_id={child['info']['run_id']}&metric_key=mAP")
            assert [m["step"] for m in history["metrics"]] == [1, 2]
        files = rest(base, f"/api/2.0/mlflow/artifacts/list?run_id={parent_id}")["files"]
        assert {"dashboard.html", "sweep.json", "comparison.txt"} <= {f["path"] for f in files}
        with urllib.request.urlopen(f"{base}/get-artifact?path=dashboard.html&run_uuid={parent_id}", timeout=30) as answer:
            assert 'id="leaderboard"' in answer.read().decode()

        page, _ = open_page(browser, f"{base}/#/experiments/{experiment['experiment_id']}/runs")
        sweep = next(t["sweep_parent"] for t in tags if "sweep_parent" in t)
        page.get_by_text(sweep).first.wait_for(timeout=60_000)  # the parent run, listed by the UI
        if page.get_by_role("button", name="Close").count():
            page.get_by_role("button", name="Close").first.click()  # MLflow's assistant panel
        page.locator("[role=row]", has_text=sweep).first.locator("button").first.click()  # unfold its child runs
        for child in children:
            name = next(t["value"] for t in child["data"]["tags"] if t["key"] == "mlflow.runName")
            assert name.split(": ", 1)[1] in {"loss=focal seed=0", "loss=focal seed=1", "loss=ghm seed=0", "loss=ghm seed=1"}
            page.get_by_text(name).first.wait_for(timeout=30_000)
        screenshot(page, tmp_path, "mlflow_ui.png")

        # The dashboard opens from the UI: the parent run's artifact view renders it, plots included.
        page, _ = open_page(browser, f"{base}/#/experiments/{experiment['experiment_id']}/runs/{parent_id}/artifacts")
        page.get_by_text("dashboard.html").first.click(timeout=60_000)
        frame = page.frame_locator("iframe").first
        frame.locator("#leaderboard").wait_for(timeout=60_000)
        frame.locator(".plot svg.main-svg").first.wait_for(timeout=30_000)
        assert frame.locator(".plot svg.main-svg").count() >= 10
        screenshot(page, tmp_path, "mlflow_dashboard_artifact.png")
    finally:
        stop_process_group(server.pid, grace=5)
