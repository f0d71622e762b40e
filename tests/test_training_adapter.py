"""Energy-adapter trainer on the tiny preset: ControlNet initialisation, frozen base,
overfitting, bit-for-bit resume, canonical output."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.training_helpers import config, quiet, synthetic_set
from tests.training_helpers import restore_torch_threads  # noqa: F401 (autouse fixture)
from training import train_adapter, trainlib
from training.checkpoints import COMPONENTS, load_component
from training.components import CheckpointSource, RandomSource, export_canonical
from training.models.adapter import Adapter
from training.models.denoiser import Denoiser

OVERFIT_FACTOR = 2.0  # ε-loss on one fixed batch (2 windows, fixed t and noise) ...
OVERFIT_STEPS = 60  # ... drops at least this much within this many steps (measured ~2.4x)


@pytest.fixture(scope="module")
def source():
    return RandomSource("tiny", 0)


@pytest.fixture(scope="module")
def fresh(source):
    unet = source.load("unet")
    adapter = Adapter(source.config("adapter"))
    report = train_adapter.controlnet_init(adapter, unet)
    return unet, adapter, report


def test_controlnet_init_copies_the_unet_encoder(fresh):
    unet, adapter, report = fresh
    unet_sd, sd = unet.state_dict(), adapter.state_dict()
    assert report["copied"] and set(report["copied"]) == set(sd) & set(unet_sd)
    for name in report["copied"]:
        assert torch.equal(sd[name], unet_sd[name]), name
    # Everything else is one of the adapter-only layers.
    assert set(sd) == set(report["copied"]) | set(report["zero"]) | set(report["own_init"])
    assert all(n.startswith(("input_blocks.", "middle_block.", "time_embed.", "film_emb.")) for n in report["copied"])


def test_controlnet_init_zeroes_what_controlnet_zeroes(fresh):
    _, adapter, report = fresh
    zero = set(report["zero"])
    n_controls = len(adapter.zero_convs)
    expected = ({f"zero_convs.{i}.0.{p}" for i in range(n_controls) for p in ("weight", "bias")}
                | {"middle_block_out.0.weight", "middle_block_out.0.bias",
                   "input_hint_block.4.weight", "input_hint_block.4.bias"})
    assert zero == expected
    sd = adapter.state_dict()
    assert all(not sd[n].any() for n in zero)
    # The hint block's Linear keeps PyTorch's random init (as ControlNet's hint convs do).
    assert set(report["own_init"]) == {"input_hint_block.1.weight", "input_hint_block.1.bias"}
    assert sd["input_hint_block.1.weight"].any()


def test_fresh_adapter_leaves_the_unet_unchanged(fresh):
    unet, adapter, _ = fresh
    g = torch.Generator().manual_seed(0)
    x, hint = torch.randn(2, 8, 128, 16, generator=g), torch.randn(2, 8, 128, 16, generator=g)
    t, film = torch.tensor([3, 900]), torch.nn.functional.normalize(torch.randn(2, 512, generator=g), dim=-1)
    with torch.no_grad():
        assert torch.equal(Denoiser(unet, adapter)(x, t, film, hint), unet(x, t, film))


def test_only_adapter_parameters_are_trainable(fresh):
    unet, adapter, _ = fresh
    for p in unet.parameters():
        p.requires_grad_(False)
    denoiser = Denoiser(unet, adapter)
    train_adapter.assert_only_adapter_trainable(denoiser, list(adapter.parameters()))
    with pytest.raises(AssertionError):
        train_adapter.assert_only_adapter_trainable(denoiser, list(adapter.parameters())[1:])
    next(unet.parameters()).requires_grad_(True)
    try:
        with pytest.raises(AssertionError, match="requires_grad"):
            train_adapter.assert_only_adapter_trainable(denoiser, list(adapter.parameters()))
    finally:
        next(unet.parameters()).requires_grad_(False)


def _losses(out):
    return [r["loss"] for r in trainlib.read_log(out / "log.jsonl") if r["event"] == "train"]


def test_overfits_a_fixed_batch_and_base_stays_frozen(tmp_path, source):
    cfg = config("adapter", train_adapter.DEFAULTS, **{
        "train.steps": OVERFIT_STEPS, "train.batch_size": 2, "train.grad_accum": 1, "train.overfit_batch": True,
        "optim.lr": 2e-3, "optim.warmup_steps": 0, "optim.weight_decay": 0.0, "train.ckpt_every": 0})
    export = tmp_path / "model"
    train_adapter.run(cfg, tmp_path / "run", source, export_dir=export, log=quiet)
    losses = _losses(tmp_path / "run")
    assert len(losses) == OVERFIT_STEPS
    assert losses[0] / losses[-1] >= OVERFIT_FACTOR, (losses[0], losses[-1])
    # The canonical folder: the trained adapter, the frozen components exactly as given.
    for component in COMPONENTS:
        load_component(export, component)
    for component in ("unet", "vae", "clap_text"):
        saved = load_file(str(export / f"{component}.safetensors"))
        assert all(torch.equal(v, saved[k]) for k, v in source.load(component).state_dict().items()), component
    trained = load_file(str(export / "adapter.safetensors"))
    assert trained["zero_convs.0.0.weight"].any()  # it moved away from the ControlNet init
    info = json.loads((export / "adapter.json").read_text())
    assert info["trained"]["init"] == "unet" and info["step"] == OVERFIT_STEPS


def test_resume_is_bit_for_bit(tmp_path, source):
    """Posterior-sampled latents, CFG dropout, random timesteps and noise: all from the saved RNG."""
    k = 2
    common = {"train.batch_size": 2, "train.grad_accum": 2, "train.steps": 2 * k, "data.latent": "sample",
              "optim.lr": 1e-3, "optim.warmup_steps": 1, "train.val_every": k,
              "adapter.val_timesteps": [100, 800]}
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_adapter.run(config("adapter", train_adapter.DEFAULTS, **common, **{"train.ckpt_every": k}), straight,
                      source, log=quiet)
    train_adapter.run(config("adapter", train_adapter.DEFAULTS, **common, **{"train.stop_at": k}), split,
                      source, log=quiet)
    train_adapter.run(config("adapter", train_adapter.DEFAULTS, **common), split, source, resume="latest", log=quiet)
    wa = load_file(str(straight / "checkpoints" / f"step_{2 * k:07d}" / "adapter.safetensors"))
    wb = load_file(str(split / "checkpoints" / f"step_{2 * k:07d}" / "adapter.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[n], wb[n]) for n in wa)
    assert _losses(straight) == _losses(split)
    vals = lambda out: [r for r in trainlib.read_log(out / "log.jsonl") if r["event"] == "val"]  # noqa: E731
    assert [v["val_loss"] for v in vals(straight)] == [v["val_loss"] for v in vals(split)]


def test_cli_trains_against_a_canonical_folder(tmp_path, source):
    """--checkpoints DIR with the frozen components; --export-dir DIR itself updates it in place."""
    # Two clips (one train, one val) of the shared set: new weights files mean new cache keys.
    rows = [json.loads(line) for line in synthetic_set().read_text().splitlines()]
    rows = [next(r for r in rows if r["split"] == s) for s in ("train", "val")]
    for r in rows:
        r["video"] = str(synthetic_set().parent / r["video"])
    manifest = tmp_path / "two.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = tmp_path / "model"
    export_canonical(model, source, {})
    rc = train_adapter.main(["--config", "tiny", "--checkpoints", str(model), "--data", str(manifest),
                             "--out", str(tmp_path / "run"),
                             "--steps", "1", "--set", "train.val_every=0", "--set", "train.threads=1",
                             "--export-dir", str(model)])
    assert rc == 0
    info = json.loads((model / "adapter.json").read_text())
    assert info["trained"]["trainer"] == "training.train_adapter"
    # The frozen components are still the given ones (not rewritten), the tokenizer is kept.
    assert CheckpointSource(model).tokenizer().encode("").ids == [0, 2]
    unet = load_file(str(model / "unet.safetensors"))
    assert all(torch.equal(v, unet[k]) for k, v in source.load("unet").state_dict().items())
