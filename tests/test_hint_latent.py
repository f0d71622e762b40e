"""Energy curve -> hint latent: NumPy energy/posterior maths around the PyTorch VAE encoder."""
import numpy as np
import pytest
import torch

from rewas_rt.energy import energy_to_vae_input
from rewas_rt.latent import posterior, scaled_latent
from tests.reference import assert_close, load_config, load_io, load_weights
from training.models.vae import VAE, VAEConfig

PREFIX = "first_stage_model."


@pytest.fixture(scope="module")
def moments_and_io():
    io = load_io("energy")
    weights = load_weights("vae")
    scale = float(weights.pop("scale_factor"))
    assert scale == float(io["scale_factor"])
    vae = VAE(VAEConfig.from_reference({**load_config("vae"), "scale_factor": scale})).eval()
    vae.load_state_dict({k[len(PREFIX):]: v for k, v in weights.items()}, strict=True)
    energies = np.stack([io[k] for k in sorted(io) if k.endswith("_hint_energy_512")])
    with torch.no_grad():
        moments = vae.encode_moments(torch.from_numpy(energy_to_vae_input(energies))).numpy()
    return moments, scale, io


def test_posterior(moments_and_io):
    moments, _, io = moments_and_io
    mean, std = posterior(moments)
    assert_close("energy/hint_posterior_mean", mean, io["hint_posterior_mean"])
    assert_close("energy/hint_posterior_std", std, io["hint_posterior_std"])


def test_hint_latent_is_a_posterior_sample(moments_and_io):
    moments, scale, io = moments_and_io
    assert_close("energy/hint_latent", scaled_latent(moments, scale, io["hint_posterior_noise"]), io["hint_latent"])
    assert_close("energy/hint_latent_from_mean", scaled_latent(moments, scale), io["hint_latent_from_mean"])
