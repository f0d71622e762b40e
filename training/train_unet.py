"""Train the text-to-audio UNet on VAE latents with CLAP FiLM conditioning: a demo-model stage.

    python -m training.train_unet --config demo --checkpoints CKPT/ --data DATA/manifest.jsonl --out runs/unet

``CKPT`` is a canonical folder holding the trained ``vae`` (with its measured ``scale_factor``),
``clap_text`` and ``tokenizer.json``; both stay frozen. Loss: ε-prediction MSE as AudioLDM /
``train_adapter``: x₀ = ``scale_factor ·`` posterior sample of the window's log-mel (fresh
noise each step), t ~ U{0, …, 999}, x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε with the released linear
schedule (``rewas_rt.ddim.linear_schedule``: 0.0015 → 0.0195, 1000 steps), FiLM = the CLAP
embedding of one of the class's caption wordings drawn at random, replaced by the "" embedding
with probability ``unet.cfg_dropout`` (classifier-free guidance). Steps see random time crops
of ``unet.crop_frames`` latent frames (the UNet is convolutional with attention only at the
coarse levels; FiLM is global). Validation: ε-MSE on the validation windows (full length) at
fixed timesteps with fixed noise, with the caption and with "" (the gap shows the text is used).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rewas_rt.ddim import linear_schedule
from training import trainlib
from training.config import UnetTrainerConfig
from training.components import CheckpointSource, freeze
from training.data import FeatureStore
from training.demo_common import main as demo_main
from training.demo_common import model_config, start_run, val_summary
from training.models.unet import UNet
from training.synthetic import CAPTIONS, CLASSES

COMPONENT = "unet"
DEFAULTS = UnetTrainerConfig  # the typed config (training/config.py)


def vae_moments(source: CheckpointSource, mels: np.ndarray, cache: Path, log=print) -> np.ndarray:
    """Posterior moments (N, 16, 128, 16) of log-mels (N, 512, 64), cached under the VAE's fingerprint."""
    path = cache / f"moments-{source.fingerprint('vae')[:16]}-{len(mels)}.npy"
    if path.is_file():
        return np.load(path)
    vae = freeze(source.load("vae"))
    out = []
    with torch.no_grad():
        for i in range(0, len(mels), 8):
            out.append(vae.encode_moments(torch.from_numpy(mels[i: i + 8, None])).numpy())
            if (i // 8) % 20 == 0:
                log(f"vae moments {i + len(out[-1])}/{len(mels)}")
    arr = np.concatenate(out)
    np.save(path, arr)
    return arr


def run(cfg: dict, out: Path, args=None, log=print) -> dict:
    t, u = cfg["train"], cfg["unet"]
    if not args or not args.checkpoints:
        raise ValueError("pass --checkpoints DIR with the trained vae, clap_text and tokenizer.json")
    device, manifest, train, val = start_run(cfg, out, log)
    source = CheckpointSource(args.checkpoints)
    scale = float(source.config("vae").scale_factor)
    tr_m = torch.from_numpy(vae_moments(source, train.log_mel, out, log))
    va_m = torch.from_numpy(vae_moments(source, val.log_mel, out, log))
    store = FeatureStore(source, Path(cfg["data"]["cache_dir"]), device, log=log)
    wordings = [[torch.from_numpy(store.text_embedding(c)) for c in CAPTIONS[label]] for label in CLASSES]
    uncond = torch.from_numpy(store.text_embedding("")).to(device)
    val_text = torch.stack([torch.from_numpy(store.text_embedding(c)) for c in val.captions]).to(device)
    labels = torch.from_numpy(train.label)
    unet_cfg = model_config(cfg, COMPONENT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        model = UNet(unet_cfg).to(device)
    _, acp = linear_schedule()
    alphas = torch.tensor(acp, dtype=torch.float32, device=device)
    crop = int(u["crop_frames"])
    if crop % 8 or not 8 <= crop <= tr_m.shape[2]:
        raise ValueError(f"unet.crop_frames {crop}: a multiple of 8 up to {tr_m.shape[2]}")

    def latent(m: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        mean, logvar = torch.chunk(m, 2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        return scale * (mean + std * torch.randn(mean.shape, generator=g))

    def loss_of(x0, film, steps, eps):
        ab = alphas[steps][:, None, None, None]
        return F.mse_loss(model(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, steps, film), eps)

    def micro_step(step: int) -> torch.Tensor:
        n = t["batch_size"]
        idx = torch.randint(len(tr_m), (n,))
        starts = torch.randint(0, (tr_m.shape[2] - crop) // 8 + 1, (n,)) * 8
        x0 = latent(torch.stack([tr_m[i, :, s:s + crop] for i, s in zip(idx, starts)])).to(device)
        picks = torch.rand(n).tolist()
        film = torch.stack([wordings[int(c)][int(p * len(wordings[int(c)]))] for c, p in zip(labels[idx], picks)])
        drop = torch.rand(n) < u["cfg_dropout"]
        film = torch.where(drop[:, None].to(device), uncond[None], film.to(device))
        steps = torch.randint(0, len(acp), (n,)).to(device)
        return loss_of(x0, film, steps, torch.randn(x0.shape).to(device))

    def validate(step: int) -> dict:
        g = torch.Generator().manual_seed(cfg["seed"] + 2)
        ts = torch.tensor(u["val_timesteps"], device=device)
        total, total_unc = [], []
        for i in range(len(va_m)):
            x0 = latent(va_m[i: i + 1], g).to(device).expand(len(ts), -1, -1, -1)
            eps = torch.randn(x0.shape, generator=g).to(device)
            total.append(loss_of(x0, val_text[i: i + 1].expand(len(ts), -1), ts, eps).item())
            total_unc.append(loss_of(x0, uncond[None].expand(len(ts), -1), ts, eps).item())
        return {"val_loss": float(np.mean(total)), "val_loss_uncond": float(np.mean(total_unc))}

    meta = {"trained": {"trainer": "training.train_unet", "seed": cfg["seed"], "data": str(manifest),
                        "vae_scale_factor": scale}}
    return trainlib.run(cfg, out, COMPONENT, model, unet_cfg, list(model.parameters()), device, micro_step,
                        validate, meta, None, args.resume, None, log,
                        f"crops of {crop} latent frames, cfg dropout {u['cfg_dropout']}")


from rewas_rt.errors import cli_main  # noqa: E402


@cli_main
def main(argv: list[str] | None = None) -> int:
    return demo_main(argv, "unet", __doc__, DEFAULTS, run, val_summary)


if __name__ == "__main__":
    sys.exit(main())
