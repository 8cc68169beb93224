"""The sweep engine behind the Hydra sweeper: one sweep from its definition to its report.

A sweep parses its overrides into a search space (:mod:`ghm.sweep.space`), chooses a search (a
grid or Optuna, :mod:`ghm.sweep.search`), takes baselines that already ran from MLflow
(:mod:`ghm.sweep.baselines`), runs the other trials on Ray Tune as Hydra jobs of the task
(:mod:`ghm.sweep.trials`), compares each setting with the declared baseline seed by seed
(:mod:`ghm.comparison`), optionally confirms the best setting on fresh seeds, and reports on the
console, on its MLflow parent run and in its dashboard (:mod:`ghm.sweep.report`).

A tuned comparison (``hydra.sweeper.arms``) instead searches every arm's nuisance settings with the
same sampler and budget, each search trial on every tuning seed (:class:`~ghm.sweep.search.ArmSearch`),
then confirms each arm's best on fresh seeds and compares best against best, paired by seed. Either
confirmation may add seeds in planned looks (``hydra.sweeper.sequential``, :mod:`ghm.comparison.power`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.singleton import Singleton
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from ghm.comparison.pairing import Pairing
from ghm.comparison.record import SweepRecord, TrialRecord
from ghm.comparison.settings import best_params, compare_settings, confirmation_points, fresh_seed
from ghm.sweep.config import ArmConf, SweeperConf
from ghm.sweep.identity import SweepIdentity
from ghm.sweep.report import check_failures, provenance, report
from ghm.sweep.search import ArmSearch, GridSearch, OptunaSearch, Role, Search, optuna_storage
from ghm.sweep.space import SearchSpace, condition_space, parse_search_space
from ghm.sweep.trials import TaskJob, TrialSpec, failure_value, ray_session, run_trials

if TYPE_CHECKING:  # MLflow's import costs a sweep's start seconds: only a sweep that tracks its runs pays for it
    from ghm.sweep.parent_run import ParentRun

log = logging.getLogger(__name__)


def search_kind(settings: SweeperConf, space: SearchSpace) -> str:
    """``tuned`` with arms (``arms`` when none is searched: ``tuning.budget: 0``); else ``grid`` or ``optuna``: with
    ``search: auto``, hydra-optuna-sweeper's ``params`` mean a search, command-line lists a grid."""
    if settings.arms:
        return "tuned" if settings.tuning.budget > 0 else "arms"
    if settings.search != "auto":
        return settings.search
    searched = parse_search_space([], settings.params).sweeps if settings.params else ()
    return "optuna" if searched or not space.has_grid else "grid"


