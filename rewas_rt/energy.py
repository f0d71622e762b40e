"""Energy curves: from real audio (training targets, "energy from a reference
audio") and from φ's output (generation), and the hint the VAE encoder takes.

Mirrors audioldm/utilities/data/dataset.py (``train_mode: energy``) and
audioldm/pipeline.py; see the reference README's ``energy/`` section.
"""
from __future__ import annotations

import functools

import numpy as np
from scipy.signal import savgol_filter

from rewas_rt import constants as C


def normalize_wav(wave: np.ndarray) -> np.ndarray:
    """Remove the mean and scale to a peak of 0.5, as the original dataset does."""
    wave = np.asarray(wave, dtype=np.float32)
    wave = wave - np.mean(wave)
    wave = wave / (np.max(np.abs(wave)) + C.WAV_NORM_EPS)
    return (wave * C.WAV_PEAK).astype(np.float32)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above (librosa, htk=False)."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = np.log(6.4) / 27.0
    hz = np.asarray(hz, dtype=np.float64)
    safe = np.maximum(hz, min_log_hz)  # keeps log() finite in the branch np.where discards
    return np.where(hz >= min_log_hz, min_log_hz / f_sp + np.log(safe / min_log_hz) / logstep, hz / f_sp)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@functools.cache
def mel_filterbank() -> np.ndarray:
    """(N_MELS, N_FFT//2+1) float32 slaney-normalised triangles, equal to
    ``librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=0, fmax=8000, htk=False, norm="slaney")``.

    Cached and read-only: every caller shares one array.
    """
    fft_freqs = np.fft.rfftfreq(C.N_FFT, d=1.0 / C.SAMPLE_RATE)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(C.FMIN), _hz_to_mel(C.FMAX), C.N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    # librosa stores the triangles in float32 before scaling them; keep its rounding.
    weights = np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)
    enorm = 2.0 / (mel_f[2:] - mel_f[:-2])
    weights = (weights * enorm[:, None]).astype(np.float32)
    weights.flags.writeable = False
    return weights


def hann_window() -> np.ndarray:
    """Periodic Hann window of WIN samples (``torch.hann_window`` default)."""
    n = np.arange(C.WIN)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / C.WIN)).astype(np.float32)


def stft_magnitude(wave: np.ndarray) -> np.ndarray:
    """|STFT| as (frames, N_FFT//2+1) float32: reflect-pad STFT_PAD per side,
    periodic Hann, hop HOP, no centring. 81920 samples give exactly 512 frames."""
    wave = np.asarray(wave, dtype=np.float64)
    padded = np.pad(wave, C.STFT_PAD, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, C.N_FFT)[:: C.HOP]
    spec = np.fft.rfft(frames * hann_window().astype(np.float64), axis=-1)
    return np.abs(spec).astype(np.float32)


def log_mel(wave: np.ndarray) -> np.ndarray:
    """Natural-log mel spectrogram, (frames, N_MELS) float32."""
    mel = stft_magnitude(wave).astype(np.float64) @ mel_filterbank().T.astype(np.float64)
    return np.log(np.maximum(mel, C.LOG_MEL_CLAMP)).astype(np.float32)


def energy_from_log_mel(log_mel_spec: np.ndarray) -> np.ndarray:
    """Frame energy: mean of the log-mel over the mel bins (last axis)."""
    return np.mean(log_mel_spec, axis=-1, dtype=np.float64).astype(np.float32)


def resize_nearest(x: np.ndarray, n: int) -> np.ndarray:
    """Nearest resize along the last axis: output i takes input floor(i·len/n)
    (``F.interpolate(mode="nearest")``; the integer form matches PyTorch's float
    computation for 112 <-> 512, checked in the tests)."""
    length = x.shape[-1]
    return x[..., (np.arange(n) * length) // n]


def savgol(x: np.ndarray) -> np.ndarray:
    """Savitzky–Golay smoothing along time, as the original calls it.
    SciPy computes in float32 for float32 input, so the dtype is kept."""
    return savgol_filter(x, C.SAVGOL_WINDOW, C.SAVGOL_ORDER, axis=-1, mode="interp")


def energy_target(wave: np.ndarray) -> np.ndarray:
    """Energy curve (MEL_FRAMES,) of a WAVE_SAMPLES-long waveform, as the training
    data pipeline computes it: 512 frames -> 112 nearest -> Savitzky–Golay -> 512."""
    energy = energy_from_log_mel(log_mel(normalize_wav(wave)))
    return resize_nearest(savgol(resize_nearest(energy, C.ENERGY_STEPS)), C.MEL_FRAMES)


def energy_from_phi(phi_out: np.ndarray) -> np.ndarray:
    """Generation path: φ output (B, 112) -> Savitzky–Golay -> (B, 512)."""
    return resize_nearest(savgol(np.asarray(phi_out, dtype=np.float32)), C.MEL_FRAMES)


def energy_to_vae_input(energy: np.ndarray) -> np.ndarray:
    """(B, 512) energy -> (B, 1, 512, N_MELS): each frame's value in every mel bin."""
    energy = np.asarray(energy, dtype=np.float32)
    return np.repeat(energy[:, None, :, None], C.N_MELS, axis=-1)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equal-length curves; NaN when either is constant (training's
    validation and the quality benchmarks score energy curves with it)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"curves differ in length: {a.size} vs {b.size}")
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt(float(a @ a) * float(b @ b)))
    return float(a @ b / den) if den > 0 else float("nan")
