"""Named, mutually consistent config sets for all seven components.

"rewas-m" is the released model. "tiny" is a random-weight stand-in of the same
architecture for tests and CI-sized exports: it runs the whole pipeline
on a CPU in seconds. Its widths must agree across components (Synchformer
width = φ width; CLAP vocabulary = the tiny tokenizer's size). "demo" is the
built-in model trained end to end on synthetic data by ``python -m training.demo``:
the same seven architectures, narrower and shallower so that each stage trains in
minutes on one CPU thread and the ONNX graphs together stay a few MB.
"""
from __future__ import annotations

import math
import zlib

from rewas_rt.errors import ConfigError
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


DEMO_VOCAB_SIZE = 384  # upper bound for the byte-level BPE fitted to the synthetic captions
_DEMO_UNET = dict(model_channels=32, channel_mult=[1, 2, 2, 2], num_res_blocks=1, num_head_channels=32,
                  attention_resolutions=[8, 4])
_DEMO_WIDTH = 32  # Synchformer embed_dim = φ width


def demo() -> dict[str, ModelConfig]:
    """The built-in demo model (``training.demo``): the released architectures, reduced.

    Same graphs and I/O as rewas-m (latent 8×128×16, 512-d CLAP space, 112-step energy); the
    VAE's ``scale_factor`` here is a placeholder that ``training.train_vae`` replaces with the
    measured 1/std of the trained VAE's latents."""
    return {
        "unet": UNetConfig(**{**UNetConfig.rewas_m().to_dict(), **_DEMO_UNET}),
        "adapter": AdapterConfig(**{**AdapterConfig.rewas_m().to_dict(), **_DEMO_UNET}),
        "vae": VAEConfig(**{**VAEConfig.rewas_m().to_dict(), "ch": 32, "ch_mult": [1, 1, 2], "num_res_blocks": 1,
                            "scale_factor": 1.0}),
        "vocoder": HiFiGANConfig(**{**HiFiGANConfig.rewas_m().to_dict(), "upsample_initial_channel": 64,
                                    "resblock_kernel_sizes": [3, 7], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]]}),
        "clap_text": ClapTextConfig(**{
            **ClapTextConfig.rewas_m().to_dict(), "vocab_size": DEMO_VOCAB_SIZE, "hidden_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
        }),
        "synchformer": SynchformerConfig(**{
            **SynchformerConfig.rewas_m().to_dict(), "embed_dim": _DEMO_WIDTH, "depth": 1, "num_heads": 2,
        }),
        "phi": PhiConfig(**{
            **PhiConfig.rewas_m().to_dict(), "width": _DEMO_WIDTH, "num_heads": 4, "num_blocks": 1,
            "proj_dims": [_DEMO_WIDTH, 32, 16, 8, 1], "attention": "time",
        }),
    }


PRESETS = {"rewas-m": rewas_m, "tiny": tiny, "demo": demo}


def preset(name: str) -> dict[str, ModelConfig]:
    if name not in PRESETS:
        raise ConfigError(f"unknown model config '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name]()


# Version of randomize_(): part of a random-weight model's fingerprint (export skips unchanged graphs).
RANDOM_INIT_VERSION = 1


def randomize_(module, seed: int) -> None:
    """Overwrite *every* parameter with deterministic, non-degenerate random values.

    A freshly built module is partly zero (ControlNet zero-convs, zero-initialised output
    convs, zero CLS tokens and position embeddings), which would make parity tests on those
    paths vacuous. Weights of Linear/Conv/Embedding/attention get N(0, 1/fan_in) so
    activations keep their scale through deep stacks; norm scales 1 + N(0, 0.1²); biases and
    free parameters (tokens, embeddings) small normals.
    """
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(int(seed))
    norms = (nn.LayerNorm, nn.GroupNorm)
    convs_t = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    weighted = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.MultiheadAttention) + convs_t
    with torch.no_grad():
        for _, mod in module.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
                if isinstance(mod, norms):
                    value = (1.0 + 0.1 * noise) if pname == "weight" else 0.1 * noise
                elif isinstance(mod, weighted) and p.dim() >= 2:
                    if isinstance(mod, nn.Embedding):
                        std = 0.5
                    elif isinstance(mod, convs_t):
                        stride = math.prod(mod.stride)
                        std = (p.shape[0] * math.prod(p.shape[2:]) / stride) ** -0.5
                    else:
                        std = p[0].numel() ** -0.5
                    value = std * noise
                elif pname.startswith("bias") and p.dim() == 1:
                    value = 0.05 * noise
                else:  # CLS tokens, position/temporal embeddings, MHA bias_k/bias_v, ...
                    value = 0.5 * noise
                p.copy_(value.to(p.dtype))


def component_seed(seed: int, component: str) -> int:
    """Each component's own seed, so adding or dropping one leaves the others' weights unchanged."""
    return (int(seed) * 1_000_003 + zlib.crc32(component.encode())) % (2**63)
