"""Typed schemas of the Hydra config and their validation, run before any work starts.

Hydra merges every config group onto these dataclasses, so an unknown key or a wrong type fails
at composition time with the key's full name. Value ranges are checked by :func:`validate`,
which names the key and what is allowed; the loss settings are checked by building the losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ghm.digits_det import DigitsDetParams
from ghm.losses import build_loss


class ConfigError(ValueError):
    """A config value that is out of range or inconsistent, with the key and what is allowed."""


def _require(ok: bool, key: str, allowed: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, key, f"one of {', '.join(allowed)}", value)


@dataclass
class LossConfig:
    """A classification and a regression loss, by registry name plus their settings."""

    family: str = MISSING  # what the tracking and the sweeps call this pair, e.g. "ghm" or "focal"
    baseline: bool = False
    cls: dict[str, Any] = MISSING
    reg: dict[str, Any] = MISSING


@dataclass
class ModelConfig:
    name: str = "retinanet_tiny"
    width: int = 32  # retinanet_tiny: channels of the first stage
    fpn_channels: int = 64  # retinanet_tiny
    anchor_sizes: list[int] = field(default_factory=lambda: [16, 32, 64, 128])  # one base size per level
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    min_size: int = 128
    max_size: int = 128
    per_level: bool = False
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    weights: str | None = None

    def validate(self) -> None:
        _choice("model.name", self.name, ("retinanet_tiny", "retinanet_r50_fpn"))
        for key in ("width", "fpn_channels", "min_size", "max_size", "detections_per_img"):
            _require(getattr(self, key) >= 1, f"model.{key}", "an integer >= 1", getattr(self, key))
        _require(self.max_size >= self.min_size, "model.max_size", f">= model.min_size ({self.min_size})", self.max_size)
        _require(len(self.anchor_sizes) > 0 and all(s > 0 for s in self.anchor_sizes), "model.anchor_sizes",
                 "a non-empty list of positive sizes", self.anchor_sizes)
        _require(len(self.aspect_ratios) > 0 and all(r > 0 for r in self.aspect_ratios), "model.aspect_ratios",
                 "a non-empty list of positive ratios", self.aspect_ratios)
        for key in ("score_thresh", "nms_thresh"):
            _require(0.0 <= getattr(self, key) <= 1.0, f"model.{key}", "in [0, 1]", getattr(self, key))


@dataclass
class DigitsDataConfig(DigitsDetParams):
    """The built-in Digits-Det generator: its parameters (see :mod:`ghm.digits_det`) and where it is cached."""

    name: str = "digits"
    cache_dir: str = ".cache/digits_det"  # relative paths are under the project directory
    hflip: bool = False  # mirrored digits are other glyphs

    def validate(self) -> None:
        for key in ("image_size", "train_images", "val_images", "min_objects", "min_digit_size"):
            _require(getattr(self, key) >= 1, f"data.{key}", "an integer >= 1", getattr(self, key))
        _require(self.max_objects >= self.min_objects, "data.max_objects", f">= data.min_objects ({self.min_objects})",
                 self.max_objects)
        _require(self.min_digit_size <= self.max_digit_size <= self.image_size, "data.max_digit_size",
                 f"between data.min_digit_size ({self.min_digit_size}) and data.image_size ({self.image_size})",
                 self.max_digit_size)
        _require(0.0 < self.min_contrast <= 1.0, "data.min_contrast", "in (0, 1]", self.min_contrast)
        _require(0.0 <= self.occlusion_prob <= 1.0, "data.occlusion_prob", "in [0, 1]", self.occlusion_prob)
        _require(self.class_tail >= 0 and self.noise_std >= 0 and self.max_distractors >= 0, "data.class_tail/noise_std/max_distractors",
                 ">= 0", (self.class_tail, self.noise_std, self.max_distractors))


@dataclass
class CocoDataConfig:
    """Any COCO-format dataset; the defaults are COCO 2017's layout under ``root``."""

    name: str = "coco"
    root: str = MISSING
    train_annotations: str = "annotations/instances_train2017.json"
    train_images: str = "train2017"
    val_annotations: str = "annotations/instances_val2017.json"
    val_images: str = "val2017"
    hflip: bool = True

    def validate(self) -> None:
        _require(bool(self.root), "data.root", "the dataset's directory", self.root)


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 8
    lr: float = 0.01  # at lr_reference_batch images per step; scaled linearly with the real batch
    lr_reference_batch: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    schedule: str = "step"  # step | cosine
    lr_steps: list[int] = field(default_factory=lambda: [8, 11])  # epochs after which lr *= lr_gamma
    lr_gamma: float = 0.1
    clip_grad_norm: float | None = 35.0
    amp: bool = True  # on CUDA only
    nonfinite: str = "fail"  # fail | skip
    max_iters_per_epoch: int | None = None
    eval_every: int = 1
    num_workers: int = 0
    threads: int | None = None  # torch CPU threads; null: torch's default
    figures: bool = True
    resume: bool = True

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "lr_reference_batch", "eval_every"):
            _require(getattr(self, key) >= 1, f"train.{key}", "an integer >= 1", getattr(self, key))
        _require(self.lr > 0, "train.lr", "> 0", self.lr)
        _require(0.0 <= self.momentum < 1.0, "train.momentum", "in [0, 1)", self.momentum)
        _require(self.weight_decay >= 0, "train.weight_decay", ">= 0", self.weight_decay)
        _require(self.warmup_iters >= 0, "train.warmup_iters", ">= 0", self.warmup_iters)
        _require(0.0 < self.warmup_ratio <= 1.0, "train.warmup_ratio", "in (0, 1]", self.warmup_ratio)
        _choice("train.schedule", self.schedule, ("step", "cosine"))
        _require(all(1 <= s <= self.epochs for s in self.lr_steps), "train.lr_steps", f"epochs in [1, {self.epochs}]",
                 self.lr_steps)
        _require(0.0 < self.lr_gamma <= 1.0, "train.lr_gamma", "in (0, 1]", self.lr_gamma)
        _require(self.clip_grad_norm is None or self.clip_grad_norm > 0, "train.clip_grad_norm", "> 0 or null",
                 self.clip_grad_norm)
        _choice("train.nonfinite", self.nonfinite, ("fail", "skip"))
        _require(self.max_iters_per_epoch is None or self.max_iters_per_epoch >= 1, "train.max_iters_per_epoch",
                 ">= 1 or null", self.max_iters_per_epoch)
        _require(self.num_workers >= 0, "train.num_workers", ">= 0", self.num_workers)
        _require(self.threads is None or self.threads >= 1, "train.threads", ">= 1 or null", self.threads)


