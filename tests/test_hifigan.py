"""HiFi-GAN vocoder against the golden reference (both weight layouts) and the full-size manifests."""
import numpy as np
import pytest
import torch

from tests.reference import assert_close, load_config, load_io, load_manifest, load_weights
from training.models.hifigan import HiFiGAN, HiFiGANConfig, fold_weight_norm, strip_orig_mod

REWAS_PREFIX = "first_stage_model.vocoder."


def _strip_rewas_prefix(sd: dict) -> dict:
    assert all(k.startswith(REWAS_PREFIX) for k in sd), "expected ReWaS-checkpoint vocoder names"
    return {k[len(REWAS_PREFIX):]: v for k, v in sd.items()}


def _meta(keys: dict) -> dict:
    return {k: torch.empty(shape, device="meta") for k, (shape, _) in keys.items()}


def _shapes(sd: dict) -> dict:
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.fixture(scope="module")
def reference():
    cfg = load_config("hifigan")
    io = {k: torch.from_numpy(v) for k, v in load_io("hifigan").items()}
    return cfg, HiFiGANConfig.from_reference(cfg["config"]), io


def _model(config: HiFiGANConfig, state_dict: dict) -> HiFiGAN:
    model = HiFiGAN(config).eval()
    model.load_state_dict(state_dict, strict=True)
    return model


def test_mel_layouts_agree(reference):
    # The VAE decoder output (B, 1, T, mels) reaches the vocoder as (B, mels, T).
    _, _, io = reference
    assert torch.equal(io["mel_as_decoder_output"].squeeze(1).transpose(1, 2), io["mel"])


@torch.no_grad()
def test_weightnorm_checkpoint(reference):
    _, config, io = reference
    out = _model(config, fold_weight_norm(strip_orig_mod(load_weights("hifigan"))))(io["mel"])
    for expected in ("waveform", "waveform_weightnorm_module"):
        assert_close(f"hifigan/{expected} (folded weight norm)", out, io[expected])


@torch.no_grad()
def test_weightnorm_removed_checkpoint(reference):
    _, config, io = reference
    model = _model(config, _strip_rewas_prefix(load_weights("hifigan", "weights_weightnorm_removed.safetensors")))
    assert_close("hifigan/waveform (weight norm removed)", model(io["mel"]), io["waveform"])


def test_fold_matches_removed_file():
    folded = fold_weight_norm(load_weights("hifigan"))
    removed = _strip_rewas_prefix(load_weights("hifigan", "weights_weightnorm_removed.safetensors"))
    assert folded.keys() == removed.keys()
    for k, v in removed.items():
        assert folded[k].dtype == torch.float32
        np.testing.assert_allclose(folded[k].numpy(), v.numpy(), rtol=1e-6, atol=1e-7, err_msg=k)


def test_fold_rejects_unpaired():
    sd = load_weights("hifigan")
    del sd["conv_pre.weight_v"]
    with pytest.raises(KeyError, match="conv_pre.weight"):
        fold_weight_norm(sd)


def test_strip_orig_mod():
    assert list(strip_orig_mod({"_orig_mod.conv_pre.bias": 0, "ups._orig_mod.0.bias": 1})) == [
        "conv_pre.bias", "ups.0.bias"]


def test_param_counts(reference):
    cfg, config, _ = reference
    assert sum(p.numel() for p in HiFiGAN(config).parameters()) == cfg["param_count_removed"]
    assert sum(v.numel() for v in load_weights("hifigan").values()) == cfg["param_count_weightnorm"]


def test_config_json_round_trip(reference, tmp_path):
    _, config, _ = reference
    config.to_json(tmp_path / "hifigan.json")
    assert HiFiGANConfig.from_json(tmp_path / "hifigan.json") == config


@pytest.fixture(scope="module")
def full_size():
    with torch.device("meta"):
        return HiFiGAN(HiFiGANConfig.rewas_m())


def test_full_size_keys_rewas(full_size):
    keys = load_manifest("audioldm_m_rewas_vggsound.ckpt")["keys"]
    expected = {k[len(REWAS_PREFIX):]: tuple(shape) for k, (shape, _) in keys.items() if k.startswith(REWAS_PREFIX)}
    assert _shapes(full_size.state_dict()) == expected


def test_full_size_keys_hifigan_file(full_size):
    manifest = load_manifest("hifigan_16k_64bins.ckpt")
    removed = {k: tuple(shape) for k, (shape, _) in manifest["keys_after_remove_weight_norm"].items()}
    assert _shapes(full_size.state_dict()) == removed
    folded = fold_weight_norm(strip_orig_mod(_meta(manifest["keys"])))
    assert _shapes(folded) == removed
    assert all(v.dtype == torch.float32 for v in folded.values())


def test_full_size_param_counts(full_size):
    manifest = load_manifest("hifigan_16k_64bins.ckpt")
    counts = manifest["param_counts"]
    assert sum(p.numel() for p in full_size.parameters()) == counts["after_remove_weight_norm"]
    assert sum(v.numel() for v in _meta(manifest["keys"]).values()) == counts["with_weight_norm"]
    rewas = load_manifest("audioldm_m_rewas_vggsound.ckpt")["param_counts"]
    assert counts["after_remove_weight_norm"] == rewas["vocoder_weightnorm_removed"]
    assert counts["with_weight_norm"] == rewas["vocoder_with_weightnorm"]
