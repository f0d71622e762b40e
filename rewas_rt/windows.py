"""Sound for whole videos: the model's 5.12 s windows laid over any length and joined.

Time units. One latent frame is 4 mel frames = 640 samples = 40 ms, exactly one
video frame at 25 fps, so a window plan is counted in those frames: a window is
``WINDOW`` = 128 of them (5.12 s of audio; its energy comes from the 125 video
frames = 5 s that start with it, as in the original).

Layout (``plan_windows``). A clip of ``frames`` ≤ 128 is one window from 0, as the
single-window pipeline always did (the sound is cut to the clip). A longer clip gets
the fewest windows that overlap by at least ``overlap`` frames, evenly spaced, the
first starting at 0 and the last ending exactly at the clip's end: every window lies
inside the video, none is padded.

Joins, in order (DESIGN: issue #12):

1. Energy: every window's φ curve covers its own 5.12 s; where two overlap, they are
   blended with linear ramps that sum to one (``join_curves``), so the curve has no
   step at a window edge. Each generation window then takes its slice of that one curve.
2. Latent (``overlap_constraint``, RePaint-style): window k's first frames are shared
   with window k−1. At every DDIM step that region of the sample is replaced by
   window k−1's final latent, noised to the step's level (√ᾱ·z + √(1−ᾱ)·ε), and after
   the last step by that latent itself; the model fills in the rest to fit. Over the
   overlap's last part (``ramp_frames``: overlap − crossfade) the replacement fades out
   linearly: a hard edge leaves a step there that the sampler does not smooth away.
3. Waveform (``WaveJoiner``): a crossfade over the overlap's first ``crossfade``
   seconds, where the constraint made both windows' latents equal. Linear (equal-gain):
   both sides are then nearly the same signal, and an equal-power fade of correlated
   signals bulges by up to +3 dB. ``join="crossfade"`` (independent windows, a
   comparison baseline) fades in the overlap's middle. Measured comparison:
   benchmarks/seams.py (numbers in benchmarks/results/seams-*.md).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from rewas_rt import constants as C
from rewas_rt.errors import InputError

WINDOW = C.LATENT_SHAPE[1]  # latent frames per window (128 = 5.12 s)
FRAME_SAMPLES = C.WAVE_SAMPLES // WINDOW  # 640 samples = 40 ms = one 25 fps video frame
MEL_PER_FRAME = C.MEL_FRAMES // WINDOW  # 4
assert FRAME_SAMPLES * C.FPS == C.SAMPLE_RATE, "a latent frame must be one video frame"

JOINS = ("repaint", "crossfade")
FADES = ("linear", "equal-power")


@dataclasses.dataclass(frozen=True)
class WindowOptions:
    """How long clips are cut into windows and joined (validated on creation)."""

    overlap: float = 1.28  # seconds shared by consecutive windows (at least)
    join: str = "repaint"  # "repaint": overlap constrained to continue the previous window; "crossfade": independent
    fade: str = "linear"  # waveform crossfade: "linear" (equal gain) or "equal-power"
    crossfade: float = 0.64  # seconds of waveform crossfade, centred in the overlap (≤ overlap)
    max_duration: float = 600.0  # longest clip (seconds) a request may ask for

    def __post_init__(self):
        for name in ("overlap", "crossfade", "max_duration"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise InputError(f"{name.replace('_', '-')} must be a number of seconds > 0, got {v!r}")
        if not 1 <= self.overlap_frames <= WINDOW // 2:
            raise InputError(f"overlap must be between {1 / C.FPS:g} and {WINDOW / 2 / C.FPS:g} s, got {self.overlap:g}")
        if self.crossfade > self.overlap + 1e-9:
            raise InputError(f"crossfade ({self.crossfade:g} s) cannot be longer than the overlap ({self.overlap:g} s)")
        if self.join not in JOINS:
            raise InputError(f"join must be one of {', '.join(JOINS)}, got {self.join!r}")
        if self.fade not in FADES:
            raise InputError(f"fade must be one of {', '.join(FADES)}, got {self.fade!r}")

    @property
    def overlap_frames(self) -> int:
        return round(self.overlap * C.FPS)

    @property
    def crossfade_samples(self) -> int:
        return round(self.crossfade * C.SAMPLE_RATE)

    def ramp_frames(self, overlap_frames: int) -> int:
        """Latent frames at the end of an overlap where the constraint fades out (after the crossfade)."""
        return max(0, overlap_frames - -(-self.crossfade_samples // FRAME_SAMPLES))

    def joiner(self, plan: WindowPlan, batch: int) -> "WaveJoiner":
        return WaveJoiner(plan, batch, self.crossfade_samples, self.fade, centred=self.join != "repaint")


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    frames: int  # clip length in 25 fps frames (= latent frames); the sound has frames·640 samples
    starts: tuple[int, ...]  # first frame of each window

    @property
    def samples(self) -> int:
        return self.frames * FRAME_SAMPLES

    @property
    def covered(self) -> int:
        """Frames the windows span: the clip, or one whole window for a shorter clip."""
        return max(self.frames, WINDOW)

    def overlap(self, k: int) -> int:
        """Frames window k shares with window k−1 (k ≥ 1)."""
        return self.starts[k - 1] + WINDOW - self.starts[k]

    def __len__(self) -> int:
        return len(self.starts)


def plan_windows(frames: int, overlap_frames: int) -> WindowPlan:
    if frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {frames}")
    if not 1 <= overlap_frames <= WINDOW // 2:
        raise ValueError(f"overlap must be 1..{WINDOW // 2} frames, got {overlap_frames}")
    if frames <= WINDOW:
        return WindowPlan(frames, (0,))
    span, hop = frames - WINDOW, WINDOW - overlap_frames
    n = 1 + -(-span // hop)  # fewest windows whose overlaps are all ≥ overlap_frames
    return WindowPlan(frames, tuple(k * span // (n - 1) for k in range(n)))


def _ramp(n: int) -> np.ndarray:
    return ((np.arange(n) + 0.5) / n).astype(np.float64)


def join_curves(curves: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """(windows, 512) energy curves -> one (covered·4,) curve, overlaps blended linearly."""
    curves = np.asarray(curves, dtype=np.float64)
    if curves.shape != (len(plan), C.MEL_FRAMES):
        raise ValueError(f"expected {len(plan)} curves of {C.MEL_FRAMES} frames, got {curves.shape}")
    total = np.zeros(plan.covered * MEL_PER_FRAME)
    weight = np.zeros_like(total)
    for k, (start, curve) in enumerate(zip(plan.starts, curves)):
        w = np.ones(C.MEL_FRAMES)
        if k > 0:
            n = plan.overlap(k) * MEL_PER_FRAME
            w[:n] = _ramp(n)
        if k + 1 < len(plan):
            n = plan.overlap(k + 1) * MEL_PER_FRAME
            w[C.MEL_FRAMES - n:] *= 1.0 - _ramp(n)
        s = start * MEL_PER_FRAME
        total[s:s + C.MEL_FRAMES] += w * curve
        weight[s:s + C.MEL_FRAMES] += w
    return (total / weight).astype(np.float32)


def window_curves(curve: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """The (windows, 512) slices of a whole-clip (covered·4,) curve that drive each window."""
    curve = np.asarray(curve, dtype=np.float32)
    if curve.shape != (plan.covered * MEL_PER_FRAME,):
        raise ValueError(f"expected a curve of {plan.covered * MEL_PER_FRAME} frames, got {curve.shape}")
    return np.stack([curve[s * MEL_PER_FRAME:s * MEL_PER_FRAME + C.MEL_FRAMES] for s in plan.starts])


def fades(n: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(fade_out, fade_in) of n samples: linear sums to 1, equal-power squares sum to 1."""
    u = _ramp(n)
    if kind == "linear":
        return (1.0 - u).astype(np.float32), u.astype(np.float32)
    if kind == "equal-power":
        return np.cos(0.5 * np.pi * u).astype(np.float32), np.sin(0.5 * np.pi * u).astype(np.float32)
    raise ValueError(f"unknown fade {kind!r}")


