"""Typed trainer configurations: one dataclass per section, defaults defined once, unknown keys refused.

A JSON config (``training/configs/<trainer>_<preset>.json`` or a user's file) and ``--set``
overrides are merged onto a trainer's defaults and then read by ``parse`` through
``rewas_rt.typed_json``: a typo (``"optim": {"lr_": 1}``), a missing section or a wrong
type (``"steps": "many"``) is a ``ConfigError`` naming the key, never a silently ignored
setting. The trainers keep working on the plain dict of the parsed config (``to_json``),
so what is written to ``<run>/config.json`` is exactly what was validated.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from rewas_rt.errors import ConfigError
from rewas_rt.typed_json import from_json, optional, to_json

SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _choice(where: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{where} {value!r}: one of {', '.join(map(str, allowed))}")


@dataclasses.dataclass
class DataConfig:
    """Training data: the manifest and the feature cache."""

    manifest: str | None = None
    cache_dir: str | None = None  # default: <manifest folder>/cache
    window_grid_s: float = 0.32
    memory_items: int = 4096


@dataclasses.dataclass
class AdapterDataConfig(DataConfig):
    """Training data of the adapter, with how the hint latent is drawn."""

    latent: str = "sample"  # "sample" (as the original) or "mean" of the VAE posterior

    def __post_init__(self):
        _choice("data.latent", self.latent, ("sample", "mean"))


@dataclasses.dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "constant"  # or "cosine" (decays to min_lr_ratio·lr at train.steps)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 disables

    def __post_init__(self):
        _choice("optim.schedule", self.schedule, SCHEDULES)
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas needs 2 values, got {len(self.betas)}")


@dataclasses.dataclass
class TrainConfig:
    """The loop: steps, batches, precision, device, logging and checkpoints."""

    steps: int = 200
    batch_size: int = 8
    grad_accum: int = 1
    precision: str = "auto"
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 = torch's default. 1 is fastest for tiny models on busy CPUs
    log_every: int = 10
    val_every: int = 100
    ckpt_every: int = 100
    keep_checkpoints: int = 2
    overfit_batch: bool = False  # reuse one fixed batch (items, windows, noise) every step
    stop_at: int = 0  # stop (with a checkpoint) after this step, as if interrupted; 0 = run to train.steps
    max_minutes: float = 0  # wall-clock budget of this process: stop (with a checkpoint) when spent; 0 = none

    def __post_init__(self):
        _choice("train.precision", self.precision, PRECISIONS)
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be at least 1, got {getattr(self, name)}")


@dataclasses.dataclass
class PhiTrainerConfig:
    """``python -m training.train_phi``: φ on cached Synchformer features."""

    model: str = "tiny"  # preset: sizes for --random-weights, and φ sizes when the checkpoints have none
    seed: int = 0  # model init, data order, noise
    random_weights_seed: int = 0  # the frozen components under --random-weights
    init: str = "random"  # or "checkpoint" (start from the folder's φ)
    phi: dict[str, Any] = dataclasses.field(default_factory=lambda: {"attention": "time"})  # PhiConfig overrides
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(lr=1e-4))
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=8))
    _comment: str | None = optional()

    def __post_init__(self):
        _choice("init", self.init, ("random", "checkpoint"))


@dataclasses.dataclass
class AdapterSection:
    """The energy adapter: its initialisation, text dropout and validation timesteps."""

    init: str = "unet"  # ControlNet-style copy of the UNet encoder, or "checkpoint"
    cfg_dropout: float = 0.3
    val_timesteps: list[int] = dataclasses.field(default_factory=lambda: [50, 250, 500, 750, 950])

    def __post_init__(self):
        _choice("adapter.init", self.init, ("unet", "checkpoint"))


@dataclasses.dataclass
class AdapterTrainerConfig:
    """``python -m training.train_adapter``: the energy adapter on a frozen UNet."""

    model: str = "tiny"
    seed: int = 0
    random_weights_seed: int = 0
    adapter: AdapterSection = dataclasses.field(default_factory=AdapterSection)
    data: AdapterDataConfig = dataclasses.field(default_factory=AdapterDataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(lr=3e-5, weight_decay=0.01))
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=4))
    _comment: str | None = optional()


def defaults(cls: type) -> dict[str, Any]:
    """The defaults of a trainer config as the plain dict the trainers use."""
    return to_json(cls())


def parse(cls: type, cfg: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """Validate a merged config dict against ``cls``; returns it normalised (ints where floats
    are expected become floats). Raises ``ConfigError`` naming every unknown/missing/mistyped key."""
    return to_json(from_json(cls, cfg, where, ConfigError))


# --- the demo model's trainers (training.demo): one section each -------------------------------


@dataclasses.dataclass
class VaeSection:
    kl_weight: float = 1e-5
    crop_frames: int = 128  # random time crops of the log-mel (a multiple of 4)
    hint_fraction: float = 0.25  # share of items that are energy-hint images
    scale_windows: int = 64  # training windows the latent scale_factor is measured on
    val_windows: int = 6


@dataclasses.dataclass
class VocoderSection:
    crop_frames: int = 32
    stft_weight: float = 1.0
    val_windows: int = 6


@dataclasses.dataclass
class ClapSection:
    audio_channels: list[int] = dataclasses.field(default_factory=lambda: [16, 32, 64, 128])


@dataclasses.dataclass
class VideoSection:
    segments: int = 4  # consecutive segments of each window per step


@dataclasses.dataclass
class UnetSection:
    cfg_dropout: float = 0.1
    crop_frames: int = 64  # latent frames (a multiple of 8)
    val_timesteps: list[int] = dataclasses.field(default_factory=lambda: [50, 250, 500, 750, 950])


def _demo_trainer(name: str, section: type, lr: float, batch: int, **optim) -> type:
    fields = [
        ("model", str, dataclasses.field(default="demo")),
        ("seed", int, dataclasses.field(default=0)),
        ("random_weights_seed", int, dataclasses.field(default=0)),
        (name, section, dataclasses.field(default_factory=section)),
        ("data", DataConfig, dataclasses.field(default_factory=DataConfig)),
        ("optim", OptimConfig, dataclasses.field(default_factory=lambda: OptimConfig(lr=lr, **optim))),
        ("train", TrainConfig, dataclasses.field(default_factory=lambda: TrainConfig(batch_size=batch))),
        ("_comment", str | None, optional()),
    ]
    return dataclasses.make_dataclass(f"{name.capitalize()}TrainerConfig", fields)


VaeTrainerConfig = _demo_trainer("vae", VaeSection, 4.5e-4, 4)
VocoderTrainerConfig = _demo_trainer("vocoder", VocoderSection, 2e-4, 8, betas=[0.8, 0.99])
ClapTrainerConfig = _demo_trainer("clap", ClapSection, 5e-4, 24)
VideoTrainerConfig = _demo_trainer("video", VideoSection, 1e-3, 2)
UnetTrainerConfig = _demo_trainer("unet", UnetSection, 2e-4, 8)
