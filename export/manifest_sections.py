"""The writer's side of ``manifest.json``: the sections ``export/build_engines.py`` fills in.

The layout itself (dataclasses, reading, verification) is ``rewas_rt.manifest``; this
module computes the values from the runtime's constants, the graph contracts and the
files on disk.
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from rewas_rt import constants as C
from rewas_rt import manifest as M
from rewas_rt.graphs import GraphSpec, TensorSpec


def file_entry(root: str | os.PathLike, rel: str) -> M.FileEntry:
    """Path (relative to ``root``), size and sha256 of a file inside the directory."""
    p = Path(root) / rel
    return M.FileEntry(path=rel, bytes=p.stat().st_size, sha256=M.sha256_file(p))


def tensor_entry(spec: GraphSpec, t: TensorSpec, with_profile: bool) -> M.Tensor:
    """One input/output; inputs also carry their TensorRT optimization-profile shapes."""
    profile = None
    if with_profile:
        lo, opt, hi = spec.profile(t)
        profile = M.Profile(min=list(lo), opt=list(opt), max=list(hi))
    return M.Tensor(name=t.name, dtype=t.dtype, shape=list(t.shape),
                    dynamic_axes={str(i): a for i, a in enumerate(t.shape) if isinstance(a, str)}, profile=profile)


def graph_io(spec: GraphSpec) -> dict[str, list[M.Tensor]]:
    """``inputs``/``outputs`` of a *resolved* graph spec (no model-dim names left)."""
    return {"inputs": [tensor_entry(spec, t, True) for t in spec.inputs],
            "outputs": [tensor_entry(spec, t, False) for t in spec.outputs]}


def scheduler_section(default_steps: int = C.DDIM_STEPS, eta: float = C.ETA, guidance: float = C.GUIDANCE,
                      sampler: str | None = None, guidance_interval: tuple[float, float] | None = None,
                      unconditional_hint: str = "zeros") -> M.Scheduler:
    """The schedule and the recommended sampling; ``sampler``/``guidance_interval`` are optional keys
    (absent: DDIM with guidance everywhere, the original's). ``unconditional_hint``: "zeros" (the
    original's) or "same" (M.Scheduler)."""
    from rewas_rt.ddim import linear_schedule

    betas, alphas_cumprod = linear_schedule()
    return M.Scheduler(
        type="ddim",
        beta_schedule="linear",  # betas = linspace(sqrt(start), sqrt(end), train_steps) ** 2
        linear_start=C.LINEAR_START, linear_end=C.LINEAR_END, train_steps=C.TRAIN_STEPS,
        timestep_spacing="uniform: arange(0, train_steps, train_steps // steps) + 1",
        prediction="eps",
        betas=[float(b) for b in betas],
        alphas_cumprod=[float(a) for a in alphas_cumprod.astype("float32")],  # the model's float32 buffer, exactly
        default_steps=default_steps, eta=eta, guidance=guidance, unconditional_hint=unconditional_hint,
        sampler=sampler, guidance_interval=list(guidance_interval) if guidance_interval else None,
    )


def audio_section() -> M.Audio:
    return M.Audio(
        sample_rate=C.SAMPLE_RATE, n_fft=C.N_FFT, hop=C.HOP, win=C.WIN, n_mels=C.N_MELS, fmin=C.FMIN, fmax=C.FMAX,
        window_seconds=C.WINDOW_SECONDS, mel_frames=C.MEL_FRAMES, wave_samples=C.WAVE_SAMPLES,
        log_mel_clamp=C.LOG_MEL_CLAMP, vocoder_hop=C.VOCODER_HOP,
        vocoder_samples=C.VOCODER_HOP * C.MEL_FRAMES + C.VOCODER_EXTRA_SAMPLES,
    )


def video_section(feature_dim: int) -> M.Video:
    return M.Video(
        fps=C.FPS, seconds=C.VIDEO_SECONDS, frames=C.FRAMES, short_side=C.SHORT_SIDE, crop=C.CROP,
        mean=C.VIDEO_MEAN, std=C.VIDEO_STD, segments=C.SEGMENTS, segment_len=C.SEGMENT_LEN,
        segment_stride=C.SEGMENT_STRIDE, segment_start=C.SEGMENT_START, tokens_per_segment=C.TOKENS_PER_SEGMENT,
        feature_dim=feature_dim,
    )


def energy_section() -> M.Energy:
    return M.Energy(steps=C.ENERGY_STEPS, savgol_window=C.SAVGOL_WINDOW, savgol_order=C.SAVGOL_ORDER)


def vae_section(scale_factor: float) -> M.Vae:
    return M.Vae(scale_factor=float(scale_factor), latent_shape=list(C.LATENT_SHAPE),
                 logvar_clamp=list(C.LOGVAR_CLAMP))


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