class WaveJoiner:
    """Assembles windows' waveforms (batch, 81920), added in order, into (batch, samples)."""

    def __init__(self, plan: WindowPlan, batch: int, crossfade_samples: int, fade: str, centred: bool = False):
        self.plan, self.fade, self.crossfade, self.centred = plan, fade, crossfade_samples, centred
        self.out = np.zeros((batch, plan.covered * FRAME_SAMPLES), np.float32)
        self._next = 0

    def region(self, k: int) -> tuple[int, int]:
        """Samples [a, b) where window k−1 fades into window k: the start of their overlap (where
        the RePaint constraint makes them equal), or its middle (``centred``, independent windows)."""
        lo = self.plan.starts[k] * FRAME_SAMPLES
        hi = (self.plan.starts[k - 1] + WINDOW) * FRAME_SAMPLES
        n = min(self.crossfade, hi - lo)
        a = lo + (hi - lo - n) // 2 if self.centred else lo
        return a, a + n

    def add(self, k: int, wave: np.ndarray) -> None:
        if k != self._next:
            raise ValueError(f"windows must be added in order: expected {self._next}, got {k}")
        wave = np.asarray(wave, dtype=np.float32)
        s = self.plan.starts[k] * FRAME_SAMPLES
        if k == 0:
            self.out[:, s:s + C.WAVE_SAMPLES] = wave
        else:
            a, b = self.region(k)
            fo, fi = fades(b - a, self.fade)
            self.out[:, a:b] = self.out[:, a:b] * fo + wave[:, a - s:b - s] * fi
            self.out[:, b:s + C.WAVE_SAMPLES] = wave[:, b - s:]
        self._next += 1

    def result(self) -> np.ndarray:
        """The joined sound cut to the clip: (batch, plan.samples)."""
        return self.out[:, :self.plan.samples]


