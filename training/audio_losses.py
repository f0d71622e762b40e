"""Differentiable audio features for the demo trainers (PyTorch twins of ``rewas_rt.energy``).

``log_mel`` equals ``rewas_rt.energy.log_mel`` (reflect pad 432, |STFT| n_fft 1024 hop 160
Hann, centre=False, slaney mel 64 bins 0–8 kHz, log of the magnitude clamped at 1e-5; tested
against it), so the vocoder's mel loss is computed in the very space its input lives in.
``multi_resolution_stft_loss`` is Parallel WaveGAN's / HiFi-GAN v2's auxiliary loss: spectral
convergence + L1 of log magnitudes at three resolutions.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from rewas_rt import constants as C


@functools.cache
def _mel_basis() -> torch.Tensor:
    from rewas_rt.energy import mel_filterbank

    return torch.from_numpy(mel_filterbank().copy()).float()  # (64, 513)


def log_mel(wave: torch.Tensor) -> torch.Tensor:
    """(B, N) waveform → (B, N // 160, 64) natural-log mel magnitude (frames first, as the VAE sees it)."""
    x = F.pad(wave[:, None], (C.STFT_PAD, C.STFT_PAD), mode="reflect")[:, 0]
    spec = torch.stft(x, C.N_FFT, C.HOP, C.WIN, torch.hann_window(C.WIN, device=wave.device), center=False,
                      return_complex=True).abs()
    mel = torch.matmul(_mel_basis().to(wave.device), spec)  # (B, 64, frames)
    return torch.log(torch.clamp(mel, min=C.LOG_MEL_CLAMP)).transpose(1, 2)


RESOLUTIONS = ((512, 128, 512), (1024, 256, 1024), (256, 64, 256))


def multi_resolution_stft_loss(pred: torch.Tensor, target: torch.Tensor, resolutions=RESOLUTIONS) -> torch.Tensor:
    total = pred.new_zeros(())
    for n_fft, hop, win in resolutions:
        window = torch.hann_window(win, device=pred.device)
        p = torch.stft(pred, n_fft, hop, win, window, return_complex=True).abs().clamp(min=1e-7)
        t = torch.stft(target, n_fft, hop, win, window, return_complex=True).abs().clamp(min=1e-7)
        sc = torch.linalg.norm(t - p, dim=(-2, -1)) / torch.linalg.norm(t, dim=(-2, -1)).clamp(min=1e-7)
        total = total + sc.mean() + F.l1_loss(torch.log(p), torch.log(t))
    return total / len(resolutions)
