"""Named, mutually consistent config sets for all seven components.

"rewas-m" is the released model. "tiny" is a random-weight stand-in of the same
architecture for tests, demos and CI-sized exports: it runs the whole pipeline
on a CPU in seconds. Its widths must agree across components (Synchformer
width = φ width; CLAP vocabulary = the tiny tokenizer's size).
"""
from __future__ import annotations

from training.models.adapter import AdapterConfig
from training.models.clap_text import ClapTextConfig
from training.models.config import ModelConfig
from training.models.hifigan import HiFiGANConfig
from training.models.phi import PhiConfig
from training.models.synchformer import SynchformerConfig
from training.models.unet import UNetConfig
from training.models.vae import VAEConfig

TINY_VOCAB_SIZE = 512
_TINY_UNET = dict(model_channels=32, channel_mult=[1, 1, 1, 2], num_res_blocks=1)
_TINY_WIDTH = 64


def rewas_m() -> dict[str, ModelConfig]:
    return {
        "unet": UNetConfig.rewas_m(),
        "adapter": AdapterConfig.rewas_m(),
        "vae": VAEConfig.rewas_m(),
        "vocoder": HiFiGANConfig.rewas_m(),
        "clap_text": ClapTextConfig.rewas_m(),
        "synchformer": SynchformerConfig.rewas_m(),
        "phi": PhiConfig.rewas_m(),
    }


def tiny() -> dict[str, ModelConfig]:
    """The sizes of the golden reference data (reduced UNet/VAE/HiFi-GAN), narrower encoders."""
    return {
        "unet": UNetConfig(**{**UNetConfig.rewas_m().to_dict(), **_TINY_UNET}),
        "adapter": AdapterConfig(**{**AdapterConfig.rewas_m().to_dict(), **_TINY_UNET}),
        "vae": VAEConfig(**{**VAEConfig.rewas_m().to_dict(), "ch": 32, "ch_mult": [1, 1, 2], "scale_factor": 1.25}),
        "vocoder": HiFiGANConfig(**{**HiFiGANConfig.rewas_m().to_dict(), "upsample_initial_channel": 32}),
        "clap_text": ClapTextConfig(**{
            **ClapTextConfig.rewas_m().to_dict(), "vocab_size": TINY_VOCAB_SIZE, "hidden_size": _TINY_WIDTH,
            "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 4 * _TINY_WIDTH,
        }),
        "synchformer": SynchformerConfig(**{
            **SynchformerConfig.rewas_m().to_dict(), "embed_dim": _TINY_WIDTH, "depth": 1, "num_heads": 4,
        }),
        "phi": PhiConfig(**{
            **PhiConfig.rewas_m().to_dict(), "width": _TINY_WIDTH, "num_heads": 4, "num_blocks": 1,
            "proj_dims": [_TINY_WIDTH, 32, 16, 8, 1],
        }),
    }


PRESETS = {"rewas-m": rewas_m, "tiny": tiny}


def preset(name: str) -> dict[str, ModelConfig]:
    if name not in PRESETS:
        raise ValueError(f"unknown model config '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name]()
