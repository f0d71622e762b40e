"""VAE posterior maths on the moments the vae_encoder graph returns (NumPy)."""
from __future__ import annotations

import numpy as np

from rewas_rt import constants as C


def posterior(moments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """moments (B, 2C, T, F) = [mean; logvar] -> (mean, std), logvar clamped as the original."""
    mean, logvar = np.split(np.asarray(moments, dtype=np.float32), 2, axis=1)
    return mean, np.exp(np.float32(0.5) * np.clip(logvar, *C.LOGVAR_CLAMP))


def scaled_latent(moments: np.ndarray, scale_factor: float, noise: np.ndarray | None = None) -> np.ndarray:
    """scale_factor · (mean + std·noise): the original *samples* the posterior (noise given);
    noise=None gives scale_factor · mean, the deterministic option."""
    mean, std = posterior(moments)
    z = mean if noise is None else mean + std * np.asarray(noise, dtype=np.float32)
    return (np.float32(scale_factor) * z).astype(np.float32)
