"""hydra-optuna-sweeper's documented example, as its users write it (config: sphere.yaml); ``error=true`` makes it fail."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path=".", config_name="sphere")
def sphere(cfg: DictConfig) -> float:
    x: float = cfg.x
    y: float = cfg.y
    if cfg.get("error", False):
        raise RuntimeError("cfg.error is True")
    return x**2 + y**2


if __name__ == "__main__":
    sphere()
