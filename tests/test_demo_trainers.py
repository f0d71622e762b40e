"""Each demo trainer (training.demo's stages) runs a few steps on a CI-sized synthetic set, writes
canonical components the next stage and the export read, and resumes; the tokenizer follows
RoBERTa's conventions. (CI never retrains the demo model: these check the code, not the quality.)"""
from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training_helpers import restore_torch_threads  # noqa: F401  (autouse fixture)
from training import train_clap, train_unet, train_vae, train_video, train_vocoder, trainlib
from training.checkpoints import load_component
from training.synthetic import SynthConfig, generate_splits

CLASSES = ("impact", "hum")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo-data")
    return generate_splits(root, {"train": 1, "val": 1}, seed=3, cfg=SynthConfig(duration=5.44), log=lambda _: None,
                           classes=CLASSES)


def config(module, manifest: Path, **over) -> dict:
    cfg = trainlib.load_config("demo", module.__name__.rsplit("_", 1)[-1], module.DEFAULTS)
    cfg["data"]["manifest"] = str(manifest)
    cfg["data"]["cache_dir"] = str(manifest.parent / "cache")
    cfg["train"].update({"steps": 2, "log_every": 1, "val_every": 2, "ckpt_every": 1, "threads": 1})
    for key, value in over.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return cfg


def quiet(_):
    pass


def test_splits_are_separate_streams(data):
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert [(r["split"], r["label"]) for r in rows] == [("train", "impact"), ("train", "hum"),
                                                        ("val", "impact"), ("val", "hum")]
    a, b = (data.parent / rows[0]["video"]).read_bytes(), (data.parent / rows[2]["video"]).read_bytes()
    assert a != b  # same class and index, different split: different clip


def test_tokenizer_is_roberta_like():
    tok = train_clap.fit_tokenizer(train_clap.caption_corpus(), 384)
    assert tok.encode("").ids == [0, 2]
    ids = tok.encode("rain").ids
    assert ids[0] == 0 and ids[-1] == 2 and len(ids) == 3  # a caption word is one token
    assert tok.get_vocab_size() <= 384


@pytest.fixture(scope="module")
def stages(data, tmp_path_factory):
    """VAE and CLAP for 2 steps each, assembled into a canonical folder for the UNet."""
    root = tmp_path_factory.mktemp("demo-runs")
    vae = train_vae.run(config(train_vae, data, **{"vae.crop_frames": 16, "vae.scale_windows": 4,
                                                   "vae.val_windows": 1, "train.batch_size": 2}), root / "vae", log=quiet)
    clap = train_clap.run(config(train_clap, data, **{"train.batch_size": 4}), root / "clap", log=quiet)
    ckpt = root / "checkpoints"
    ckpt.mkdir()
    for src, comp in ((root / "vae" / "final", "vae"), (root / "clap" / "checkpoints" / "step_0000002", "clap_text")):
        for suffix in (".safetensors", ".json"):
            shutil.copyfile(src / f"{comp}{suffix}", ckpt / f"{comp}{suffix}")
    shutil.copyfile(root / "clap" / "tokenizer.json", ckpt / "tokenizer.json")
    return root, vae, clap, ckpt


def test_vae_measures_its_scale_factor(stages):
    _, vae, _, ckpt = stages
    assert vae["complete"] and np.isfinite(vae["final_loss"]) and "val_l1" in vae["val"]
    model, cfg = load_component(ckpt, "vae")
    assert cfg.scale_factor == pytest.approx(vae["scale_factor"]) and cfg.scale_factor > 0


def test_clap_resumes_with_its_audio_tower(data, stages, tmp_path):
    root, _, clap, _ = stages
    assert clap["complete"] and "val_audio_to_text_acc" in clap["val"]
    cfg = config(train_clap, data, **{"train.batch_size": 4, "train.val_every": 0})
    train_clap.run(dict(cfg, train={**cfg["train"], "stop_at": 1}), tmp_path / "r", log=quiet)
    train_clap.run(cfg, tmp_path / "r", types.SimpleNamespace(resume="latest"), log=quiet)
    train_clap.run(cfg, tmp_path / "s", log=quiet)
    for name in ("clap_text.safetensors", "audio_tower.safetensors"):
        from safetensors.torch import load_file

        a = load_file(str(tmp_path / "r" / "checkpoints" / "step_0000002" / name))
        b = load_file(str(tmp_path / "s" / "checkpoints" / "step_0000002" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_vocoder_steps(data, tmp_path):
    r = train_vocoder.run(config(train_vocoder, data, **{"vocoder.crop_frames": 8, "vocoder.val_windows": 1,
                                                         "train.batch_size": 2}), tmp_path, log=quiet)
    assert r["complete"] and np.isfinite(r["final_loss"]) and "val_mel_l1" in r["val"]
    load_component(tmp_path / "checkpoints" / "step_0000002", "vocoder")


def test_video_trains_synchformer_with_phi(data, tmp_path):
    r = train_video.run(config(train_video, data, **{"video.segments": 1, "train.batch_size": 1}), tmp_path, log=quiet)
    assert r["complete"] and np.isfinite(r["val"]["val_energy_mae"])
    step = tmp_path / "checkpoints" / "step_0000002"
    enc, _ = load_component(step, "synchformer")
    fresh, _ = load_component(step, "phi")
    assert enc.pos_embed.abs().sum() > 0 and fresh.config.attention == "time"


def test_unet_trains_on_the_trained_vae_and_clap(data, stages, tmp_path):
    _, _, _, ckpt = stages
    args = types.SimpleNamespace(checkpoints=ckpt, resume=None)
    r = train_unet.run(config(train_unet, data, **{"unet.crop_frames": 16, "train.batch_size": 2}), tmp_path, args,
                       log=quiet)
    assert r["complete"] and {"val_loss", "val_loss_uncond"} <= set(r["val"])
    load_component(tmp_path / "checkpoints" / "step_0000002", "unet")


def test_audio_losses_match_the_runtime_log_mel():
    from rewas_rt import energy as E
    from training.audio_losses import log_mel, multi_resolution_stft_loss

    w = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.3
    w = w[: len(w) // 160 * 160]
    np.testing.assert_allclose(log_mel(torch.from_numpy(w)[None])[0].numpy(), E.log_mel(w), atol=1e-4)
    x = torch.from_numpy(w)[None]
    assert multi_resolution_stft_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert multi_resolution_stft_loss(0.5 * x, x).item() > 0.1


def test_adapter_config_derived_from_the_unet_when_the_folder_has_none():
    from training.models import presets
    from training.train_adapter import adapter_config

    class NoAdapter:
        def config(self, component):
            raise KeyError(component)

    unet = presets.preset("demo")["unet"]
    a = adapter_config(NoAdapter(), unet)
    assert (a.model_channels, a.channel_mult, a.attention_resolutions, a.legacy) == (
        unet.model_channels, unet.channel_mult, unet.attention_resolutions, unet.legacy)


def test_demo_command_compares_its_weights_with_the_builtin_model(tmp_path):
    """training.demo ends by saying which components came out as the shipped model's (weight ids
    in both manifests): all of them for the built-in directory itself, and exactly the changed
    one for a manifest whose UNet weights differ."""
    from rewas_rt.builtin import demo_engine_dir
    from training.demo import compare_with_builtin

    same, differ = compare_with_builtin(demo_engine_dir())
    assert differ == [] and len(same) == 7
    m = json.loads((demo_engine_dir() / "manifest.json").read_text())
    m["model"]["components"]["unet"]["weights"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    same, differ = compare_with_builtin(tmp_path)
    assert differ == ["unet"] and "unet" not in same and len(same) == 6
