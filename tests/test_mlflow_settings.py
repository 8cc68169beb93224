"""The MLflow settings of a run (``mlflow.*``) and of a sweep (``hydra.sweeper.registry``): typed, checked before work."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from ghm.config import ConfigError, validate
from ghm.detection.checkpoint import RunIdentity
from ghm.sweep.config import RegistrySettings, SweeperConf, TrackingSettings
from tests.conftest import compose_config, compose_full


def test_the_defaults_log_the_model_and_sample_system_metrics_every_10_s() -> None:
    run = validate(compose_config([]))
    assert run.mlflow.log_model and run.mlflow.system_metrics and run.mlflow.system_metrics_interval == 10.0
    sweeper = compose_full([]).hydra.sweeper
    assert sweeper.registry.enabled is False and sweeper.registry.name == "ghm-detector"


@pytest.mark.parametrize("interval", ["0", "-1.5"])
def test_a_sampling_interval_must_be_positive(interval: str) -> None:
    with pytest.raises(ConfigError, match=r"mlflow.system_metrics_interval must be > 0 \(seconds\)"):
        validate(compose_config([f"mlflow.system_metrics_interval={interval}"]))


@pytest.mark.parametrize("override", ["mlflow.log_model=sometimes", "mlflow.system_metrics=often",
                                      "hydra.sweeper.registry.enabled=yes-ish"])
def test_a_setting_of_the_wrong_type_fails_at_composition_naming_its_key(override: str) -> None:
    with pytest.raises((ConfigCompositionException, ValidationError), match=override.split("=")[0].split(".")[-1]):
        compose_full([override])


def test_the_registry_needs_a_name_and_the_sweeps_runs() -> None:
    with pytest.raises(ValueError, match=r"hydra\.sweeper\.registry\.name must name the registered model"):
        SweeperConf(sampler={}, registry=RegistrySettings(enabled=True, name=" "), mlflow=TrackingSettings(experiment_name="e")).check()
    with pytest.raises(ValueError, match=r"needs the sweep's MLflow runs: set hydra\.sweeper\.mlflow\.experiment_name"):
        SweeperConf(sampler={}, registry=RegistrySettings(enabled=True)).check()
    SweeperConf(sampler={}, registry=RegistrySettings(enabled=False, name="")).check()  # off: nothing to check


def test_what_mlflow_records_is_no_part_of_a_checkpoints_identity() -> None:
    """A run resumed with the model logging or the system metrics switched resumes its own checkpoint."""
    base = RunIdentity.of(compose_config([]), "v1")
    for overrides in (["mlflow.log_model=false"], ["mlflow.system_metrics=false", "mlflow.system_metrics_interval=2"]):
        assert RunIdentity.of(compose_config(overrides), "v1") == base
