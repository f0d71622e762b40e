"""Checkpoint import: released layouts -> canonical safetensors.

Reduced models: files in the released layouts are rebuilt from the reference
weights and imported through the CLI. Full size: synthetic checkpoints made of
meta tensors from the key manifests go through the same routing.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests import reference
from training import checkpoints as ck
from training.import_checkpoints import main as import_main
from training.models.adapter import AdapterConfig
from training.models.clap_text import ClapTextConfig
from training.models.hifigan import HiFiGANConfig
from training.models.phi import PhiConfig
from training.models.presets import rewas_m
from training.models.synchformer import SynchformerConfig
from training.models.unet import UNetConfig, ema_key_for
from training.models.vae import VAEConfig

CLAP_PREFIX = "cond_stage_models.0.model."


def reference_configs() -> dict:
    ua = reference.load_config("unet_adapter")
    return {
        "unet": UNetConfig.from_reference(ua["unet"]["params"]),
        "adapter": AdapterConfig.from_reference(ua["adapter"]["params"]),
        "vae": VAEConfig.from_reference(reference.load_config("vae")),
        "vocoder": HiFiGANConfig.from_reference(reference.load_config("hifigan")["config"]),
        "clap_text": ClapTextConfig.from_reference(reference.load_config("clap_text")),
        "synchformer": SynchformerConfig.from_reference(reference.load_config("synchformer_video")),
        "phi": PhiConfig.from_reference(reference.load_config("phi")),
    }


def strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def reference_weights() -> dict:
    """The reduced reference models' weights, by the names ``released_files`` takes."""
    return {
        "unet_adapter": reference.load_weights("unet_adapter"),
        "vae": reference.load_weights("vae"),
        "hifigan": reference.load_weights("hifigan"),
        "hifigan_removed": reference.load_weights("hifigan", "weights_weightnorm_removed.safetensors"),
        "clap_text": reference.load_weights("clap_text"),
        "synchformer": reference.load_weights("synchformer_video"),
        "phi": reference.load_weights("phi"),
    }


@pytest.fixture(scope="module")
def ref_weights() -> dict:
    return reference_weights()


def released_files(w: dict, ema_offset: float | None = None) -> dict[str, dict]:
    """State dicts in the released files' layouts, built from the reference weights."""
    # the removed-layout vocoder file already carries the ReWaS names
    rewas = {**w["unet_adapter"], **w["vae"], **w["clap_text"], **w["hifigan_removed"]}
    buffers = load_file(str(reference.component_dir("ddim") / "schedule_buffers.safetensors"))
    rewas.update(buffers)
    rewas["logvar"] = torch.zeros(1000)
    if ema_offset is not None:
        for k, v in strip(w["unet_adapter"], "model.diffusion_model.").items():
            rewas[ema_key_for(k)] = v + ema_offset
        rewas["model_ema.decay"] = torch.tensor(0.9999)
        rewas["model_ema.num_updates"] = torch.tensor(10, dtype=torch.int32)
    return {
        ck.REWAS_FILE: rewas,
        ck.PHI_FILE: w["phi"],
        ck.SYNCHFORMER_FILE: {**w["synchformer"], "afeat_extractor.x": torch.zeros(1)},
    }


def save_released(tmp_path, files: dict) -> None:
    for name, sd in files.items():
        entry = ck.FILES_BY_NAME[name].entry
        torch.save({entry: sd} if entry else sd, tmp_path / name)


def write_configs(path, configs) -> None:
    path.write_text(json.dumps({k: c.to_dict() for k, c in configs.items()}))


