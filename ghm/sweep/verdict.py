"""The sweep's verdict where MLflow's UI shows it: the parent run's description and the Model Registry.

At the end of a sweep (:func:`publish_verdict`, after :func:`ghm.sweep.report.report`) the parent
run's description (MLflow's ``mlflow.note.content``, shown as Markdown on the run's page) becomes
the comparison table with its regime line. With ``hydra.sweeper.registry.enabled=true`` the
detectors behind the verdict are registered under ``hydra.sweeper.registry.name``: the best
setting's and the baseline's (each its best seed's logged model), each version tagged with the
sweep, the setting, the paired difference and its intervals and the regime; the alias
``champion`` goes to the better of the two (the setting when its mean paired difference favours
it, else the baseline) and ``challenger`` to the other. A version is made once per run: running
it again (a resumed sweep, the command below) updates the tags and aliases.

A finished sweep's verdict can be registered afterwards from its record (``sweep.json``)::

    python -m ghm.sweep.verdict --experiment ghm_vs_focal --name ghm-detector
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from dataclasses import dataclass

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from ghm.comparison.record import FINISHED, REUSED, SweepRecord, TrialRecord
from ghm.comparison.regime import Regime
from ghm.comparison.settings import context_of, setting_of
from ghm.comparison.statistics import PairedComparison
from ghm.sweep.config import RegistrySettings
from ghm.sweep.parent_run import ParentRun
from ghm.sweep.report import baseline_regimes

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"


def publish_verdict(record: SweepRecord, parent: ParentRun | None, registry: RegistrySettings) -> list[ModelVersion]:
    """The parent run's description, and the registered versions when the registry is on (returned)."""
    if parent is None:
        return []
    regimes = baseline_regimes(record, parent)
    versions = register(parent.client, record, registry.name, regimes) if registry.enabled else []
    parent.client.set_tag(parent.run_id, MLFLOW_RUN_NOTE, description(record, regimes, registry.name, versions))
    return versions


