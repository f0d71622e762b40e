"""Synchformer's visual feature extractor (MotionFormer, divided space-time attention).

State-dict keys equal ``24-01-04T16-39-21.pt``'s ``model`` entries under
``vfeat_extractor.`` with that prefix removed. ``patch_embed.proj`` (a 2-D patch
conv) is stored in the checkpoint but never used — the original only reads the
number of patches from it — and is kept so strict loading works.

Written with plain tensor ops (no einops, no Python loops over batch or
segments) so it exports to ONNX with dynamic batch and segment counts.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from rewas_rt.errors import ConfigError
from training.models.config import ModelConfig
from training.models.layers import Mlp


def normalize_uint8_lut() -> np.ndarray:
    """float32 (256,): the value each uint8 level has after the original's input transforms,
    ``x.half() / 255`` then ``(x - 0.5) / 0.5``, each op rounded to float16 as in the original."""
    x = np.arange(256, dtype=np.float16) / np.float16(255)
    return ((x - np.float16(0.5)) / np.float16(0.5)).astype(np.float32)


@dataclasses.dataclass
class SynchformerConfig(ModelConfig):
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: int = 4
    qkv_bias: bool = True
    in_chans: int = 3
    img_size: int = 224
    patch_size: int = 16
    patch_size_temp: int = 2
    # Number of temporal tokens (frames per segment / patch_size_temp).
    temporal_resolution: int = 8
    layer_norm_eps: float = 1e-6  # MotionFormer's norm_layer = LayerNorm(eps=1e-6)
    # Spatial aggregation layer (nn.TransformerEncoderLayer, pre-norm, GELU); the original
    # gives it nhead = num_heads and dim_feedforward = mlp_ratio * embed_dim.
    agg_layer_norm_eps: float = 1e-6

    @classmethod
    def rewas_m(cls) -> "SynchformerConfig":
        """Released sizes (ViT-B/16: 768 wide, 12 blocks, 12 heads)."""
        return cls()

    @classmethod
    def from_reference(cls, cfg: dict) -> "SynchformerConfig":
        """From a reference ``synchformer_video/config.json`` (MotionFormer's ``VIT`` section)."""
        vit, agg = cfg["VIT"], cfg["spatial_attn_agg"]
        if (vit["ATTN_LAYER"], cfg["VIT_patched_in_code"]["POS_EMBED"]) != ("divided", "separate"):
            raise ConfigError("only divided attention with separate position embeddings is implemented")
        c = cls(embed_dim=vit["EMBED_DIM"], depth=vit["DEPTH"], num_heads=vit["NUM_HEADS"],
                mlp_ratio=vit["MLP_RATIO"], qkv_bias=vit["QKV_BIAS"], in_chans=vit["CHANNELS"],
                img_size=cfg["DATA_TRAIN_CROP_SIZE"], patch_size=vit["PATCH_SIZE"],
                patch_size_temp=vit["PATCH_SIZE_TEMP"], temporal_resolution=vit["TEMPORAL_RESOLUTION"],
                agg_layer_norm_eps=agg["layer_norm_eps"])
        if (agg["d_model"], agg["nhead"], agg["dim_feedforward"]) != (
                c.embed_dim, c.num_heads, c.mlp_ratio * c.embed_dim):
            raise ConfigError(f"spatial_attn_agg {agg} does not follow the ViT sizes")
        return c

    @property
    def patches_per_frame(self) -> int:
        return (self.img_size // self.patch_size) ** 2


class _Conv2dPatchEmbed(nn.Module):
    """Stored in the checkpoint, never applied (see the module docstring)."""

    def __init__(self, cfg: SynchformerConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)


class _Conv3dPatchEmbed(nn.Module):
    def __init__(self, cfg: SynchformerConfig):
        super().__init__()
        k = (cfg.patch_size_temp, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, k, stride=k)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ) v over the last two dims; q is already scaled, as in the original."""
    return (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v


class DividedAttention(nn.Module):
    """MotionFormer's divided attention over tokens [CLS, (t, n) patches].

    The CLS query attends to every token. A patch query attends to the CLS token plus the
    patches of its own frame (``over="space"``) or of its own spatial position (``"time"``).
    """

    def __init__(self, cfg: SynchformerConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.scale = (cfg.embed_dim // cfg.num_heads) ** -0.5
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor, time_tokens: int, over: str) -> torch.Tensor:
        n_batch, n_tok, dim = x.shape
        heads = self.num_heads
        # (3, N, heads, tokens, head_dim); channels are (head, head_dim), head-major.
        q, k, v = self.qkv(x).reshape(n_batch, n_tok, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q = q * self.scale

        cls_out = _attend(q[:, :, :1], k, v)  # (N, heads, 1, hd)

        # Patches as (N, heads, time_tokens, patches, hd); attention runs along dim 3.
        def grid(z: torch.Tensor) -> torch.Tensor:
            z = z[:, :, 1:].reshape(n_batch, heads, time_tokens, -1, z.shape[-1])
            return z if over == "space" else z.transpose(2, 3)

        q_, k_, v_ = grid(q), grid(k), grid(v)
        groups = k_.shape[2]
        cls_k = k[:, :, None, :1].expand(-1, -1, groups, -1, -1)
        cls_v = v[:, :, None, :1].expand(-1, -1, groups, -1, -1)
        out = _attend(q_, torch.cat([cls_k, k_], dim=3), torch.cat([cls_v, v_], dim=3))
        if over == "time":
            out = out.transpose(2, 3)
        out = torch.cat([cls_out, out.reshape(n_batch, heads, n_tok - 1, -1)], dim=2)
        return self.proj(out.transpose(1, 2).reshape(n_batch, n_tok, dim))


class DividedSpaceTimeBlock(nn.Module):
    """Time attention on norm3(x), then space attention on norm1(x), then MLP on norm2(x),
    each with a residual."""

    def __init__(self, cfg: SynchformerConfig):
        super().__init__()
        eps = cfg.layer_norm_eps
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=eps)
        self.attn = DividedAttention(cfg)
        self.timeattn = DividedAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=eps)
        self.mlp = Mlp(cfg.embed_dim, cfg.mlp_ratio * cfg.embed_dim)
        self.norm3 = nn.LayerNorm(cfg.embed_dim, eps=eps)

    def forward(self, x: torch.Tensor, time_tokens: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), time_tokens, over="time")
        x = x + self.attn(self.norm1(x), time_tokens, over="space")
        return x + self.mlp(self.norm2(x))


class SpatialAttnAgg(nn.Module):
    """Per-frame pooling: a learned CLS token prepended to the frame's patches, one pre-norm
    ``nn.TransformerEncoderLayer`` (parameter names kept), the CLS output returned.

    Only the CLS row of the layer is computed: attention rows and the feed-forward are per
    query, so the other rows cannot affect it, and skipping them saves ~all of this layer's
    feed-forward work.
    """

    def __init__(self, cfg: SynchformerConfig):
        super().__init__()
        d = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.self_attn = nn.MultiheadAttention(d, cfg.num_heads, batch_first=True)
        self.linear1 = nn.Linear(d, cfg.mlp_ratio * d)
        self.activation = nn.GELU()
        self.linear2 = nn.Linear(cfg.mlp_ratio * d, d)
        self.norm1 = nn.LayerNorm(d, eps=cfg.agg_layer_norm_eps)
        self.norm2 = nn.LayerNorm(d, eps=cfg.agg_layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, patches, D) → (N, D)."""
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        h = self.norm1(x)
        cls = x[:, :1] + self.self_attn(h[:, :1], h, h, need_weights=False)[0]
        cls = cls + self.linear2(self.activation(self.linear1(self.norm2(cls))))
        return cls[:, 0]


class SynchformerVideoEncoder(nn.Module):
    """Normalised video (B, S, C, T, H, W) → per-segment features (B, S, temporal_resolution, D).

    T = temporal_resolution · patch_size_temp (16) frames, H = W = img_size (224); input values
    are uint8 levels mapped through ``normalize_uint8_lut()``.
    """

    def __init__(self, cfg: SynchformerConfig):
        super().__init__()
        self.config = cfg
        d = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.patches_per_frame + 1, d))
        self.temp_embed = nn.Parameter(torch.zeros(1, cfg.temporal_resolution, d))
        self.patch_embed = _Conv2dPatchEmbed(cfg)
        self.patch_embed_3d = _Conv3dPatchEmbed(cfg)
        self.blocks = nn.ModuleList(DividedSpaceTimeBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.spatial_attn_agg = SpatialAttnAgg(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        t, n_patch, d = cfg.temporal_resolution, cfg.patches_per_frame, cfg.embed_dim
        batch_segments = x.shape[:2]
        x = self.patch_embed_3d.proj(x.flatten(0, 1))  # (BS, D, t, h, w)
        x = x.flatten(2).transpose(1, 2)  # (BS, t·h·w, D), tokens in (t, h, w) order
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        # Separate embeddings: spatial pos_embed tiled over frames + one temporal embedding per frame.
        patch_pos = self.pos_embed[:, 1:].repeat(1, t, 1) + self.temp_embed.repeat_interleave(n_patch, 1)
        x = x + torch.cat([self.pos_embed[:, :1], patch_pos], dim=1)
        for blk in self.blocks:
            x = blk(x, t)
        x = self.norm(x[:, 1:])  # the ViT's CLS token is not used further
        x = self.spatial_attn_agg(x.reshape(-1, n_patch, d))  # (BS·t, D), one row per frame
        return x.reshape(*batch_segments, t, d)