def test_cli_imports_reduced_release_bit_exactly(tmp_path, ref_weights, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    save_released(src, released_files(ref_weights, ema_offset=0.25))
    write_configs(tmp_path / "configs.json", reference_configs())
    assert import_main(["--src", str(src), "--out", str(out), "--configs", str(tmp_path / "configs.json")]) == 0

    w = ref_weights
    expected = {
        # the EMA copy, not the plain UNet weights, is what generation uses
        "unet": {k: v + 0.25 for k, v in strip(w["unet_adapter"], "model.diffusion_model.").items()},
        "adapter": strip(w["unet_adapter"], "control_model."),
        "vae": {k: v for k, v in strip(w["vae"], "first_stage_model.").items() if not k.startswith("vocoder.")},
        "vocoder": strip(w["hifigan_removed"], "first_stage_model.vocoder."),
        "clap_text": strip(w["clap_text"], CLAP_PREFIX),
        "synchformer": strip(w["synchformer"], "vfeat_extractor."),
        "phi": strip(w["phi"], "module."),
    }
    for component, want in expected.items():
        got = load_file(str(out / f"{component}.safetensors"))
        assert set(got) == set(want), component
        for k in want:
            assert torch.equal(got[k], want[k].float()), f"{component}.{k}"
        info = json.loads((out / f"{component}.json").read_text())
        assert info["component"] == component and info["param_count"] == sum(t.numel() for t in want.values())
    assert json.loads((out / "unet.json").read_text())["ema"] is True
    vae_info = json.loads((out / "vae.json").read_text())
    assert vae_info["config"]["scale_factor"] == float(w["vae"]["scale_factor"])


def test_canonical_unet_adapter_reproduces_golden_eps(tmp_path, ref_weights):
    """The imported files drive the golden forward pass (no EMA in the reference data)."""
    from training.models.denoiser import Denoiser

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    save_released(src, released_files(ref_weights))
    ck.import_checkpoints(src, out, reference_configs(), log=lambda _: None)
    unet, _ = ck.load_component(out, "unet")
    adapter, _ = ck.load_component(out, "adapter")
    den = Denoiser(unet, adapter).eval()
    io = reference.load_io("unet_adapter")
    with torch.no_grad():
        eps = den(torch.from_numpy(io["x_t"]), torch.from_numpy(io["timesteps"]), torch.from_numpy(io["y"]),
                  torch.from_numpy(io["hint_latent"]))
    reference.assert_close("import/unet_adapter eps", eps, io["eps"])


def test_vocoder_from_separate_weight_norm_file(ref_weights):
    """Without the ReWaS checkpoint the HiFi-GAN file's weight-norm layout is folded."""
    configs = reference_configs()
    res = ck.route_files({ck.HIFIGAN_FILE: ref_weights["hifigan"]}, configs)
    ck.check_state_dict("vocoder", res.state_dicts["vocoder"], configs["vocoder"])
    removed = strip(ref_weights["hifigan_removed"], "first_stage_model.vocoder.")
    for k, v in removed.items():
        torch.testing.assert_close(res.state_dicts["vocoder"][k].float(), v, rtol=0, atol=1e-6)


def test_clap_file_layout_with_module_prefix(ref_weights):
    configs = reference_configs()
    clap = {"module." + k[len(CLAP_PREFIX):]: v for k, v in ref_weights["clap_text"].items()}
    clap["module.text_branch.embeddings.position_ids"] = torch.arange(514)[None]
    clap["module.logit_scale_a"] = torch.tensor(1.0)
    res = ck.route_files({ck.CLAP_FILE: clap}, configs)
    ck.check_state_dict("clap_text", res.state_dicts["clap_text"], configs["clap_text"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda sd: sd.__setitem__("bogus.weight", torch.zeros(1)), "unknown keys: bogus.weight"),
        (lambda sd: sd.__setitem__("module.bogus.weight", torch.zeros(1)), "unexpected keys: bogus.weight"),
        (lambda sd: sd.pop("module.projection1.0.bias"), "missing keys: projection1.0.bias"),
        (lambda sd: sd.__setitem__("module.projection1.0.bias", torch.zeros(3)), "mis-shaped keys: projection1.0.bias (3,)"),
        (lambda sd: sd.__setitem__("module.hint_blocks.blocks.9.norm_1.weight", torch.zeros(768)),
         "unexpected keys: hint_blocks.blocks.9.norm_1.weight"),
    ],
)
def test_bad_keys_are_named(ref_weights, mutate, message):
    configs = reference_configs()
    sd = dict(ref_weights["phi"])
    mutate(sd)
    with pytest.raises(ck.CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        res = ck.route_files({ck.PHI_FILE: sd}, configs)
        ck.check_state_dict("phi", res.state_dicts["phi"], configs["phi"])


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    assert import_main(["--src", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "none of the released files" in err and "\n" not in err
    (tmp_path / ck.PHI_FILE).write_bytes(b"not a checkpoint")
    assert import_main(["--src", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "o" / "phi.safetensors").exists()


# ---- full size: manifests ---------------------------------------------------------------------

MANIFEST_FILES = [ck.REWAS_FILE, ck.PHI_FILE, ck.SYNCHFORMER_FILE, ck.VAE_FILE, ck.HIFIGAN_FILE, ck.CLAP_FILE]


def meta_state_dict(manifest: dict) -> dict:
    return {k: torch.empty(shape, dtype=getattr(torch, dtype), device="meta") for k, (shape, dtype) in manifest["keys"].items()}


@pytest.fixture(scope="module")
def manifests() -> dict:
    return {name: reference.load_manifest(name) for name in MANIFEST_FILES}


def test_full_size_release_imports_exactly(manifests):
    files = {name: meta_state_dict(m) for name, m in manifests.items()}
    configs = rewas_m()
    res = ck.route_files(files, configs)
    assert set(res.state_dicts) == set(ck.COMPONENTS)
    for component, sd in res.state_dicts.items():
        ck.check_state_dict(component, sd, configs[component])
    # the EMA shadow copy is what ends up as the UNet weights
    rewas = files[ck.REWAS_FILE]
    assert res.used_ema
    assert all(res.state_dicts["unet"][k] is rewas[ema_key_for(k)] for k in res.state_dicts["unet"])
    counts = {c: sum(t.numel() for t in sd.values()) for c, sd in res.state_dicts.items()}
    pc = manifests[ck.REWAS_FILE]["param_counts"]
    assert counts["unet"] == pc["unet_model_diffusion_model"]
    assert counts["adapter"] == pc["adapter_control_model"]
    assert counts["vae"] == pc["vae_encoder"] + pc["vae_decoder"] + pc["vae_quant_conv"] + pc["vae_post_quant_conv"]
    assert counts["vocoder"] == pc["vocoder_weightnorm_removed"]
    assert counts["clap_text"] == pc["clap_text_branch_roberta"] + pc["clap_text_projection"]
    assert counts["synchformer"] == manifests[ck.SYNCHFORMER_FILE]["param_counts"]["vfeat_extractor"]
    assert counts["phi"] == manifests[ck.PHI_FILE]["param_counts"]["total"]


def test_full_size_separate_files_alone(manifests):
    """VAE, HiFi-GAN (weight norm) and CLAP files without the ReWaS checkpoint."""
    names = [ck.VAE_FILE, ck.HIFIGAN_FILE, ck.CLAP_FILE]
    res = ck.route_files({n: meta_state_dict(manifests[n]) for n in names}, rewas_m())
    assert set(res.state_dicts) == {"vae", "vocoder", "clap_text"}
    for component, sd in res.state_dicts.items():
        ck.check_state_dict(component, sd, rewas_m()[component])
