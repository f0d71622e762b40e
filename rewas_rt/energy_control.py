"""User control of the energy curve: the paper's "freely adjust the energy".

The curve lives in the model's own units: the mean over mel bins of the natural
log mel magnitude, one value per mel frame (512 frames = 5.12 s, 10 ms each).
Edits happen after φ's curve is smoothed and resized (docs/design.md §1 stage 5):

* ``offset`` adds to the log energy: +1 ≈ ×e louder (≈ +8.7 dB) everywhere;
* ``scale`` stretches the curve around its own mean: >1 more dynamic, <1 flatter;
* ``clip`` bounds the result.

A curve may instead come from a file (CSV or NPY, any length, resampled by
nearest neighbour to 512 frames) or from a reference audio file, whose energy
is computed exactly as the training targets are.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from rewas_rt import constants as C
from rewas_rt.atomic import atomic_path
from rewas_rt.energy import energy_target, resize_nearest
from rewas_rt.errors import InputError, OutputError


@dataclasses.dataclass(frozen=True)
class EnergyEdit:
    scale: float = 1.0
    offset: float = 0.0
    clip_min: float | None = None
    clip_max: float | None = None

    @property
    def is_identity(self) -> bool:
        return self == EnergyEdit()

    def apply(self, curve: np.ndarray) -> np.ndarray:
        """Edit (..., frames) curves; the identity edit returns the input unchanged."""
        if self.is_identity:
            return curve
        curve = np.asarray(curve, dtype=np.float32)
        mean = curve.mean(axis=-1, keepdims=True)
        out = mean + np.float32(self.scale) * (curve - mean) + np.float32(self.offset)
        if self.clip_min is not None or self.clip_max is not None:
            out = np.clip(out, self.clip_min, self.clip_max)
        return out.astype(np.float32)


def frame_times(n: int = C.MEL_FRAMES) -> np.ndarray:
    """Start time in seconds of each mel frame."""
    return np.arange(n) * (C.HOP / C.SAMPLE_RATE)


def load_curve(path: str | Path, frames: int | None = C.MEL_FRAMES) -> np.ndarray:
    """A (frames,) curve from .npy (1-D) or .csv (one value per row, or a header and an
    ``energy`` column as written by ``write_curve_csv``); ``frames=None``: as stored."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: energy curve file not found")
    try:
        if path.suffix.lower() == ".npy":
            curve = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".csv":
            curve = _read_csv_curve(path)
        else:
            raise InputError(f"{path}: energy curve must be a .csv or .npy file")
    except (ValueError, OSError) as e:
        raise InputError(f"{path}: cannot read an energy curve ({str(e).splitlines()[0]})") from None
    curve = np.asarray(curve, dtype=np.float32).squeeze()
    if curve.ndim != 1 or curve.size < 2 or not np.isfinite(curve).all():
        raise InputError(f"{path}: an energy curve must be a 1-D list of at least 2 finite numbers")
    return curve if frames is None else resize_nearest(curve, frames)


def _read_csv_curve(path: Path) -> np.ndarray:
    with open(path) as f:
        first = f.readline()
    header = [h.strip().lower() for h in first.split(",")]
    if "energy" in header:
        return np.loadtxt(path, delimiter=",", skiprows=1, usecols=header.index("energy"), ndmin=1)
    return np.loadtxt(path, delimiter=",", ndmin=2)[:, -1]


def curve_from_audio(path: str | Path, start: float = 0.0, plan=None) -> np.ndarray:
    """The (512,) energy curve of 5.12 s of a reference audio (or video) file from ``start``;
    with a ``windows.WindowPlan``, the curve of the whole clip, computed window by window as
    φ's is (each window's exactly as the training targets, overlaps blended)."""
    from rewas_rt.audio import load_audio

    if plan is None:
        return energy_target(load_audio(path, start=start, duration=C.WINDOW_SECONDS))
    from rewas_rt.windows import FRAME_SAMPLES, join_curves

    wave = load_audio(path, start=start, duration=plan.covered * FRAME_SAMPLES / C.SAMPLE_RATE)
    curves = [energy_target(wave[s * FRAME_SAMPLES:s * FRAME_SAMPLES + C.WAVE_SAMPLES]) for s in plan.starts]
    return join_curves(np.stack(curves), plan)


def write_curve_csv(path: str | Path, curve: np.ndarray) -> None:
    """CSV with columns time_s, energy (one row per mel frame), written atomically."""
    rows = "\n".join(f"{t:.3f},{v:.6f}" for t, v in zip(frame_times(len(curve)), curve))
    with atomic_path(path) as tmp:
        Path(tmp).write_text("time_s,energy\n" + rows + "\n")


def pyplot():
    """matplotlib.pyplot on the file-only backend; a clear error when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OutputError("plotting needs matplotlib: pip install 'rewas-rt[plot]'") from None
    return plt


def plot_curve(path: str | Path, curve: np.ndarray, frames: np.ndarray | None = None, fps: float = C.FPS) -> None:
    """PNG: the energy curve on the time axis, under a strip of the video's frames."""
    plt = pyplot()
    duration = len(curve) * C.HOP / C.SAMPLE_RATE
    rows = 2 if frames is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(10, 2.2 * rows), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [1, 2][-rows:]})
    if frames is not None:
        # One thumbnail per half second, placed at its own time.
        strip = axes[0, 0]
        step = max(1, int(round(fps / 2)))
        for k in range(0, len(frames), step):
            t = k / fps
            strip.imshow(frames[k], extent=(t, t + step / fps, 0, 1), aspect="auto")
        strip.set_xlim(0, duration)
        strip.set_yticks([])
        strip.set_title("video frames")
    ax = axes[-1, 0]
    ax.plot(frame_times(len(curve)), curve, lw=1.2)
    ax.set_xlim(0, duration)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("energy (mean log-mel)")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
