"""UNet + energy adapter against the golden `unet_adapter` reference and the full-size manifest."""
from __future__ import annotations

import json

import pytest
import torch

from tests.reference import assert_close, component_dir, load_config, load_io, load_manifest, load_weights
from training.models.adapter import Adapter, AdapterConfig
from training.models.denoiser import Denoiser
from training.models.unet import UNet, UNetConfig, ema_key_for

COMPONENT = "unet_adapter"
UNET_PREFIX = "model.diffusion_model."
ADAPTER_PREFIX = "control_model."
CHECKPOINT = "audioldm_m_rewas_vggsound.ckpt"


def strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config(COMPONENT)


@pytest.fixture(scope="module")
def io() -> dict:
    return {k: torch.from_numpy(v) for k, v in load_io(COMPONENT).items()}


@pytest.fixture(scope="module")
def denoiser(config) -> Denoiser:
    model = Denoiser.from_configs(
        UNetConfig.from_reference(config["unet"]["params"]),
        AdapterConfig.from_reference(config["adapter"]["params"]),
        config["control_scales"],
    )
    weights = load_weights(COMPONENT)
    assert len(strip(weights, UNET_PREFIX)) + len(strip(weights, ADAPTER_PREFIX)) == len(weights)
    model.unet.load_state_dict(strip(weights, UNET_PREFIX), strict=True)
    model.adapter.load_state_dict(strip(weights, ADAPTER_PREFIX), strict=True)
    return model.float().eval()


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_param_counts(denoiser, config):
    assert n_params(denoiser.unet) == config["param_counts"]["unet"]
    assert n_params(denoiser.adapter) == config["param_counts"]["adapter"]


@torch.inference_mode()
def test_eps_unet_only(denoiser, io):
    eps = denoiser.unet(io["x_t"], io["timesteps"], io["y"])
    assert_close(f"{COMPONENT}/eps_unet_only", eps, io["eps_unet_only"].numpy())


@pytest.mark.parametrize(("name", "zero_hint"), [("eps", False), ("eps_zero_hint", True)])
@torch.inference_mode()
def test_eps(denoiser, io, name, zero_hint):
    hint = torch.zeros_like(io["hint_latent"]) if zero_hint else io["hint_latent"]
    eps = denoiser(io["x_t"], io["timesteps"], io["y"], hint)
    assert_close(f"{COMPONENT}/{name}", eps, io[name].numpy())


@torch.inference_mode()
def test_controls(denoiser, io, config):
    controls = denoiser.adapter(io["x_t"], io["hint_latent"], io["timesteps"], io["y"])
    names = sorted(k for k in io if k.startswith("control_"))
    p = denoiser.adapter.config
    assert len(controls) == len(p.channel_mult) * (p.num_res_blocks + 1) + 1 == config["n_control_outputs"]
    assert [list(c.shape) for c in controls] == config["control_shapes"]
    assert len(names) == len(controls)
    for name, c in zip(names, controls):
        n = io[name].shape[0]  # the reference stores the first item(s) only
        assert_close(f"{COMPONENT}/{name}", c[:n], io[name].numpy())


@torch.inference_mode()
def test_zero_control_scales_give_plain_unet(denoiser, io):
    # Scales really multiply the controls: all-zero scales must reproduce the bare UNet.
    muted = Denoiser(denoiser.unet, denoiser.adapter, [0.0] * len(denoiser.control_scales))
    eps = muted(io["x_t"], io["timesteps"], io["y"], io["hint_latent"])
    assert_close(f"{COMPONENT}/eps_unet_only (scales 0)", eps, io["eps_unet_only"].numpy())


def test_ema_key_rule():
    ema_map = json.loads((component_dir(COMPONENT) / "ema_key_map.json").read_text())
    assert ema_map and all(k.startswith(UNET_PREFIX) for k in ema_map)
    assert {k: ema_key_for(k[len(UNET_PREFIX):]) for k in ema_map} == ema_map


def test_config_round_trip(config):
    for cls, section in ((UNetConfig, "unet"), (AdapterConfig, "adapter")):
        cfg = cls.from_reference(config[section]["params"])
        assert cls.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("build", "prefix", "count_key"),
    [
        (lambda: UNet(UNetConfig.rewas_m()), UNET_PREFIX, "unet_model_diffusion_model"),
        (lambda: Adapter(AdapterConfig.rewas_m()), ADAPTER_PREFIX, "adapter_control_model"),
    ],
    ids=["unet", "adapter"],
)
def test_full_size_matches_manifest(build, prefix, count_key):
    manifest = load_manifest(CHECKPOINT)
    with torch.device("meta"):
        model = build()
    expected = {k: tuple(v) for k, v in strip(manifest["keys"], prefix).items()}
    actual = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    assert sorted(set(expected) - set(actual)) == [], "missing keys"
    assert sorted(set(actual) - set(expected)) == [], "unexpected keys"
    assert {k: v for k, v in actual.items() if v != expected[k]} == {}, "shape/dtype mismatch"
    assert n_params(model) == manifest["param_counts"][count_key]
