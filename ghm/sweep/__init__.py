"""The sweep engine behind the Hydra sweeper: trials on Ray Tune, grid or Optuna search, baselines and paired comparison."""