def state_dir(root_dir: Path) -> Path:
    """Where sweeps launched from ``root_dir`` keep what resumes them by default (Ray Tune's experiments, the study).

    The user's cache (``$XDG_CACHE_HOME``, else ``~/.cache``), one folder per launching directory:
    never the project's own folder, and stable across launches, unlike the timestamped sweep folders.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ghm-sweep" / hashlib.sha1(str(root_dir.resolve()).encode()).hexdigest()[:12]


def sweep_definition(settings: SweeperConf, space: SearchSpace, kind: str) -> dict[str, Any]:
    """What makes two sweeps the same question: their space, fixed overrides, search and comparison settings."""
    definition = {"fixed": sorted(space.fixed), "sweeps": [o.input_line for o in space.sweeps], "mode": kind,
                  "n_trials": settings.n_trials, "baseline": settings.baseline, "confirm_seeds": settings.confirm_seeds,
                  "metric": settings.metric, "direction": settings.direction, "sampler": str(settings.sampler),
                  "pruning": [settings.pruner.enabled, settings.pruner.grace_period, settings.pruner.reduction_factor]}
    if settings.sequential.enabled:
        definition["sequential"] = str(settings.sequential)
    if kind in ("tuned", "arms"):
        definition.update(arms={name: [arm.overrides, arm.params] for name, arm in settings.arms.items()},
                          conditions=dict(settings.conditions),
                          tuning=[settings.tuning.budget, list(settings.tuning.seeds)])
    return definition


def sweep_name(settings: SweeperConf, space: SearchSpace, kind: str) -> str:
    """A stable name for this sweep's definition, so the same command finds (and resumes) it."""
    if settings.study_name:
        return settings.study_name
    definition = sweep_definition(settings, space, kind)
    return "sweep-" + hashlib.sha1(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class Sweep:
    """One sweep of a Hydra task; :meth:`run` runs it and returns its record."""

    settings: SweeperConf
    hydra_context: HydraContext
    task_function: TaskFunction
    config: DictConfig

    def __post_init__(self) -> None:
        self.settings.check()
        self.root_dir = Path(self.config.hydra.runtime.cwd)  # the launching working directory: relative paths are under it
        self.mode = "max" if self.settings.direction == "maximize" else "min"
        declared = Pairing.declare(self.settings.baseline, self.settings.pair_by, self.settings.pair_ignore)
        self.pairing = declared if declared.applies_to(self.config) else Pairing(pair_by=declared.pair_by, ignore=declared.ignore)

    def run(self, arguments: list[str]) -> SweepRecord:
        space = parse_search_space(arguments, self.settings.params)
        kind = search_kind(self.settings, space)
        sweep_dir = (self.root_dir / str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        parent = self._parent_run()
        storage = self.study_storage() if kind in ("optuna", "tuned") else None  # a comparison of fixed arms searches nothing
        identity = SweepIdentity.resolve(sweep_name(self.settings, space, kind),
                                         {**sweep_definition(self.settings, space, kind), "storage": storage},
                                         self.tune_storage(), explicit=bool(self.settings.study_name), resume=self.settings.resume,
                                         taken=lambda candidate: self._taken(candidate, storage, parent))
        name = identity.name
        if storage is not None:
            log.info("study %s in %s (optuna-dashboard %s shows it live)", name, storage, storage)
        if parent:
            parent.start(name, kind, self._definition(space, kind, name), identity.resuming)
        try:
            with ray_session(self.settings.ray):
                run = self._arms if kind in ("tuned", "arms") else self._searched
                trials, comparisons, tuning, notes, searched = run(space, kind, name, parent, storage, sweep_dir, identity.resuming)
            SweepIdentity.finish(self.tune_storage(), name)
            if parent:
                parent.attach_runs(trials)
            record = SweepRecord(name=name, search=kind, metric=self.settings.metric, direction=self.settings.direction,
                                 pairing=self.pairing, trials=trials, comparisons=comparisons, space=searched, tuning=tuning,
                                 notes=notes)
            report(record, parent, sweep_dir)
            if parent:  # the parent run's description, the Model Registry
                from ghm.sweep.verdict import publish_verdict

                publish_verdict(record, parent, self.settings.registry)
        except BaseException as err:
            if parent:
                parent.fail(err)
            raise
        check_failures(record, self.settings.max_failure_rate)
        return record

    def _searched(self, space: SearchSpace, kind: str, name: str, parent: ParentRun | None, storage: str | None, sweep_dir: Path,
                  resume: bool) -> tuple[list[TrialRecord], list, list, list[str], dict[str, Any]]:
        """A grid or a search of candidates against the baseline, the best then confirmed on fresh seeds when asked.

        Returns the trials, the comparisons, no tuning, the notes on how the settings were chosen, and the searched space.
        """
        search = self._search(space, kind, name, parent, storage)
        trials = self._run(name, search, space.fixed, parent, sweep_dir, resume)
        comparisons = self._compare(trials)
        notes = [note for note in (provenance(kind, self.settings, self.pairing),) if note]
        if self.settings.confirm_seeds > 0:
            confirmed, confirmations, looks = self._confirm(trials, comparisons, space.fixed, name, parent, sweep_dir, resume)
            trials, comparisons, notes = trials + confirmed, comparisons + confirmations, notes + looks
        return trials, comparisons, [], notes, search.space()

    def _parent_run(self) -> ParentRun | None:
        """The sweep's MLflow parent run, when the task declares an experiment (``hydra.sweeper.mlflow``)."""
        if self.settings.mlflow.experiment_name is None:
            return None
        from ghm.sweep.parent_run import ParentRun

        return ParentRun.of(self.settings.mlflow, self.root_dir)

    def _compare(self, trials: list[TrialRecord], confidence: float = 0.95) -> list:
        """Each setting of ``trials`` against the baseline, with the sweep's direction and difference of interest."""
        return compare_settings(trials, self.pairing, self.settings.direction, self.settings.effect_of_interest, confidence)

    def _search(self, space: SearchSpace, kind: str, name: str, parent: ParentRun | None, storage: str | None) -> Search:
        if storage is not None:
            return OptunaSearch(space, self.settings.sampler, storage, name, self.settings.n_trials)
        return self._grid(dict(enumerate(space.grid())), space.fixed, parent)

    def study_storage(self) -> str:
        """The Optuna storage: ``hydra.sweeper.storage``, else ``OPTUNA_STORAGE``, else a SQLite file in :func:`state_dir`."""
        if self.settings.storage or os.environ.get("OPTUNA_STORAGE"):
            return self.settings.storage or os.environ["OPTUNA_STORAGE"]
        path = state_dir(self.root_dir) / "optuna.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"

    def tune_storage(self) -> Path:
        """Ray Tune's experiments: ``hydra.sweeper.ray.storage_path`` (relative: to the launching directory), else :func:`state_dir`."""
        chosen = self.settings.ray.storage_path
        return (self.root_dir / chosen if chosen else state_dir(self.root_dir) / "ray_results").resolve()

    @staticmethod
    def _taken(name: str, storage: str | None, parent: ParentRun | None) -> bool:
        """Whether a sweep that left no Ray Tune folder here already used ``name`` (its study, its parent run)."""
        if storage is not None:
            import optuna

            if name in {s.study_name for s in optuna.study.get_all_study_summaries(optuna_storage(storage), include_best_trial=False)}:
                return True
        return parent is not None and parent.exists(name)

    def trial_environment(self, search: Search, parent: ParentRun | None) -> dict[str, str]:
        """What every trial must share with the driver wherever Ray runs it: where runs are tracked and the study lives."""
        from ghm.tracking.store import default_tracking_uri

        environment = {"MLFLOW_TRACKING_URI": parent.tracking_uri if parent else default_tracking_uri(self.root_dir)}
        if isinstance(search, OptunaSearch):  # an arm's search too
            environment["OPTUNA_STORAGE"] = search.storage
        return environment

    def _grid(self, points: dict[int, dict[str, Any]], fixed: tuple[str, ...], parent: ParentRun | None,
              roles: dict[int, Role] | None = None) -> GridSearch:
        """A grid whose baseline points that already ran are reused, the others to run (``roles``: a comparison of arms')."""
        from ghm.sweep.baselines import reuse_finished

        reused = reuse_finished(points, fixed, self.pairing, parent, self._compose, self.settings.metric,
                                lambda params: self.pairing.value_of(params, fixed, self.config),
                                baselines_only=self.settings.reuse == "baselines") \
            if parent and (self.pairing.baseline or self.settings.reuse == "finished") else []
        return GridSearch(points, reused, roles)

    def _compose(self, overrides: list[str]) -> DictConfig:
        return self.hydra_context.config_loader.load_sweep_config(self.config, overrides)

    def _run(self, experiment: str, search: Search, fixed: tuple[str, ...], parent: ParentRun | None,
             sweep_dir: Path, resume: bool) -> list[TrialRecord]:
        """The search's trials (those reused from MLflow, and those run on Ray Tune now), by number."""
        if not search.runs_any():
            return search.given()
        storage = self.tune_storage()
        job = TaskJob(self.hydra_context, self.task_function, self.config, Singleton.get_state(), fixed, str(sweep_dir),
                      self.trial_environment(search, parent))
        spec = TrialSpec(job, search,
                         self.settings.metric, failure_value(self.mode), str(storage / experiment / "completed"), experiment,
                         parent.run_id if parent else None)
        results = run_trials(experiment, spec, mode=self.mode, n_jobs=self.settings.n_jobs, ray=self.settings.ray,
                             pruner=self.settings.pruner, max_epochs=self.settings.max_epochs, storage=storage,
                             resume=resume)
        results += search.settle({r.number for r in results}, Path(spec.completed_dir))
        roles = {r.number: search.role(r.number) for r in results}
        ran = [TrialRecord(number=r.number, params=r.params, state=r.state, objective=r.objective,
                           seed=self.pairing.value_of(r.params, fixed, self.config), baseline=self.pairing.is_baseline(r.params, fixed),
                           error=r.error, arm=roles[r.number].arm, search_trial=roles[r.number].search_trial,
                           condition=dict(roles[r.number].condition))
               for r in results]
        return sorted(search.given() + ran, key=lambda t: t.number)

    def _confirm(self, trials: list[TrialRecord], comparisons: list, fixed: tuple[str, ...], name: str,
                 parent: ParentRun | None, sweep_dir: Path, resume: bool) -> tuple[list[TrialRecord], list, list[str]]:
        """The best setting and the baseline on ``confirm_seeds`` fresh seeds, paired: one noisy trial is no evidence."""
        params = best_params(trials, comparisons, self.pairing, self.settings.direction)
        if params is None:
            log.warning("no finished trial to confirm")
            return [], [], []
        log.info("confirming %s against the baseline on fresh seeds", self.pairing.setting_label(params))
        return self._looks(lambda seeds: [(point, Role()) for point in confirmation_points(params, self.pairing, seeds)],
                           fresh_seed(trials), max(t.number for t in trials) + 1, fixed, name, parent, sweep_dir, resume)

    def _looks(self, points: Callable[[list[int]], list[tuple[dict[str, Any], Role]]], first_seed: int, first_number: int,
               fixed: tuple[str, ...], name: str, parent: ParentRun | None, sweep_dir: Path,
               resume: bool) -> tuple[list[TrialRecord], list, list[str]]:
        """Confirmation: ``points(seeds)`` (each with its role in a comparison of arms) on ``confirm_seeds`` fresh seeds, then,
        with ``sequential``, more in planned looks until every interval (at the look's corrected level) excludes 0 or the
        planned maximum is reached.

        Returns the confirmation's trials, its comparisons and, for a sequential one, the note stating its rule and outcome.
        """
        from ghm.comparison.power import SequentialPlan, sequential_decision

        sequential = self.settings.sequential
        count = self.settings.confirm_seeds
        plan = SequentialPlan.batches(count, sequential.batch, sequential.max_seeds, sequential.boundary, sequential.alpha) \
            if sequential.enabled else None
        fixed = tuple(line for line in fixed if not line.startswith(f"{self.pairing.pair_by}="))
        confirmed: list[TrialRecord] = []
        done = 0
        for look, seeds in enumerate(plan.seeds if plan else (count,), start=1):
            number = max([first_number - 1, *(t.number for t in confirmed)]) + 1
            numbered = dict(enumerate(points(list(range(first_seed + done, first_seed + seeds))), start=number))
            grid = self._grid({n: point for n, (point, _) in numbered.items()}, fixed, parent,
                              {n: role for n, (_, role) in numbered.items()})
            confirmed += self._run(f"{name}-confirm" if look == 1 else f"{name}-confirm-look{look}", grid, fixed, parent, sweep_dir,
                                   resume)
            done = seeds
            if plan is None:
                return confirmed, self._compare(confirmed), []
            level = plan.level_at(seeds)
            comparisons = self._compare(confirmed, confidence=1 - level)
            stops = bool(comparisons) and all(c.n == seeds and sequential_decision(c.differences, plan)[0] for c in comparisons)
            if stops or look == len(plan.seeds):
                note = (f"Sequential confirmation: {plan.describe()}; stopped at look {look} of {len(plan.seeds)} ({seeds} seeds): "
                        f"{'every interval excludes 0' if stops else 'the planned maximum was reached'}; the intervals are at "
                        f"that look's level ({1 - level:.4g})")
                log.info(note)
                return confirmed, comparisons, [note]
            log.info("look %d of %d (%d seeds): an interval still includes 0 at level %.4g: %d more seeds", look, len(plan.seeds),
                     seeds, level, plan.seeds[look] - seeds)
        raise AssertionError("unreachable: the last look returns")

    def _arms(self, space: SearchSpace, kind: str, name: str, parent: ParentRun | None, storage: str | None, sweep_dir: Path,
              resume: bool) -> tuple[list[TrialRecord], list, list, list[str], dict[str, Any]]:
        """A comparison of arms: in each condition (a combination of the command line's listed values, crossed with the
        arms), each arm searched with the same sampler and budget on the tuning seeds (none with ``tuning.budget: 0``:
        each arm at its own given settings), then its best confirmed on fresh seeds, best against best by seed.

        Returns the trials (the searches' and the confirmation's), the comparisons, each arm's tuning per condition, the
        notes saying how the verdict was reached, and the searched space (none for the record's own: each arm's is in
        its tuning).
        """
        from ghm.comparison.tuning import confirmation_seeds, summarize_arm

        budget, seeds = self.settings.tuning.budget, list(self.settings.tuning.seeds)
        # hydra.sweeper.params (and intervals on the command line) are searched; lists on the command line and
        # hydra.sweeper.conditions are conditions, each its own comparison of the arms
        is_searched = [o.is_interval_sweep() or o.get_key_element() in self.settings.params for o in space.sweeps]
        searched = SearchSpace(fixed=(), sweeps=tuple(o for o, s in zip(space.sweeps, is_searched, strict=True) if s))
        listed = SearchSpace(fixed=(), sweeps=tuple(o for o, s in zip(space.sweeps, is_searched, strict=True) if not s)
                             + condition_space(dict(self.settings.conditions)).sweeps)
        if any(o.is_interval_sweep() for o in listed.sweeps):
            raise ValueError("hydra.sweeper.conditions must list values (key: 'a,b'), not intervals: intervals are searched (params)")
        conditions = listed.grid() if listed.sweeps else [{}]
        arms = {arm_name: self._arm(arm_name, arm, searched, listed) for arm_name, arm in self.settings.arms.items()}
        stride = 2 * budget * len(seeds)  # each search's job numbers, with room for search trials an interrupted sweep asked for
        trials: list[TrialRecord] = []
        tuning = []
        bests: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (arm, its overrides and best values, condition)
        for c, condition in enumerate(conditions):
            for a, (arm_name, (overrides, arm_space)) in enumerate(arms.items()):
                if budget == 0 or not arm_space.sweeps:
                    bests.append((arm_name, overrides, condition))
                    continue
                search_name = f"{name}-{arm_name}" + (f"-{c}" if len(conditions) > 1 else "")
                search = ArmSearch(arm_name, overrides, arm_space, self.settings.sampler, storage or "", search_name, budget, seeds,
                                   self.pairing.pair_by, (c * len(arms) + a) * stride, self.settings.metric, condition)
                log.info("tuning arm %s (%s)%s: %d search trials x %d seeds over %s", arm_name,
                         " ".join(self.settings.arms[arm_name].overrides), "".join(f" {k}={v}" for k, v in condition.items()),
                         budget, len(seeds), ", ".join(arm_space.keys))
                ran = self._run(search_name, search, space.fixed, parent, sweep_dir, resume)
                trials += ran
                arm = summarize_arm(arm_name, self.settings.arms[arm_name].overrides, budget, seeds, search.space(), ran,
                                    self.settings.direction, condition)
                tuning.append(arm)
                if arm.best is None:
                    log.warning("no search trial of %s finished on every tuning seed: nothing of it to confirm", arm.label)
                else:
                    bests.append((arm_name, {**overrides, **arm.best}, condition))

        def points(fresh: list[int]) -> list[tuple[dict[str, Any], Role]]:
            return [({**best, **condition, self.pairing.pair_by: seed}, Role(arm_name, None, tuple(condition.items())))
                    for arm_name, best, condition in bests for seed in fresh]

        first = confirmation_seeds(seeds, 1)[0] if budget else 0
        confirmed, comparisons, looks = self._looks(points, first, len(conditions) * len(arms) * stride, space.fixed, name, parent,
                                                    sweep_dir, resume)
        notes = [note for note in (provenance(kind, self.settings, self.pairing), *looks) if note]
        return trials + confirmed, comparisons, tuning, notes, {}

    def _arm(self, name: str, arm: ArmConf, searched: SearchSpace, listed: SearchSpace) -> tuple[dict[str, Any], SearchSpace]:
        """An arm's overrides as values (``{"loss": "ghm"}``) and its search space: the shared one and its own."""
        overrides = {}
        for override in OverridesParser.create().parse_overrides(list(arm.overrides)):
            if override.is_sweep_override() or override.is_add() or override.is_delete():
                raise ValueError(f"hydra.sweeper.arms.{name}.overrides must be plain key=value overrides, got {override.input_line!r}")
            overrides[override.get_key_element()] = override.get_value_element_as_str()
        own = parse_search_space([], dict(arm.params)).sweeps
        arm_space = SearchSpace(fixed=(), sweeps=(*searched.sweeps, *own))
        keys = [*overrides, *arm_space.keys, *listed.keys]
        clash = sorted({k for k in keys if keys.count(k) > 1})
        if clash:
            raise ValueError(f"hydra.sweeper.arms.{name}: {clash} given twice (an arm's overrides, its params, the shared search "
                             "space and the conditions must not share a key)")
        return overrides, arm_space

    def _definition(self, space: SearchSpace, kind: str, name: str) -> dict[str, Any]:
        """The parent run's params: how the sweep searches, and over what."""
        arms: dict[str, Any] = {}
        for arm_name, arm in self.settings.arms.items():
            arms[f"arm.{arm_name}"] = " ".join(arm.overrides)
            arms.update({f"arm.{arm_name}.space.{key}": value for key, value in arm.params.items()})
        if arms:
            arms.update({"tuning.budget": self.settings.tuning.budget, "tuning.seeds": list(self.settings.tuning.seeds),
                         "confirm_seeds": self.settings.confirm_seeds})
        return {"search": kind, "metric": self.settings.metric, "direction": self.settings.direction, "n_trials": self.settings.n_trials,
                "n_jobs": self.settings.n_jobs, "baseline": self.settings.baseline, "study_name": name, **arms,
                **{f"space.{o.get_key_element()}": o.input_line.split("=", 1)[1] for o in space.sweeps},
                **{f"fixed.{line.split('=', 1)[0].lstrip('+~')}": line.split("=", 1)[1] for line in space.fixed}}