def description(record: SweepRecord, regimes: dict[str, Regime], name: str, versions: list[ModelVersion]) -> str:
    """The comparison table in Markdown, best first, with the regime and the registered versions."""
    counts = ", ".join(f"{sum(t.state == s for t in record.trials)} {s}" for s in dict.fromkeys(t.state for t in record.trials))
    against = f", paired by `{record.pairing.pair_by}` against the baseline `{record.pairing.baseline}`" if record.pairing.baseline else ""
    lines = [f"**Sweep `{record.name}`** ({record.search}, {len(record.trials)} trials: {counts}); {record.direction} "
             f"`{record.metric}`{against}.", ""]
    if record.comparisons:
        lines += [f"| setting | seeds | {record.metric} | baseline | paired difference | t interval | 95% bootstrap interval | "
                  "P(better) | MDE (80% power) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for c in sorted(record.comparisons, key=lambda c: c.mean, reverse=record.direction == "maximize"):
            lines.append(f"| `{c.setting}` | {c.n} | {c.candidate_mean:.4f} | {c.baseline_mean:.4f} | **{c.mean:+.4f}** | "
                         f"{_interval(c.t_low, c.t_high)} ({c.confidence:.3g}) | {_interval(c.boot_low, c.boot_high)} | "
                         f"{c.p_improve:.2f} [{c.p_improve_low:.2f}, {c.p_improve_high:.2f}] | {c.mde:.4f} |")
    else:
        lines.append("No setting could be paired with the baseline.")
    for where, regime in regimes.items():
        lines += ["", *(f"*{line}*" + (f" ({where})" if where else "") for line in regime.line().splitlines())]
    lines += ["", *(f"*{note}*" for note in record.notes)]
    if versions:
        lines += ["", f"Registered model `{name}`: " + "; ".join(
            f"version {v.version} ({v.tags.get('role')}: `{v.tags.get('setting')}`{', alias ' + v.aliases[0] if v.aliases else ''})"
            for v in versions) + "."]
    return "\n".join(lines)


@dataclass(frozen=True)
class Entrant:
    """A detector the verdict registers: its trial, its role, and the comparison it stands for."""

    role: str  # best_setting | baseline
    setting: str
    trial: TrialRecord
    comparison: PairedComparison | None


def entrants(record: SweepRecord) -> list[Entrant]:
    """The best setting's best seed and the baseline's best seed (by the sweep's objective); the best trial without a baseline."""
    sign = 1 if record.direction == "maximize" else -1
    done = [t for t in record.trials
            if t.state in (FINISHED, REUSED) and t.objective is not None and t.mlflow_run_id and t.search_trial is None]
    context = context_of(done, record.pairing)

    def best_of(trials: list[TrialRecord]) -> TrialRecord | None:
        return max(trials, key=lambda t: sign * t.objective) if trials else None

    if not record.comparisons:
        best = best_of([t for t in done if not t.baseline])
        return [Entrant("best_setting", setting_of(best, record.pairing), best, None)] if best else []
    comparison = max(record.comparisons, key=lambda c: sign * c.mean)
    setting = best_of([t for t in done if not t.baseline and setting_of(t, record.pairing) == comparison.setting])
    baseline = best_of([t for t in done if t.baseline and (setting is None or context(t) == context(setting))])
    return [Entrant(role, label, trial, comparison) for role, label, trial in
            (("best_setting", comparison.setting, setting), ("baseline", record.pairing.baseline, baseline)) if trial]


def register(client: MlflowClient, record: SweepRecord, name: str, regimes: dict[str, Regime]) -> list[ModelVersion]:
    """Register the entrants' logged models under ``name`` (once per run), tag them, and alias the better one."""
    chosen = entrants(record)
    if not chosen:
        log.warning("registry: no finished trial with an MLflow run, nothing registered under %s", name)
        return []
    try:
        client.create_registered_model(name, description="Detectors of GHM-loss sweeps against their focal-loss baseline: "
                                                         f"'{CHAMPION}' is the better of a sweep's best setting and its baseline.")
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    versions = []
    for entrant in chosen:
        version = _version(client, name, entrant, record, regimes)
        if version is not None:
            versions.append(version)
    if versions:
        ranked = sorted(versions, key=lambda v: _better_first(v, record.direction))
        for alias, version in zip((CHAMPION, CHALLENGER), ranked, strict=False):
            client.set_registered_model_alias(name, alias, version.version)
        versions = [client.get_model_version(name, v.version) for v in versions]
    for v in versions:
        log.info("registered %s version %s (%s %s)%s", name, v.version, v.tags.get("role"), v.tags.get("setting"),
                 f", alias {', '.join(v.aliases)}" if v.aliases else "")
    return versions


def _version(client: MlflowClient, name: str, entrant: Entrant, record: SweepRecord,
             regimes: dict[str, Regime]) -> ModelVersion | None:
    """The entrant's run's model as a version of ``name`` (the existing one when its run is registered already), tagged."""
    run_id = entrant.trial.mlflow_run_id
    outputs = client.get_run(run_id).outputs
    models = [m.model_id for m in outputs.model_outputs] if outputs else []
    if not models:
        log.warning("registry: run %s (%s, %s) logged no model (mlflow.log_model=false?): not registered", run_id, entrant.role,
                    entrant.setting)
        return None
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        version = existing[0]
    else:  # MLflow's own registration: the version, and its link on the logged model (tag mlflow.modelVersions)
        mlflow.set_tracking_uri(client.tracking_uri)  # which register_model (and the store resolving models:/) reads
        version = mlflow.register_model(f"models:/{models[-1]}", name)
        client.update_model_version(name, version.version, f"{entrant.role.replace('_', ' ')} of sweep {record.name}: {entrant.setting}")
    for key, value in _tags(entrant, record, regimes).items():
        client.set_model_version_tag(name, version.version, key, value)
    return client.get_model_version(name, version.version)


def _tags(entrant: Entrant, record: SweepRecord, regimes: dict[str, Regime]) -> dict[str, str]:
    tags = {"sweep": record.name, "role": entrant.role, "setting": entrant.setting, record.pairing.pair_by: str(entrant.trial.seed),
            record.metric: f"{entrant.trial.objective:.4f}"}
    c = entrant.comparison
    if c is not None:
        tags |= {"compared": f"{c.setting} - {record.pairing.baseline}", "paired_difference": f"{c.mean:+.4f}",
                 "t_interval_95": _interval(c.t_low, c.t_high), "bootstrap_interval_95": _interval(c.boot_low, c.boot_high),
                 "seeds": str(c.n)}
    where = " ".join(f"{k}={v}" for k, v in context_of(record.trials, record.pairing)(entrant.trial))
    regime = regimes.get(where) or (next(iter(regimes.values())) if len(regimes) == 1 else None)
    if regime:
        tags["regime"] = regime.summary()
    return tags


def _better_first(version: ModelVersion, direction: str) -> int:
    """The setting first when its paired difference favours it, else the baseline first."""
    difference = float(version.tags.get("paired_difference", "nan"))
    favours = difference > 0 if direction == "maximize" else difference < 0
    setting_first = math.isnan(difference) or favours
    return 0 if (version.tags.get("role") == "best_setting") == setting_first else 1


def _interval(low: float, high: float) -> str:
    return "n/a" if math.isnan(low) or math.isnan(high) else f"[{low:+.4f}, {high:+.4f}]"


def main(argv: list[str] | None = None) -> None:
    """Register a finished sweep's verdict from its record (``sweep.json`` on its parent run)."""
    from ghm.dashboard.source import DashboardError, load_sweep
    from ghm.tracking.store import default_tracking_uri, tracking_client

    parser = argparse.ArgumentParser(prog="python -m ghm.sweep.verdict", description=main.__doc__)
    parser.add_argument("--experiment", default="ghm_vs_focal", help="MLflow experiment (default: the main job's)")
    parser.add_argument("--sweep", help="the sweep's name (its parent run's sweep_parent tag); default: the latest")
    parser.add_argument("--name", default=RegistrySettings.name, help=f"the registered model (default: {RegistrySettings.name})")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else the embedded store mlflow.db here")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # reading sweep.json: no progress bar
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    client = tracking_client(args.tracking_uri or default_tracking_uri("."))
    try:
        view = load_sweep(client, args.experiment, args.sweep)
    except DashboardError as err:
        parser.exit(2, f"error: {err}\n")
    parent = ParentRun(client, args.experiment)
    parent.run_id = view.parent_run_id
    publish_verdict(view.record, parent, RegistrySettings(enabled=True, name=args.name))


if __name__ == "__main__":
    main()
