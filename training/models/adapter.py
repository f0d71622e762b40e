"""ReWaS energy adapter: a ControlNet copy of the UNet encoder driven by the energy latent.

Parameter names are the original's (audioldm/rewas.py ``Adapter``) without ``control_model.``.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from training.models.unet import EncoderConfig, UNetEncoder, rewas_m_shared, zero_module

# The original's hint block is hard-coded for the (8, 128, 16) energy latent:
# Linear(16, 16) over the mel-frequency axis, then a conv from the 8 latent channels.
# Only the time length (128) is free here, since it merely appeared in a reshape.
HINT_LATENT_CHANNELS = 8
HINT_FREQ_BINS = 16


@dataclasses.dataclass(kw_only=True)
class AdapterConfig(EncoderConfig):
    # Kept from the original config; the hint block reads HINT_LATENT_CHANNELS, not this.
    hint_channels: int

    @classmethod
    def rewas_m(cls) -> AdapterConfig:
        return cls(**rewas_m_shared(), hint_channels=1, legacy=False)

    @classmethod
    def from_reference(cls, params: dict) -> AdapterConfig:
        # use_checkpoint is gradient checkpointing: a training memory trade-off, not architecture.
        return cls.from_dict({k: v for k, v in params.items() if k != "use_checkpoint"})


def zero_conv(channels: int) -> nn.Module:
    return nn.Sequential(zero_module(nn.Conv2d(channels, channels, 1)))


class Adapter(UNetEncoder):
    def __init__(self, cfg: AdapterConfig):
        super().__init__(cfg)
        self.zero_convs = nn.ModuleList(zero_conv(ch) for ch in self.input_block_chans)
        self.middle_block_out = zero_conv(self.input_block_chans[-1])
        # Slots 0 and 3 were einops Rearranges flattening to (b·c·t, f) rows and back;
        # nn.Linear already acts on the last (frequency) axis, so they are identities here.
        self.input_hint_block = nn.Sequential(
            nn.Identity(),
            nn.Linear(HINT_FREQ_BINS, HINT_FREQ_BINS),
            nn.SiLU(),
            nn.Identity(),
            zero_module(nn.Conv2d(HINT_LATENT_CHANNELS, cfg.model_channels, 3, padding=1)),
        )

    def compute_hint_features(self, hint: torch.Tensor) -> torch.Tensor:
        """Hint latent (B,8,T,16) -> features added after input block 0; independent of x and t."""
        return self.input_hint_block(hint)

    def forward_with_hint_features(
        self, x: torch.Tensor, hint_features: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor
    ) -> list[torch.Tensor]:
        emb = self.embed(timesteps, y)
        h = self.input_blocks[0](x, emb) + hint_features
        outs = [self.zero_convs[0](h)]
        for block, conv in zip(self.input_blocks[1:], self.zero_convs[1:]):
            h = block(h, emb)
            outs.append(conv(h))
        outs.append(self.middle_block_out(self.middle_block(h, emb)))
        return outs

    def forward(
        self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor
    ) -> list[torch.Tensor]:
        """Control tensors: one per input block, then the middle block's (the UNet pops from the end)."""
        return self.forward_with_hint_features(x, self.compute_hint_features(hint), timesteps, y)
