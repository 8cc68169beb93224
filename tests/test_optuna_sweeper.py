"""``hydra/sweeper: optuna`` as hydra-optuna-sweeper's users run it: its example apps, its command lines, its results file.

In the style of that plugin's own tests: each app runs in a process of its own and the assertions
read ``optimization_results.yaml`` (and the study, where one is stored). The apps lie in
``tests/apps`` (``sphere.py``, ``multi-objective.py``, ``custom-search-space-objective.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from hydra import compose, initialize_config_module
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.test_utils.test_utils import TSweepRunner
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.hydra_optuna_sweeper import _impl
from hydra_plugins.hydra_optuna_sweeper.config import Direction
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from tests.conftest import ROOT

APPS = ROOT / "tests" / "apps"


@pytest.fixture(autouse=True)
def sweeps_on_the_session_head(request: pytest.FixtureRequest) -> None:
    """The sweeping tests (marked slow) join the session's Ray head; the others need no Ray."""
    if request.node.get_closest_marker("slow"):
        request.getfixturevalue("ray_address")


def run_app(args: list[str], cwd: Path = APPS, check: bool = True) -> subprocess.CompletedProcess:
    """One app, as its user runs it (the checkout on the path, as an installed package would be)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    args = [str(APPS / args[0]), *args[1:]]
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    return result


def results(sweep_dir: Path) -> DictConfig:
    returns = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert isinstance(returns, DictConfig) and returns.name == "optuna"
    return returns


@pytest.mark.parametrize("with_commandline", [True, False])
@pytest.mark.slow  # starts the app in a process of its own
def test_sphere_example(with_commandline: bool, tmp_path: Path) -> None:
    storage, study_name = f"sqlite:///{tmp_path / 'test.db'}", "test-optuna-example"
    cmd = ["sphere.py", "--multirun", f"hydra.sweep.dir={tmp_path}", "hydra.job.chdir=True", "hydra.sweeper.n_trials=20",
           "hydra.sweeper.n_jobs=1", f"hydra.sweeper.storage={storage}", f"hydra.sweeper.study_name={study_name}",
           "hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.seed=123", "~z"]
    if with_commandline:
        cmd += ["x=choice(0, 1, 2)", "y=0"]
    out = run_app(cmd)
    returns = results(tmp_path)
    best = optuna.load_study(storage=storage, study_name=study_name).best_trial
    assert returns.best_params.x == best.params["x"] and returns.best_value == best.value
    assert best.value == best.params["x"] ** 2 + (0 if with_commandline else best.params["y"]) ** 2
    if with_commandline:
        assert "y" not in returns.best_params and "y" not in best.params
    else:
        assert returns.best_params.y == best.params["y"]
    assert returns.best_value <= 2.27  # upstream's bound: the 95th percentile of TPE's result over 1000 seeds
    assert f"Best parameters: {best.params}" in out.stdout and f"Best value: {best.value}" in out.stdout
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.is_dir()) == list(range(20))  # Hydra's job folders


@pytest.mark.parametrize("num_trials", [10, 1])
@pytest.mark.slow  # starts the app in a process of its own
def test_grid_sampler(num_trials: int, tmp_path: Path) -> None:
    run_app(["sphere.py", "--multirun", f"--config-dir={APPS / 'conf'}", "--config-name=grid", f"hydra.sweep.dir={tmp_path}",
             "hydra.job.chdir=False", f"hydra.sweeper.n_trials={num_trials}", "hydra.sweeper.n_jobs=1"])
    returns = results(tmp_path)
    bv, bx, by, bz = returns.best_value, returns.best_params.x, returns.best_params.y, returns.best_params.z
    assert bx in (-1, 1) and by in (-1.0, 0.0) and bz in ("foo", "bar") and bv == bx**2 + by**2
    jobs = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(jobs) == min(num_trials, 8)  # the grid has 2 x 2 x 2 points: n_trials is cut to 8
    if num_trials >= 8:
        assert bv == 1 and abs(bx) == 1 and by == 0


def dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("with_commandline", [True, False])
@pytest.mark.slow  # starts the app in a process of its own
def test_multi_objective_example(with_commandline: bool, tmp_path: Path) -> None:
    cmd = ["multi-objective.py", "--multirun", f"hydra.sweep.dir={tmp_path}", "hydra.job.chdir=True", "hydra.sweeper.n_trials=20",
           "hydra.sweeper.n_jobs=1", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=123"]
    if with_commandline:
        cmd += ["x=range(0, 5)", "y=range(0, 3)"]
    out = run_app(cmd)
    solutions = results(tmp_path).solutions
    assert solutions and f"Number of Pareto solutions: {len(solutions)}" in out.stdout
    for s in solutions:
        x, y = s.params.x, s.params.y
        assert list(s["values"]) == pytest.approx([4 * x**2 + 4 * y**2, (x - 5) ** 2 + (y - 5) ** 2])
        assert x % 1 == 0 and y % 1 == 0 if with_commandline else x % 1 in (0, 0.5) and y % 1 in (0, 0.5)
        assert not any(dominates(list(o["values"]), list(s["values"])) for o in solutions)  # a Pareto front


@pytest.mark.slow  # a fresh MLflow store: about 25 s
def test_multi_objective_with_nsgaii_its_pareto_front_on_an_mlflow_parent_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_app(["multi-objective.py", "--multirun", f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweeper.n_trials=6",
             "hydra.sweeper.mlflow.experiment_name=mo", f"hydra.sweeper.mlflow.tracking_uri={uri}"])
    solutions = OmegaConf.to_container(results(tmp_path / "sweep").solutions)
    client = MlflowClient(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("mo").experiment_id])
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep_parent"] == "multi-objective"
    assert parent.data.metrics["pareto_solutions"] == len(solutions)
    logged = OmegaConf.load(client.download_artifacts(parent.info.run_id, "optimization_results.yaml", str(tmp_path)))
    assert OmegaConf.to_container(logged.solutions) == solutions
    page = Path(client.download_artifacts(parent.info.run_id, "dashboard.html", str(tmp_path))).read_text()
    assert "Pareto-front Plot" in page and "Best Trial" in page  # Optuna's plot: every trial, the front marked
    assert all(repr(float(v)) in page for s in solutions for v in s["values"])  # the front's points are plotted


@pytest.mark.slow  # starts the app in a process of its own
def test_custom_search_space_example(tmp_path: Path) -> None:
    cmd = ["custom-search-space-objective.py", "--multirun", f"hydra.sweep.dir={tmp_path}", "hydra.job.chdir=True",
           "hydra.sweeper.n_trials=20", "hydra.sweeper.n_jobs=1", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=123",
           "max_z_difference_from_x=0.3"]
    run_app(cmd)
    best = results(tmp_path).best_params
    assert abs(best.x - best.z) <= 0.3 and 0 <= best["+w"] <= 1
    assert results(tmp_path).best_value == pytest.approx(best["+w"] ** 2 + best.x**2 + best.y**2 + best.z**2)


@pytest.mark.parametrize("max_failure_rate", [0.5, 1.0])
@pytest.mark.slow  # starts the app in a process of its own
def test_failure_rate(max_failure_rate: float, tmp_path: Path) -> None:
    cmd = ["sphere.py", "--multirun", f"hydra.sweep.dir={tmp_path}", "hydra.job.chdir=True", "hydra.sweeper.n_trials=20",
           "hydra.sweeper.n_jobs=2", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=123",
           f"hydra.sweeper.max_failure_rate={max_failure_rate}", "error=true"]
    result = run_app(cmd, check=False)
    jobs = [p for p in tmp_path.iterdir() if p.is_dir()]
    if max_failure_rate < 1.0:  # the first batch fails both jobs: the sweep stops there, with the task's traceback
        assert result.returncode == 1 and "RuntimeError: cfg.error is True" in result.stderr
        assert 'raise RuntimeError("cfg.error is True")' in result.stderr and len(jobs) == 2
    else:
        assert "RuntimeError: cfg.error is True" not in result.stderr and len(jobs) == 20
        assert "Failed experiment: cfg.error is True" in result.stdout


@pytest.mark.slow  # starts the app in a process of its own
def test_in_memory_study_nothing_beside_the_sweep_folder_and_relative_dirs(tmp_path: Path) -> None:
    # storage: null (sphere.yaml) is an in-memory study; a relative sweep dir means the launching directory's.
    run_app(["sphere.py", "-m", "hydra.sweep.dir=rel/sweep", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2"], cwd=tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.iterdir()] == ["rel"]
    sweep = tmp_path / "rel" / "sweep"
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "2", "multirun.yaml", "optimization_results.yaml"]
    assert (sweep / "2" / ".hydra" / "overrides.yaml").is_file()
    assert not any(p.name in ("optuna.db", "ray_results") for p in APPS.iterdir())


@pytest.mark.slow  # starts the app in a process of its own
def test_a_persisted_study_continues_with_n_trials_more(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    for sweep in ("first", "second"):
        run_app(["sphere.py", "-m", f"hydra.sweep.dir={tmp_path / sweep}", f"hydra.sweeper.storage={storage}",
                 "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1"])
    trials = optuna.load_study(study_name="sphere", storage=storage).trials
    assert [t.number for t in trials] == list(range(6)) and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert results(tmp_path / "second").best_value == min(t.value for t in trials)  # the study's best, old trials included


@pytest.mark.slow  # starts the app in a process of its own
def test_motpe_fails_with_upstreams_message(tmp_path: Path) -> None:
    result = run_app(["multi-objective.py", "-m", "hydra/sweeper/sampler=motpe", f"hydra.sweep.dir={tmp_path}"], check=False)
    assert result.returncode == 1
    assert "The 'motpe' sampler was removed in Optuna 4.0. Use 'hydra/sweeper/sampler=tpe' instead." in result.stderr


UPSTREAM_SAMPLER_KEYS: dict[str, tuple[type, dict[str, Any]]] = {
    "tpe": (optuna.samplers.TPESampler, {"seed": None, "consider_prior": None, "prior_weight": None, "consider_magic_clip": None,
                                         "consider_endpoints": None, "n_startup_trials": 10, "n_ei_candidates": 24,
                                         "multivariate": False, "warn_independent_sampling": None}),
    "random": (optuna.samplers.RandomSampler, {"seed": None}),
    "cmaes": (optuna.samplers.CmaEsSampler, {"seed": None, "x0": None, "sigma0": None, "independent_sampler": None,
                                             "warn_independent_sampling": True, "consider_pruned_trials": False,
                                             "restart_strategy": None, "inc_popsize": -1, "use_separable_cma": False,
                                             "source_trials": None}),
    "nsgaii": (optuna.samplers.NSGAIISampler, {"seed": None, "population_size": 50, "mutation_prob": None, "crossover_prob": 0.9,
                                               "swapping_prob": 0.5, "constraints_func": None}),
    "gp": (optuna.samplers.GPSampler, {"seed": None, "independent_sampler": None, "n_startup_trials": 10,
                                       "deterministic_objective": False, "constraints_func": None, "warn_independent_sampling": True}),
    "qmc": (optuna.samplers.QMCSampler, {"seed": None, "qmc_type": "sobol", "scramble": False, "independent_sampler": None,
                                         "warn_asynchronous_seeding": True, "warn_independent_sampling": True}),
}


@pytest.mark.parametrize("name", sorted(UPSTREAM_SAMPLER_KEYS))
def test_samplers_have_upstreams_keys_and_defaults(name: str) -> None:
    cls, keys = UPSTREAM_SAMPLER_KEYS[name]
    with initialize_config_module(config_module="hydra.test_utils.configs", version_base=None):
        config = compose("compose", overrides=["hydra/sweeper=optuna", f"hydra/sweeper/sampler={name}"], return_hydra_config=True)
    node = config.hydra.sweeper.sampler
    assert node._target_ == f"optuna.samplers.{cls.__name__}"
    assert {k: v for k, v in OmegaConf.to_container(node).items() if k != "_target_"} == keys
    assert isinstance(instantiate(node, seed=1), cls)


@pytest.mark.slow  # sweeps on Ray, in this process
def test_sweep_returns_none(hydra_sweep_runner: TSweepRunner) -> None:
    sweep = hydra_sweep_runner(calling_file=None, calling_module="hydra.test_utils.a_module", config_path="configs",
                               config_name="compose.yaml", task_function=None,
                               overrides=["hydra/sweeper=optuna", "hydra/launcher=basic", "hydra.sweeper.n_trials=8",
                                          "hydra.sweeper.n_jobs=3"])
    with sweep:
        assert sweep.returns is None


@pytest.mark.parametrize(("arguments", "expected"), [  # upstream's own cases: tests/test_optuna_upstream_helpers.py
    (["key=range(0.5, 5.5, step=1)", "~z"], ({"key": optuna.distributions.FloatDistribution(0.5, 5.5, step=1)}, {}, ["~z"])),
    (["key=tag(log, int(interval(1, 5)))", "x=1", "~y=2"],
     ({"key": optuna.distributions.IntDistribution(1, 5, log=True)}, {"x": "1"}, ["~y=2"])),
])
def test_upstreams_module_paths_and_helpers(arguments: list[str], expected: tuple) -> None:
    assert _impl.create_params_from_overrides(arguments) == expected
    assert OptunaSweeper.__name__ in [x.__name__ for x in Plugins.instance().discover(Sweeper)]
    sweeper = _impl.OptunaSweeperImpl(sampler=optuna.samplers.RandomSampler(), direction=Direction.minimize, storage=None,
                                      study_name="test", n_trials=1, n_jobs=1, max_failure_rate=0.0, custom_search_space=None,
                                      search_space=OmegaConf.create({}), params=None)
    with pytest.warns(UserWarning, match="`hydra.sweeper.search_space` is deprecated"):
        sweeper._process_searchspace_config()


@pytest.mark.slow  # starts the app in a process of its own
def test_cmaes_searches_the_sphere(tmp_path: Path) -> None:
    out = run_app(["sphere.py", "--multirun", f"hydra.sweep.dir={tmp_path}", "hydra/sweeper/sampler=cmaes",
                   "hydra.sweeper.sampler.seed=1", "hydra.sweeper.n_trials=12", "hydra.sweeper.n_jobs=1", "x=interval(-2, 2)",
                   "y=interval(-2, 2)", "~z"])
    returns = results(tmp_path)
    assert "Sampler: CmaEsSampler" in out.stdout + out.stderr
    assert returns.best_value == pytest.approx(returns.best_params.x ** 2 + returns.best_params.y ** 2)
    assert returns.best_value < 0.1  # seeded: 0.018 after 12 trials, where a uniform point of the box averages 2.7
