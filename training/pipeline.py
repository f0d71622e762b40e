"""The ReWaS generation pipeline in PyTorch, written the way the original runs it.

This is the reference the NumPy runtime is tested against and the "PyTorch
eager" column of the benchmarks: the two CFG branches are separate model calls,
the adapter's hint path runs at every step, and the DDIM update is the original
formula in torch. Everything random is injected (``Noise``), so the runtime and
this pipeline can be fed the very same numbers.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from rewas_rt import constants as C
from rewas_rt.ddim import DDIMSchedule
from rewas_rt.energy import energy_from_phi
from rewas_rt.timings import TimingHook, Timings
from training.models.denoiser import Denoiser
from training.models.vae import VAE

COMPONENT_NAMES = ("synchformer", "phi", "clap_text", "vae", "unet", "adapter", "vocoder")


@dataclasses.dataclass
class Noise:
    """Every random draw of one generation, batch-first: hint posterior noise and
    x_T (B, 8, 128, 16), and per DDIM step noise (steps, B, 8, 128, 16)."""

    hint: np.ndarray
    x_T: np.ndarray
    steps: np.ndarray


class TorchPipeline:
    """``timing_hook(stage, start, end)``, when given, sees every timed call: the stages of
    ``rewas_rt.pipeline.Pipeline`` (synchformer, phi, energy_post, vae_encoder, clap_text,
    unet_adapter per model call, vae_decoder, vocoder) plus ``sampler`` (the whole DDIM loop)."""

    def __init__(self, models: dict[str, torch.nn.Module], timing_hook: TimingHook | None = None):
        missing = set(COMPONENT_NAMES) - set(models)
        if missing:
            raise ValueError(f"missing components: {sorted(missing)}")
        self.m = models
        self.denoiser = Denoiser(models["unet"], models["adapter"]).eval()
        self.timings = Timings(timing_hook)

    @classmethod
    def from_checkpoints(cls, ckpt_dir: str | Path) -> "TorchPipeline":
        from training.checkpoints import load_component

        return cls({name: load_component(Path(ckpt_dir), name)[0] for name in COMPONENT_NAMES})

    @property
    def vae(self) -> VAE:
        return self.m["vae"]

    @torch.no_grad()
    def energy(self, video: np.ndarray) -> np.ndarray:
        """Normalised segments (B, S, C, T, H, W) -> smoothed energy curve (B, 512)."""
        with self.timings.stage("synchformer"):
            feats = self.m["synchformer"](torch.from_numpy(video))  # (B, S, 8, D)
        with self.timings.stage("phi"):
            phi_out = self.m["phi"](feats.reshape(feats.shape[0], -1, feats.shape[-1]))  # (B, 112, 1)
        with self.timings.stage("energy_post"):
            return energy_from_phi(phi_out.squeeze(-1).numpy())

    @torch.no_grad()
    def hint_latent(self, energy: np.ndarray, noise: np.ndarray | None) -> torch.Tensor:
        mel = torch.from_numpy(np.ascontiguousarray(energy, dtype=np.float32))[:, None, :, None]
        mel = mel.expand(-1, 1, -1, C.N_MELS)
        with self.timings.stage("vae_encoder"):
            return self.vae.encode_latent(mel, None if noise is None else torch.from_numpy(noise))

    @torch.no_grad()
    def text_embedding(self, ids: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        with self.timings.stage("clap_text"):
            return self.m["clap_text"](torch.from_numpy(ids), torch.from_numpy(mask))

    @torch.no_grad()
    def sample(self, film: torch.Tensor, uncond_film: torch.Tensor, hint: torch.Tensor, schedule: DDIMSchedule,
               guidance: float, noise: Noise, unconditional_hint: str = "zeros") -> torch.Tensor:
        """The original DDIM loop: uncond call, cond call, CFG, update (ddim.py p_sample_ddim).
        ``unconditional_hint`` "same": the uncond call sees the hint too (the manifest's option)."""
        x = torch.from_numpy(noise.x_T)
        zero_hint = hint if unconditional_hint == "same" else torch.zeros_like(hint)
        for step, i in enumerate(range(schedule.steps - 1, -1, -1)):
            t = torch.full((x.shape[0],), int(schedule.timesteps[i]), dtype=torch.int64)
            with self.timings.stage("unet_adapter"):
                e_u = self.denoiser(x, t, uncond_film, zero_hint)
            with self.timings.stage("unet_adapter"):
                e_c = self.denoiser(x, t, film, hint)
            e = e_u + guidance * (e_c - e_u)
            a_t = torch.full((), float(schedule.alphas[i]))
            a_prev = torch.full((), float(schedule.alphas_prev[i]))
            sigma = torch.full((), float(schedule.sigmas[i]))
            sqrt_1m = torch.full((), float(schedule.sqrt_one_minus_alphas[i]))
            pred_x0 = (x - sqrt_1m * e) / a_t.sqrt()
            x = a_prev.sqrt() * pred_x0 + (1.0 - a_prev - sigma**2).sqrt() * e + sigma * torch.from_numpy(noise.steps[step])
        return x

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> np.ndarray:
        """Latent -> waveform (B, 81920): the VAE's log-mel through the vocoder, trimmed."""
        with self.timings.stage("vae_decoder"):
            mel = self.vae.decode(latent)  # (B, 1, 512, 64)
        with self.timings.stage("vocoder"):
            wave = self.m["vocoder"](mel.squeeze(1).transpose(1, 2))  # (B, 1, 512·160 + 32)
        return wave[:, 0, : C.WAVE_SAMPLES].numpy()

    def generate(self, video: np.ndarray, ids: np.ndarray, mask: np.ndarray, uncond_ids: np.ndarray,
                 schedule: DDIMSchedule, guidance: float, noise: Noise,
                 unconditional_hint: str = "zeros") -> dict[str, np.ndarray]:
        energy = self.energy(video)
        hint = self.hint_latent(energy, noise.hint)
        film = self.text_embedding(ids, mask)
        uncond = self.text_embedding(uncond_ids, np.ones_like(uncond_ids)).expand(film.shape[0], -1)
        with self.timings.stage("sampler"):
            latent = self.sample(film, uncond, hint, schedule, guidance, noise, unconditional_hint)
        return {"energy": energy, "hint": hint.numpy(), "latent": latent.numpy(), "waveform": self.decode(latent)}
