"""CLAP text branch: RoBERTa (with pooler) + ``text_projection``, L2-normalised.

State-dict keys equal the ReWaS checkpoint's ``cond_stage_models.0.model.text_*``
names without ``cond_stage_models.0.model.``, and the CLAP file's
``module.text_*`` names without ``module.``. The CLAP file also holds
``module.text_branch.embeddings.position_ids``, written by transformers < 4.31;
the original loader deletes it, and here it is a non-persistent buffer of
``RobertaModel``, so it must be dropped on import as well.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from transformers import RobertaConfig, RobertaModel

from training.models.config import ModelConfig


@dataclasses.dataclass
class ClapTextConfig(ModelConfig):
    # RobertaConfig fields; defaults are roberta-base as used by CLAP.
    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    # CLAP's joint embedding width: text_projection = Linear(hidden, d), ReLU, Linear(d, d).
    # (The original hard-codes the input width 768, so hidden_size must stay 768 to load it.)
    embed_dim: int = 512

    @classmethod
    def rewas_m(cls) -> "ClapTextConfig":
        """Released sizes (roberta-base, 512-d joint embedding)."""
        return cls()

    @classmethod
    def from_reference(cls, cfg: dict) -> "ClapTextConfig":
        """From a reference ``clap_text/config.json`` (its ``roberta_config`` also names the
        attention implementation, which is not a size)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in cfg["roberta_config"].items() if k in names})

    def roberta_config(self) -> RobertaConfig:
        fields = {k: v for k, v in self.to_dict().items() if k != "embed_dim"}
        # Eager attention: the implementation the reference was computed with, and the
        # one that traces to plain ops.
        return RobertaConfig(**fields, attn_implementation="eager")


class ClapText(nn.Module):
    """(input_ids, attention_mask) (B, L) int64 → L2-normalised text embedding (B, embed_dim).

    Pad positions (id ``pad_token_id``, mask 0) do not change the result, so inputs may be
    padded to any length, 512 included. No token_type_ids (all zeros, as in the original).
    Built in training mode like any nn.Module: call ``eval()`` for inference (RoBERTa has dropout).
    """

    def __init__(self, cfg: ClapTextConfig):
        super().__init__()
        self.config = cfg
        self.text_branch = RobertaModel(cfg.roberta_config(), add_pooling_layer=True)
        self.text_projection = nn.Sequential(
            nn.Linear(cfg.hidden_size, cfg.embed_dim),
            nn.ReLU(),
            nn.Linear(cfg.embed_dim, cfg.embed_dim),
        )

    def pooled_and_projected(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoBERTa pooler output (B, hidden) and the projection before normalisation (B, embed_dim)."""
        pooled = self.text_branch(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return pooled, self.text_projection(pooled)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.pooled_and_projected(input_ids, attention_mask)[1], dim=-1)
