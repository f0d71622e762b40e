"""φ (ReWaS encoder/phi.py): Synchformer features (B, T, 768) → energy curve (B, T, 1).

State-dict keys equal ``phi_vggsound.ckpt``'s names without the ``module.``
(nn.DataParallel) prefix.

The original's ``nn.MultiheadAttention`` keeps its default ``batch_first=False``,
so on a (B, T, D) input it attends over the *batch* axis: every time step attends
to the same time step of all batch items plus the learned ``bias_k``/``bias_v``
token. The released pipeline runs B=1, where each time step attends only to
itself and the bias token. ``PhiConfig.attention`` picks the layout:

* ``"batch"`` (default): the released model's B=1 computation, applied to each
  item on its own, so batch items never interact;
* ``"batch_mixing"``: the original's code taken literally (results depend on the
  rest of the batch); kept to prove the quirk is understood, not for inference;
* ``"time"``: attention over the T time steps, for newly trained models.
"""
from __future__ import annotations

import dataclasses
import re

import torch
from torch import nn

from rewas_rt.errors import ConfigError
from training.models.config import ModelConfig
from training.models.layers import Mlp

ATTENTION_LAYOUTS = ("batch", "batch_mixing", "time")


@dataclasses.dataclass
class PhiConfig(ModelConfig):
    width: int = 768
    num_heads: int = 8
    num_blocks: int = 3
    mlp_ratio: int = 4
    # projection2 widths, starting at `width`: Linear layers with ReLU between them.
    proj_dims: list[int] = dataclasses.field(default_factory=lambda: [768, 128, 64, 16, 1])
    layer_norm_eps: float = 1e-6
    attention: str = "batch"

    def __post_init__(self):
        if self.attention not in ATTENTION_LAYOUTS:
            raise ConfigError(f"attention {self.attention!r} not in {ATTENTION_LAYOUTS}")
        if self.proj_dims[0] != self.width:
            raise ConfigError(f"proj_dims {self.proj_dims} must start at width {self.width}")

    @classmethod
    def rewas_m(cls) -> "PhiConfig":
        """Released sizes (``Phi()``; 3 blocks)."""
        return cls()

    @classmethod
    def from_reference(cls, cfg: dict) -> "PhiConfig":
        """From a reference ``phi/config.json``."""
        blocks = cfg["hint_blocks"]
        eps = re.fullmatch(r"LayerNorm\(eps=(.+)\)", blocks["norm_layer"]).group(1)
        return cls(width=cfg["params"]["input_dim"], num_heads=blocks["attn_target"]["num_heads"],
                   num_blocks=blocks["num_blocks"], mlp_ratio=blocks["mlp_ratio"],
                   proj_dims=list(cfg["params"]["proj_dims"]), layer_norm_eps=float(eps))


class Block(nn.Module):
    """Pre-norm block: x + attn(norm_1(x)), then x + mlp(norm_2(x))."""

    def __init__(self, cfg: PhiConfig):
        super().__init__()
        self.attention = cfg.attention
        # batch_first=False as in the original: inputs below are laid out (L, N, D).
        self.attn = nn.MultiheadAttention(cfg.width, cfg.num_heads, bias=True, add_bias_kv=True)
        self.norm_1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg.width, cfg.mlp_ratio * cfg.width)
        self.norm_2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)

    def _self_attn(self, seq: torch.Tensor) -> torch.Tensor:
        return self.attn(seq, seq, seq, need_weights=False)[0]

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) → attention output (B, T, D) in the configured layout."""
        if self.attention == "batch":
            # Every (item, time step) is its own length-1 sequence: B=1 semantics for all items.
            return self._self_attn(x.reshape(1, -1, x.shape[-1])).reshape(x.shape)
        if self.attention == "time":
            return self._self_attn(x.transpose(0, 1)).transpose(0, 1)
        return self._self_attn(x)  # batch_mixing: (B, T, D) read as (L=B, N=T, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._attend(self.norm_1(x))
        return x + self.mlp(self.norm_2(x))


class HintBlocks(nn.Module):
    """Holds the blocks under the original's ``hint_blocks.blocks.N`` names."""

    def __init__(self, cfg: PhiConfig):
        super().__init__()
        self.blocks = nn.Sequential(*(Block(cfg) for _ in range(cfg.num_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Phi(nn.Module):
    """Synchformer features (B, T, width) → energy (B, T, proj_dims[-1])."""

    def __init__(self, cfg: PhiConfig):
        super().__init__()
        self.config = cfg
        self.projection1 = nn.Sequential(nn.Linear(cfg.width, cfg.width))
        self.hint_blocks = HintBlocks(cfg)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(cfg.proj_dims[:-1], cfg.proj_dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        self.projection2 = nn.Sequential(*layers[:-1])  # no activation after the last layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection2(self.hint_blocks(self.projection1(x)))
