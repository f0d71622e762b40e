"""Train the HiFi-GAN vocoder (log-mel → 16 kHz waveform) from scratch: a demo-model stage.

    python -m training.train_vocoder --config demo --data DATA/manifest.jsonl --out runs/vocoder

Input: the log-mel of the real audio (``rewas_rt.energy.log_mel`` of the normalised window,
exactly what the VAE decoder is trained to produce), as random crops of
``vocoder.crop_frames`` frames; target: the matching ``160 · crop_frames`` samples (the
generator's 32 extra output samples are cut, as at generation). Loss: L1 between the log-mels
of generated and real audio (HiFi-GAN's mel loss, in the input's own mel space via
``training.audio_losses.log_mel``) + ``vocoder.stft_weight`` · multi-resolution STFT loss
(spectral convergence + log-magnitude L1 at three resolutions). HiFi-GAN's discriminators are
not implemented (``trainlib`` drives one optimizer). They were never measured. The measurements
in training/DEMO.md ("Toward the targets") show that these two losses alone leave a buzz that a
log-mel classifier hears as hum, and that more steps lower the L1 without reliably removing it.
An adversarial stage is therefore the next thing to try for this vocoder.

Validation: the same losses on full 5.12 s validation windows, and the log-mel L1.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rewas_rt import constants as C
from training import trainlib
from training.config import VocoderTrainerConfig
from training.audio_losses import log_mel, multi_resolution_stft_loss
from training.demo_common import main as demo_main
from training.demo_common import model_config, start_run, val_summary
from training.models.hifigan import HiFiGAN

COMPONENT = "vocoder"
DEFAULTS = VocoderTrainerConfig  # the typed config (training/config.py)


def losses(model: HiFiGAN, mel: torch.Tensor, wave: torch.Tensor, stft_weight: float) -> tuple[torch.Tensor, float]:
    """mel (B, frames, 64), wave (B, 160·frames) → (total loss, log-mel L1)."""
    pred = model(mel.transpose(1, 2))[:, 0, : wave.shape[1]]
    mel_l1 = F.l1_loss(log_mel(pred), log_mel(wave))
    return mel_l1 + stft_weight * multi_resolution_stft_loss(pred, wave), float(mel_l1.detach())


def run(cfg: dict, out: Path, args=None, log=print) -> dict:
    t, v = cfg["train"], cfg["vocoder"]
    device, manifest, train, val = start_run(cfg, out, log)
    mels, waves = torch.from_numpy(train.log_mel), torch.from_numpy(train.wave)
    voc_cfg = model_config(cfg, COMPONENT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        model = HiFiGAN(voc_cfg).to(device)
    crop = int(v["crop_frames"])

    def micro_step(step: int) -> torch.Tensor:
        n = t["batch_size"]
        idx = torch.randint(len(mels), (n,))
        starts = torch.randint(0, mels.shape[1] - crop + 1, (n,))
        mel = torch.stack([mels[i, s:s + crop] for i, s in zip(idx, starts)]).to(device)
        wave = torch.stack([waves[i, s * C.HOP:(s + crop) * C.HOP] for i, s in zip(idx, starts)]).to(device)
        return losses(model, mel, wave, v["stft_weight"])[0]

    def validate(step: int) -> dict:
        idx = np.linspace(0, len(val) - 1, min(v["val_windows"], len(val))).round().astype(int)
        tot, mel_l1 = zip(*(losses(model, torch.from_numpy(val.log_mel[i: i + 1]).to(device),
                                   torch.from_numpy(val.wave[i: i + 1]).to(device), v["stft_weight"]) for i in idx))
        return {"val_loss": float(np.mean([x.item() for x in tot])), "val_mel_l1": float(np.mean(mel_l1))}

    meta = {"trained": {"trainer": "training.train_vocoder", "seed": cfg["seed"], "data": str(manifest)}}
    return trainlib.run(cfg, out, COMPONENT, model, voc_cfg, list(model.parameters()), device, micro_step,
                        validate, meta, None, args.resume if args else None, None, log,
                        f"crops of {crop} frames, mel L1 + {v['stft_weight']}·MR-STFT")


from rewas_rt.errors import cli_main  # noqa: E402


@cli_main
def main(argv: list[str] | None = None) -> int:
    return demo_main(argv, "vocoder", __doc__, DEFAULTS, run, val_summary)


if __name__ == "__main__":
    sys.exit(main())
