"""Train the VAE (AudioLDM's AutoencoderKL on log-mel) from scratch: the demo model's first stage.

    python -m training.train_vae --config demo --data DATA/manifest.jsonl --out runs/vae

Loss, as AudioLDM's VAE without its discriminator/LPIPS terms (no pretrained perceptual net
here): L1 reconstruction of the log-mel + ``vae.kl_weight`` · KL(q(z|x) ‖ N(0, I)) (summed over
latent elements, averaged over the batch, as ``DiagonalGaussianDistribution.kl``), the decoder
fed the posterior *sample*. Batches are random time crops of ``vae.crop_frames`` mel frames (the
network is convolutional; the single mid-block attention sees a shorter context) from the
training windows; a fraction ``vae.hint_fraction`` of the items are energy-hint images (an
energy curve copied to all 64 bins, ``rewas_rt.energy.energy_to_vae_input``), because the
energy adapter's hint goes through this same encoder.

At the end the latent scale is measured, as AudioLDM does (``scale_factor = 1 / std`` of the
posterior samples of training windows), and written into the VAE's config in
``<out>/final/vae.safetensors``/``.json`` — the component the later stages and the export
read. Validation: L1 of full 512-frame windows of the validation split (posterior mean).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rewas_rt import energy as E
from training import trainlib
from training.config import VaeTrainerConfig
from training.checkpoints import load_component, save_component
from training.demo_common import main as demo_main
from training.demo_common import model_config, start_run, val_summary
from training.models.vae import VAE

COMPONENT = "vae"
DEFAULTS = VaeTrainerConfig  # the typed config (training/config.py)


def kl_loss(moments: torch.Tensor) -> torch.Tensor:
    mean, logvar = torch.chunk(moments, 2, dim=1)
    logvar = torch.clamp(logvar, -30.0, 20.0)
    return 0.5 * torch.sum(mean.pow(2) + logvar.exp() - 1.0 - logvar, dim=(1, 2, 3)).mean()


def run(cfg: dict, out: Path, args=None, log=print) -> dict:
    t, v = cfg["train"], cfg["vae"]
    device, manifest, train, val = start_run(cfg, out, log)
    mels = torch.from_numpy(train.log_mel)  # (N, 512, 64)
    hints = torch.from_numpy(E.energy_to_vae_input(train.energy_512))[:, 0]  # (N, 512, 64)
    val_mels = torch.from_numpy(val.log_mel)
    vae_cfg = model_config(cfg, COMPONENT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        model = VAE(vae_cfg).to(device)
    crop = int(v["crop_frames"])
    if crop % 4 or not 4 <= crop <= mels.shape[1]:
        raise ValueError(f"vae.crop_frames {crop}: a multiple of 4 between 4 and {mels.shape[1]}")

    def micro_step(step: int) -> torch.Tensor:
        n = t["batch_size"]
        idx = torch.randint(len(mels), (n,))
        starts = torch.randint(0, mels.shape[1] - crop + 1, (n,))
        use_hint = torch.rand(n) < v["hint_fraction"]
        x = torch.stack([(hints if h else mels)[i, s:s + crop] for i, s, h in zip(idx, starts, use_hint)])[:, None]
        x = x.to(device)
        moments = model.encode_moments(x)
        mean, std = model.posterior(moments)
        z = mean + std * torch.randn_like(std)
        rec = model.decoder(model.post_quant_conv(z))
        return F.l1_loss(rec, x) + v["kl_weight"] * kl_loss(moments)

    def validate(step: int) -> dict:
        errs = []
        for i in np.linspace(0, len(val_mels) - 1, min(v["val_windows"], len(val_mels))).round().astype(int):
            x = val_mels[i: i + 1, None].to(device)
            mean, _ = model.posterior(model.encode_moments(x))
            errs.append(F.l1_loss(model.decoder(model.post_quant_conv(mean)), x).item())
        return {"val_l1": float(np.mean(errs))}

    meta = {"trained": {"trainer": "training.train_vae", "seed": cfg["seed"], "data": str(manifest)}}
    result = trainlib.run(cfg, out, COMPONENT, model, vae_cfg, list(model.parameters()), device, micro_step,
                          validate, meta, None, args.resume if args else None, None, log,
                          f"crops of {crop} frames, kl {v['kl_weight']}")
    if result["complete"]:
        result["scale_factor"] = finalize(out, model, mels, int(v["scale_windows"]), meta, log)
        (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def finalize(out: Path, model: VAE, mels: torch.Tensor, n: int, meta: dict, log=print) -> float:
    """Measure 1/std of posterior samples over ``n`` evenly spaced training windows and write
    ``<out>/final/vae.*`` with that ``scale_factor``."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    zs = []
    with torch.no_grad():
        for i in np.linspace(0, len(mels) - 1, min(n, len(mels))).round().astype(int):
            mean, std = model.posterior(model.encode_moments(mels[i: i + 1, None]))
            zs.append(mean + std * torch.randn(std.shape, generator=g))
    scale = float(1.0 / torch.cat(zs).flatten().std())
    final = out / "final"
    final.mkdir(exist_ok=True)
    cfg = type(model.config)(**{**model.config.to_dict(), "scale_factor": scale})
    save_component(final, COMPONENT, model.state_dict(), cfg, {**meta, "scale_factor_measured_on": len(zs)})
    load_component(final, COMPONENT)  # round-trip check
    log(f"scale_factor {scale:.4f} (1/std of {len(zs)} training latents) -> {final}")
    return scale


from rewas_rt.errors import cli_main  # noqa: E402


@cli_main
def main(argv: list[str] | None = None) -> int:
    return demo_main(argv, "vae", __doc__, DEFAULTS, run, val_summary)


if __name__ == "__main__":
    sys.exit(main())