@dataclass
class MlflowConfig:
    tracking_uri: str | None = None  # null: MLFLOW_TRACKING_URI, else the embedded SQLite store mlflow.db in the project directory
    experiment_name: str = "ghm"
    run_name: str | None = None


@dataclass
class Config:
    loss: LossConfig = MISSING
    model: ModelConfig = MISSING
    data: Any = MISSING  # DigitsDataConfig or CocoDataConfig, by the group's choice
    train: TrainConfig = MISSING
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    checkpoint_dir: str = MISSING  # last.pt is written here each epoch and resumed from


def register() -> None:
    """Make the schemas known to Hydra (the group files name them in their defaults lists)."""
    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    store.store(group="loss", name="schema", node=LossConfig)
    store.store(group="model", name="schema", node=ModelConfig)
    store.store(group="data", name="digits_schema", node=DigitsDataConfig)
    store.store(group="data", name="coco_schema", node=CocoDataConfig)
    store.store(group="train", name="schema", node=TrainConfig)


@dataclass(frozen=True)
class RunConfig:
    """A validated run: typed sections, plus the composed config for logging."""

    loss: LossConfig
    model: ModelConfig
    data: DigitsDataConfig | CocoDataConfig
    train: TrainConfig
    mlflow: MlflowConfig
    seed: int
    device: str
    raw: DictConfig


def validate(cfg: DictConfig) -> RunConfig:
    """Check every value and build the losses once, so a bad config fails before any work."""
    sections = {key: OmegaConf.to_object(cfg[key]) for key in ("loss", "model", "data", "train", "mlflow")}
    if not isinstance(sections["data"], DigitsDataConfig | CocoDataConfig):
        raise ConfigError(f"data must be a config of the 'data' group (digits or coco), got {type(sections['data']).__name__}")
    for key in ("model", "data", "train"):
        sections[key].validate()
    _require(cfg.device == "auto" or cfg.device == "cpu" or str(cfg.device).startswith("cuda"), "device",
             "auto, cpu, cuda or cuda:N", cfg.device)
    for key, kind in (("cls", "classification"), ("reg", "regression")):
        settings = dict(getattr(sections["loss"], key))
        if "name" not in settings:
            raise ConfigError(f"loss.{key}.name is missing; it names the {kind} loss")
        try:
            build_loss(kind, settings.pop("name"), **settings)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"loss.{key}: {err}") from err
    return RunConfig(seed=cfg.seed, device=cfg.device, raw=cfg, **sections)
