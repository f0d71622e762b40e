"""AudioLDM's mel VAE (AutoencoderKL with the LDM Encoder/Decoder).

State-dict keys equal the ReWaS checkpoint's ``first_stage_model.*`` names with
that prefix removed (``encoder.``, ``decoder.``, ``quant_conv.``,
``post_quant_conv.``). The latent scale factor is a top-level buffer of the
ReWaS checkpoint, so it lives in the config, not in this state dict.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from training.models.config import ModelConfig


@dataclasses.dataclass
class VAEConfig(ModelConfig):
    ch: int = 128
    ch_mult: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4])
    num_res_blocks: int = 2
    z_channels: int = 8
    double_z: bool = True
    attn_resolutions: list[int] = dataclasses.field(default_factory=list)
    # Only compared with attn_resolutions (the original's "current resolution").
    resolution: int = 256
    in_channels: int = 1
    out_ch: int = 1
    mel_bins: int = 64
    dropout: float = 0.0
    embed_dim: int = 8
    # Real value: the ReWaS checkpoint's top-level `scale_factor`.
    scale_factor: float = 1.0

    @classmethod
    def rewas_m(cls) -> "VAEConfig":
        """Released sizes (configs/audioldm_m_rewas.yaml first_stage_config)."""
        return cls()

    @classmethod
    def from_reference(cls, cfg: dict) -> "VAEConfig":
        """From a reference ``vae/config.json`` (AutoencoderKL params + measured scale_factor)."""
        params, dd = cfg["params"], cfg["params"]["ddconfig"]
        names = {f.name for f in dataclasses.fields(cls)} - {"embed_dim", "scale_factor"}
        # The original Encoder/Decoder swallow extra ddconfig keys (downsample_time,
        # hifigan_ckpt) through **ignore_kwargs; they do not change the network.
        return cls(**{k: v for k, v in dd.items() if k in names},
                   embed_dim=params["embed_dim"], scale_factor=float(cfg["scale_factor"]))


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q = self.q(h).reshape(b, c, hh * ww).transpose(1, 2)  # (b, n, c)
        k = self.k(h).reshape(b, c, hh * ww)  # (b, c, n)
        v = self.v(h).reshape(b, c, hh * ww)  # (b, c, n)
        w = torch.softmax(torch.bmm(q, k) * c ** -0.5, dim=2)  # (b, n_query, n_key)
        h = torch.bmm(v, w.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Asymmetric padding (right/bottom only), as in the original.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(blocks: list[nn.Module], attns: list[nn.Module], resample: nn.Module | None, name: str) -> nn.Module:
    """One resolution level; attribute names give the original's keys (down.i.block.j, …)."""
    m = nn.Module()
    m.block = nn.ModuleList(blocks)
    m.attn = nn.ModuleList(attns)
    if resample is not None:
        setattr(m, name, resample)
    return m


def _mid(ch: int, dropout: float) -> nn.Module:
    m = nn.Module()
    m.block_1 = ResnetBlock(ch, ch, dropout)
    m.attn_1 = AttnBlock(ch)
    m.block_2 = ResnetBlock(ch, ch, dropout)
    return m


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn) > 0:
            h = level.attn[i](h)
    return h


class Encoder(nn.Module):
    """log-mel (B, in_channels, T, F) → (B, 2·z_channels, T/4, F/4) for 3 levels."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        in_mult = [1] + list(cfg.ch_mult)
        res = cfg.resolution
        self.down = nn.ModuleList()
        for i in range(n):
            block_in, block_out = cfg.ch * in_mult[i], cfg.ch * cfg.ch_mult[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            last = i == n - 1
            self.down.append(_level(blocks, attns, None if last else Downsample(block_in), "downsample"))
            if not last:
                res //= 2
        self.mid = _mid(block_in, cfg.dropout)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, (2 if cfg.double_z else 1) * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = _run_mid(self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z_channels, T/4, F/4) → (B, out_ch, T, F); num_res_blocks + 1 blocks per level."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in, cfg.dropout)
        levels = []
        for i in reversed(range(n)):
            block_out = cfg.ch * cfg.ch_mult[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            levels.insert(0, _level(blocks, attns, Upsample(block_in) if i != 0 else None, "upsample"))
            if i != 0:
                res *= 2
        self.up = nn.ModuleList(levels)  # up[i] is level i; run from the deepest level
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VAE(nn.Module):
    """AutoencoderKL as used by ReWaS (subband 1, so no band split/merge)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        assert cfg.double_z, "the KL posterior needs mean and logvar"
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        """log-mel (B, 1, T, F) → moments (B, 2·embed_dim, T/4, F/4) = [mean, logvar]."""
        return self.quant_conv(self.encoder(x))

    @staticmethod
    def posterior(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DiagonalGaussianDistribution: (mean, std) with logvar clamped to [-30, 20]."""
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return mean, torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))

    def encode_latent(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """scale_factor · posterior sample (mean + std·noise), or · mean when noise is None."""
        mean, std = self.posterior(self.encode_moments(x))
        z = mean if noise is None else mean + std * noise
        return self.config.scale_factor * z

    def decode(self, z_scaled: torch.Tensor) -> torch.Tensor:
        """decode_first_stage: scaled latent → log-mel (B, out_ch, T, F)."""
        return self.decoder(self.post_quant_conv(z_scaled / self.config.scale_factor))


class VAEEncoderGraph(nn.Module):
    """Export unit "vae_encoder": log-mel (B, 1, T, F) → moments. Shares the VAE's parameters."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(log_mel))


class VAEDecoderGraph(nn.Module):
    """Export unit "vae_decoder": scaled latent → log-mel, scale factor baked in as a constant."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder
        self.scale_factor = float(vae.config.scale_factor)

    def forward(self, z_scaled: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z_scaled / self.scale_factor))
