"""VAE (AutoencoderKL) against the golden reference and the full-size key manifests."""
import pytest
import torch

from tests.reference import assert_close, load_config, load_io, load_manifest, load_weights
from training.models.vae import VAE, VAEConfig, VAEDecoderGraph, VAEEncoderGraph

PREFIX = "first_stage_model."
PARTS = ("encoder", "decoder", "quant_conv", "post_quant_conv")


def _param_counts(vae: VAE) -> dict[str, int]:
    return {p: sum(t.numel() for t in getattr(vae, p).parameters()) for p in PARTS}


@pytest.fixture(scope="module")
def reference():
    cfg = load_config("vae")
    weights = load_weights("vae")
    scale_factor = weights.pop("scale_factor")  # top-level 0-dim buffer of the ReWaS state dict
    assert scale_factor.dim() == 0 and float(scale_factor) == cfg["scale_factor"]
    vae = VAE(VAEConfig.from_reference(cfg)).eval()
    assert all(k.startswith(PREFIX) for k in weights)
    vae.load_state_dict({k[len(PREFIX):]: v for k, v in weights.items()}, strict=True)
    return cfg, vae, {k: torch.from_numpy(v) for k, v in load_io("vae").items()}


def test_param_counts(reference):
    cfg, vae, _ = reference
    assert _param_counts(vae) == cfg["param_counts"]


@torch.no_grad()
def test_encode(reference):
    _, vae, io = reference
    moments = vae.encode_moments(io["log_mel_in"])
    assert_close("vae/moments", moments, io["moments"])
    _, std = vae.posterior(moments)
    assert_close("vae/posterior_std", std, io["posterior_std"])
    # encode_latent re-runs the encoder: one batch item is enough to check it.
    mel, noise = io["log_mel_in"][:1], io["posterior_noise"][:1]
    assert_close("vae/z_scaled", vae.encode_latent(mel, noise), io["z_scaled"][:1])
    ref_mean = io["moments"][:1].chunk(2, dim=1)[0]
    assert_close("vae/z_scaled_posterior_mean", vae.encode_latent(mel), vae.config.scale_factor * ref_mean)


@torch.no_grad()
def test_decode(reference):
    _, vae, io = reference
    assert_close("vae/decode_first_stage_out", vae.decode(io["z_scaled"]), io["decode_first_stage_out"])


@torch.no_grad()
def test_graph_wrappers_match_vae(reference):
    _, vae, io = reference
    enc, dec = VAEEncoderGraph(vae), VAEDecoderGraph(vae)
    mel, z = io["log_mel_in"][:1, :, :64], io["z_scaled"][:1, :, :16]  # crops keep it quick
    assert torch.equal(enc(mel), vae.encode_moments(mel))
    assert torch.equal(dec(z), vae.decode(z))
    assert set(enc.state_dict()) == {k for k in vae.state_dict() if k.startswith(("encoder.", "quant_conv."))}
    assert set(dec.state_dict()) == {k for k in vae.state_dict() if k.startswith(("decoder.", "post_quant_conv."))}


def test_config_json_round_trip(tmp_path):
    cfg = VAEConfig.from_reference(load_config("vae"))
    cfg.to_json(tmp_path / "vae.json")
    assert VAEConfig.from_json(tmp_path / "vae.json") == cfg


@pytest.mark.parametrize("checkpoint, prefix", [
    ("audioldm_m_rewas_vggsound.ckpt", PREFIX),
    ("vae_mel_16k_64bins.ckpt", ""),
])
def test_full_size_keys(checkpoint, prefix):
    manifest = load_manifest(checkpoint)
    expected = {k[len(prefix):]: tuple(shape) for k, (shape, _) in manifest["keys"].items()
                if k.startswith(tuple(f"{prefix}{p}." for p in PARTS))}
    with torch.device("meta"):
        vae = VAE(VAEConfig.rewas_m())
    assert {k: tuple(v.shape) for k, v in vae.state_dict().items()} == expected


def test_full_size_param_counts():
    counts = load_manifest("vae_mel_16k_64bins.ckpt")["param_counts"]
    with torch.device("meta"):
        vae = VAE(VAEConfig.rewas_m())
    assert _param_counts(vae) == {p: counts[p] for p in PARTS}
