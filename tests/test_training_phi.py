"""φ trainer on the tiny preset and the shared synthetic set: overfitting, bit-for-bit resume,
mixed precision path, the attention comparison, canonical output."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.training_helpers import config, quiet, synthetic_set
from tests.training_helpers import restore_torch_threads  # noqa: F401 (autouse fixture)
from training import train_phi, trainlib
from training.checkpoints import COMPONENTS, load_component
from training.compare_phi_attention import compare
from training.components import RandomSource

# The loss on one fixed window must drop at least this much within this many steps (measured:
# ~25x by step 50). One window: the random tiny Synchformer maps different clips to nearly the
# same features, so a batch of several clips cannot be fitted nearly as far (~3x in 300 steps);
# that is the random encoder, not the trainer.
OVERFIT_FACTOR = 5.0
OVERFIT_STEPS = 60


@pytest.fixture(scope="module")
def source():
    return RandomSource("tiny", 0)


def _losses(out):
    return [r["loss"] for r in trainlib.read_log(out / "log.jsonl") if r["event"] == "train"]


def test_overfits_a_fixed_batch(tmp_path, source):
    cfg = config("phi", train_phi.DEFAULTS, **{
        "train.steps": OVERFIT_STEPS, "train.batch_size": 1, "train.overfit_batch": True,
        "optim.lr": 3e-3, "optim.warmup_steps": 0, "optim.schedule": "constant", "optim.weight_decay": 0.0})
    train_phi.run(cfg, tmp_path, source, log=quiet)
    losses = _losses(tmp_path)
    assert len(losses) == OVERFIT_STEPS
    assert losses[0] / losses[-1] >= OVERFIT_FACTOR, (losses[0], losses[-1])


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_resume_is_bit_for_bit(tmp_path, source, precision):
    """2k straight steps == k steps (interrupted), then resume for k more: same parameters,
    optimizer state, log. Warm-up and cosine schedule, gradient accumulation; fp16 runs CPU
    autocast with a GradScaler, whose state is part of the checkpoint."""
    k = 3
    common = {"train.batch_size": 3, "train.grad_accum": 2, "train.precision": precision, "train.steps": 2 * k,
              "optim.warmup_steps": 2, "optim.schedule": "cosine", "train.val_every": k}
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_phi.run(config("phi", train_phi.DEFAULTS, **common, **{"train.ckpt_every": k}), straight, source, log=quiet)
    train_phi.run(config("phi", train_phi.DEFAULTS, **common, **{"train.stop_at": k}), split, source, log=quiet)
    assert (split / "checkpoints" / "latest").read_text().strip() == f"step_{k:07d}"
    train_phi.run(config("phi", train_phi.DEFAULTS, **common), split, source, resume="latest", log=quiet)
    a = straight / "checkpoints" / f"step_{2 * k:07d}"
    b = split / "checkpoints" / f"step_{2 * k:07d}"
    wa, wb = load_file(str(a / "phi.safetensors")), load_file(str(b / "phi.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    sa = torch.load(a / trainlib.STATE_FILE, weights_only=False)
    sb = torch.load(b / trainlib.STATE_FILE, weights_only=False)
    assert sa["step"] == sb["step"] == 2 * k
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert all(torch.equal(pa[n], pb[n]) for n in pa)
    assert sa["scaler"] == sb["scaler"]
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])
    # The resumed run logs the same losses for steps k+1 … 2k.
    la, lb = _losses(straight), _losses(split)
    assert la == lb


def test_attention_layouts_compared(tmp_path, source):
    cfg = config("phi", train_phi.DEFAULTS, **{"train.steps": 6, "train.val_every": 6, "train.batch_size": 4})
    result = compare(cfg, tmp_path, source, seeds=[0], log=quiet)
    assert [r["attention"] for r in result["runs"]] == ["batch", "time"]
    for r in result["runs"]:
        assert np.isfinite(r["val_energy_mae"]) and r["val_energy_mae"] > 0
        folder = tmp_path / f"{r['attention']}_seed0" / "checkpoints" / "step_0000006"
        model, phi_cfg = load_component(folder, "phi")
        assert phi_cfg.attention == r["attention"]
    # Same seed and data: the two runs differ only in the attention layout.
    assert result["runs"][0]["first_loss"] != result["runs"][1]["first_loss"]
    assert json.loads((tmp_path / "compare.json").read_text())["summary"].keys() == {"batch", "time"}


def test_cli_writes_a_complete_canonical_folder(tmp_path):
    manifest = synthetic_set()
    export = tmp_path / "model"
    rc = train_phi.main(["--config", "tiny", "--random-weights", "--data", str(manifest),
                         "--cache-dir", str(manifest.parent / "cache"), "--out", str(tmp_path / "run"),
                         "--steps", "2", "--set", "train.val_every=2", "--set", "train.threads=1",
                         "--export-dir", str(export)])
    assert rc == 0
    for component in COMPONENTS:
        load_component(export, component)  # strict: keys, shapes, config
    assert (export / "tokenizer.json").is_file()
    info = json.loads((export / "phi.json").read_text())
    assert info["config"]["attention"] == "time" and info["trained"]["trainer"] == "training.train_phi"
    trained = load_file(str(tmp_path / "run" / "checkpoints" / "step_0000002" / "phi.safetensors"))
    exported = load_file(str(export / "phi.safetensors"))
    assert all(torch.equal(trained[k], exported[k]) for k in trained)
    # The frozen components are the random ones the run trained against.
    src = RandomSource("tiny", 0)
    unet = load_file(str(export / "unet.safetensors"))
    assert all(torch.equal(v, unet[k]) for k, v in src.load("unet").state_dict().items())
    log = trainlib.read_log(tmp_path / "run" / "log.jsonl")
    train = [r for r in log if r["event"] == "train"]
    assert {"step", "loss", "lr", "it_s"} <= train[0].keys()
    assert any(r["event"] == "val" and "val_energy_mae" in r for r in log)


def test_bad_config_is_one_line_error(tmp_path, capsys):
    rc = train_phi.main(["--config", "tiny", "--random-weights", "--out", str(tmp_path)])
    assert rc == 1
    assert "no data" in capsys.readouterr().err
