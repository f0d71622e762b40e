"""UNet + energy adapter fused into one ε predictor (ReWaS.apply_model): the per-step graph."""
from __future__ import annotations

import torch
from torch import nn

from training.models.adapter import Adapter, AdapterConfig
from training.models.unet import UNet, UNetConfig

# ReWaS hard-codes 13 scales, the control count at released sizes.
DEFAULT_CONTROL_SCALES = (1.0,) * 13


class Denoiser(nn.Module):
    def __init__(self, unet: UNet, adapter: Adapter, control_scales=DEFAULT_CONTROL_SCALES):
        super().__init__()
        self.unet = unet
        self.adapter = adapter
        # Plain floats, so an exported graph bakes them in as constants.
        self.control_scales = [float(s) for s in control_scales]

    @classmethod
    def from_configs(
        cls, unet_cfg: UNetConfig, adapter_cfg: AdapterConfig, control_scales=DEFAULT_CONTROL_SCALES
    ) -> Denoiser:
        return cls(UNet(unet_cfg), Adapter(adapter_cfg), control_scales)

    def forward(
        self, x_t: torch.Tensor, timesteps: torch.Tensor, film: torch.Tensor, hint: torch.Tensor
    ) -> torch.Tensor:
        """x_t (N,8,T,16), int64 timesteps (N,), CLAP FiLM embedding (N,512), hint latent like x_t -> ε."""
        # zip truncates like the original: controls beyond the scale list are dropped.
        control = [c * s for c, s in zip(self.adapter(x_t, hint, timesteps, film), self.control_scales)]
        return self.unet(x_t, timesteps, film, control)
