"""Entry point: ``python launch.py`` (one run) -- a thin Hydra app over the ``ghm`` package."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ghm.figures import batch_figures, save_figures
from ghm.losses import build_loss
from ghm.toy import train_toy


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    cls_settings = OmegaConf.to_container(cfg.loss.cls, resolve=True)
    reg_settings = OmegaConf.to_container(cfg.loss.reg, resolve=True)
    cls_loss = build_loss("classification", cls_settings.pop("name"), **cls_settings)
    reg_loss = build_loss("regression", reg_settings.pop("name"), **reg_settings)
    batch, history = train_toy(cls_loss, reg_loss, seed=cfg.seed, **cfg.toy)
    print(f"trained {len(history)} steps: loss {history[0]:.4f} -> {history[-1]:.4f}")
    figures = batch_figures(
        batch.cls_logits, batch.cls_targets, batch.cls_weights,
        batch.box_deltas, batch.box_targets, batch.box_weights,
        cls_bins=cfg.loss.cls.get("bins", 30), reg_bins=cfg.loss.reg.get("bins", 10),
        mu=cfg.loss.reg.get("mu", 0.02),
    )
    out_dir = Path(HydraConfig.get().runtime.output_dir) / cfg.figures_dir
    for name, path in save_figures(figures, out_dir).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
