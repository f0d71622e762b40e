"""AudioLDM's HiFi-GAN generator (HIFIGAN_16K_64) with weight norm removed.

State-dict keys equal the ReWaS checkpoint's ``first_stage_model.vocoder.*``
names with that prefix removed. The separate ``hifigan_16k_64bins.ckpt`` stores
the weight-norm layout (``weight_g``/``weight_v``); ``fold_weight_norm`` turns
it into this one, as the original's ``remove_weight_norm()`` does.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from rewas_rt.errors import ConfigError
from training.models.config import ModelConfig

LRELU_SLOPE = 0.1


@dataclasses.dataclass
class HiFiGANConfig(ModelConfig):
    num_mels: int = 64
    upsample_rates: list[int] = dataclasses.field(default_factory=lambda: [5, 4, 2, 2, 2])
    upsample_kernel_sizes: list[int] = dataclasses.field(default_factory=lambda: [16, 16, 8, 4, 4])
    upsample_initial_channel: int = 1024
    resblock: str = "1"
    resblock_kernel_sizes: list[int] = dataclasses.field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = dataclasses.field(
        default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]])

    @classmethod
    def rewas_m(cls) -> "HiFiGANConfig":
        """Released sizes (HIFIGAN_16K_64)."""
        return cls()

    @classmethod
    def from_reference(cls, cfg: dict) -> "HiFiGANConfig":
        """From the ``config`` entry of a reference ``hifigan/config.json`` (the original's
        HIFIGAN_16K_64 dict); its training settings (batch size, learning rate, STFT, …)
        do not shape the generator."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in names})


def _padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock(nn.Module):
    """Resblock type "1": three (dilated conv, conv) pairs, each with a residual."""

    def __init__(self, channels: int, kernel_size: int, dilations: list[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_padding(kernel_size, d))
            for d in dilations)
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=_padding(kernel_size, 1))
            for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class HiFiGAN(nn.Module):
    """mel (B, num_mels, T) → waveform (B, 1, 160·T + 32) in (−1, 1) for the 16 kHz config."""

    def __init__(self, cfg: HiFiGANConfig):
        super().__init__()
        if cfg.resblock != "1":
            raise ConfigError(f"resblock {cfg.resblock!r}: AudioLDM's generator only has type '1'")
        self.config = cfg
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        ch = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.num_mels, ch, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for u, k in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes):
            # Length u·T + (k−u) mod 2: the first stage (k 16, u 5) gives 5T+1, which the
            # later stages scale to the 160·T + 32 output samples.
            self.ups.append(nn.ConvTranspose1d(ch, ch // 2, k, stride=u, padding=(k - u) // 2))
            ch //= 2
            self.resblocks.extend(ResBlock(ch, rk, rd)
                                  for rk, rd in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
        self.conv_post = nn.Conv1d(ch, 1, 7, padding=3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels
        # The original uses leaky_relu's default slope (0.01) here, not LRELU_SLOPE.
        return torch.tanh(self.conv_post(F.leaky_relu(x)))


def strip_orig_mod(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``_orig_mod.`` fragment torch.compile leaves in keys (the original loader does too)."""
    return {k.replace("_orig_mod.", ""): v for k, v in state_dict.items()}


def fold_weight_norm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace each ``X.weight_g``/``X.weight_v`` pair by ``X.weight = g · v / ‖v‖`` (float32).

    Weight norm with dim 0: the norm runs over every dim except 0, so for a
    ConvTranspose1d weight (in, out, k) it is per *input* channel. Works on
    ``meta`` tensors (shapes only). Other keys pass through unchanged.
    """
    stems = {k[: -len("_g")] for k in state_dict if k.endswith(".weight_g")}
    unpaired = stems ^ {k[: -len("_v")] for k in state_dict if k.endswith(".weight_v")}
    if unpaired:
        raise KeyError(f"weight_g/weight_v without its partner: {sorted(unpaired)}")
    out = {}
    for key, value in state_dict.items():
        if key.endswith(".weight_g"):
            stem = key[: -len("_g")]
            g, v = value.float(), state_dict[stem + "_v"].float()
            norm = torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)
            out[stem] = v * (g / norm)  # same operation order as torch._weight_norm
        elif not key.endswith(".weight_v"):
            out[key] = value
    return out