Constraint = Callable[[np.ndarray, float], np.ndarray]


def overlap_constraint(known: np.ndarray, noise: Callable[[tuple[int, ...]], np.ndarray], ramp: int = 0) -> Constraint:
    """RePaint-style: the first ``known.shape[2]`` latent frames are replaced by ``known``
    (window k−1's final latent there), noised to the level ᾱ of the sample being
    constrained; ᾱ ≥ 1 (the sampler's output) uses ``known`` itself.

    The last ``ramp`` of those frames are blended instead, the weight of ``known`` falling
    linearly to 0, so that the window leaves the shared frames without a step: with a hard
    edge the sampler does not fully reconcile the two sides (measured in benchmarks/seams.py
    and tests/test_windows.py). ``noise(shape)`` gives N(0, 1) draws (the window's generators).
    """
    known = np.asarray(known, dtype=np.float32)
    n = known.shape[2]
    if not 0 <= ramp <= n:
        raise ValueError(f"ramp must be 0..{n} frames, got {ramp}")
    weight = np.clip((n - np.arange(n) - 0.5) / max(ramp, 1), 0.0, 1.0) if ramp else np.ones(n)
    weight = weight.astype(np.float32)[None, None, :, None]

    def constrain(x: np.ndarray, alpha_bar: float) -> np.ndarray:
        x = np.array(x, dtype=np.float32, copy=True)
        if alpha_bar >= 1.0:
            target = known
        else:
            a = np.float32(alpha_bar)
            target = np.sqrt(a) * known + np.sqrt(np.float32(1.0) - a) * noise(known.shape)
        x[:, :, :n] = weight * target + (np.float32(1.0) - weight) * x[:, :, :n]
        return x

    return constrain
