"""Synthetic audio-visual data set: small MP4 clips whose visible events drive the sound.

    python -m training.synthetic --out DIR --n 24 --seed 0
    python -m training.synthetic --out DIR --splits 20,3,5 --seed 0    # per class: train, val, test

Every clip is a real MP4 file (H.264 video at 25 fps, AAC audio muxed into the
same file) written with PyAV, plus one line in ``DIR/manifest.jsonl`` (video
path relative to the manifest, caption, label, split, start, duration and the
event times). Deterministic by seed: the same ``--seed`` gives the same
pixels, samples and files.

Classes (``label``; the caption names the class in words):

* ``impact`` — a ball bounces on the floor and flashes white at each contact;
  each contact is a decaying noise burst whose loudness follows the speed.
  Events: the contact times.
* ``beep`` — a lamp lights up for a while, again and again; a buzzer tone (harmonics
  up to 7.5 kHz) plays exactly while it is lit. Events: the switch-on times.
* ``rain`` — a disc grows and shrinks (and brightens with its size); a noise
  texture whose loudness follows the disc's area. Events: the area's maxima.
* ``whoosh`` — a bar sweeps across the frame; band-limited noise that peaks
  when the bar passes the centre. Events: the centre crossings.
* ``knock`` — a mallet swings down onto a wooden block, which flashes at each hit; a
  short low knock (damped 120–300 Hz partials plus a click) whose loudness follows the
  swing's height. Events: the hit times.
* ``hum`` — a cart drives back and forth; a low, buzzy engine hum (60–110 Hz with
  harmonics) whose loudness follows the cart's speed, and the scene brightens with it
  (headlights). Events: the speed maxima.

Splits. ``generate`` writes ``n`` clips round-robin over the classes with the last rounds as
validation (the CI-sized sets); ``generate_splits`` writes train / val / test sets of a given
number of clips per class, each split drawn from its own seed stream (``[seed, split, index]``),
so the test split is independent of what the model was trained on.

Event times are snapped to video frame times, so "the frame where it happens"
and "the sample where it sounds" agree exactly before encoding. Events also light
the whole scene a little (the background brightens with the flash, the lit lamp,
the disc's level, the passing bar), so that they change the frame as a whole and
not only a few pixels: the tests and demos run with a *random-weight* video
encoder, which averages over the frame; a trained Synchformer would not need it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

from rewas_rt.errors import cli_main

FPS = 25
CLASSES = ("impact", "beep", "rain", "whoosh", "knock", "hum")
# Several wordings per class; the first is the bare class word (`rewas-rt infer clip.mp4 "rain"`).
CAPTIONS = {
    "impact": ("impact", "a ball bouncing on the floor", "impacts of a bouncing ball", "a ball hitting the ground"),
    "beep": ("beep", "a beeping light", "beeps while a lamp blinks", "an electronic beep tone"),
    "rain": ("rain", "rain noise getting louder and softer", "the sound of rain", "a hissing noise texture"),
    "whoosh": ("whoosh", "something whooshing past", "a fast whoosh", "an object swishing by"),
    "knock": ("knock", "knocking on wood", "a mallet hitting a wooden block", "wooden knocks"),
    "hum": ("hum", "an engine humming", "the hum of a motor speeding up and slowing down", "a buzzing engine"),
}
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.jsonl"


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    duration: float = 6.4  # seconds; > 5.12 so that training windows can start at random
    size: int = 128  # square frames; the video loader resizes to 256 and crops 224
    sample_rate: int = 16000
    val_fraction: float = 0.25
    audio_bitrate: int = 48000
    crf: int = 28


@dataclasses.dataclass
class Clip:
    frames: np.ndarray  # (T, H, W, 3) uint8
    audio: np.ndarray  # (N,) float32 in [-1, 1]
    events: list[float]  # seconds
    label: str


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(10, 60, size=3)
    ramp = np.linspace(0.0, 25.0, size)[:, None, None]  # vertical gradient
    return np.broadcast_to(base + ramp, (size, size, 3)).astype(np.float32)


def _disc(size: int, cx: float, cy: float, r: float) -> np.ndarray:
    """Anti-aliased disc coverage (H, W) in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    return np.clip(r - d + 0.5, 0.0, 1.0)


def _box(size: int, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    cov_x = np.clip(np.minimum(xx - x0, x1 - xx) + 0.5, 0.0, 1.0)
    cov_y = np.clip(np.minimum(yy - y0, y1 - yy) + 0.5, 0.0, 1.0)
    return cov_x * cov_y


def _lit(bg: np.ndarray, glow: float) -> np.ndarray:
    """The background lit by the event (glow in [0, 1]): the whole scene brightens with it."""
    return bg + glow * np.array([90.0, 90.0, 80.0], np.float32) if glow > 0 else bg


def _paint(img: np.ndarray, mask: np.ndarray, color) -> np.ndarray:
    return img * (1.0 - mask[..., None]) + mask[..., None] * np.asarray(color, np.float32)


def _one_pole_lowpass(x: np.ndarray, cutoff: float, sr: int) -> np.ndarray:
    from scipy.signal import lfilter

    a = math.exp(-2.0 * math.pi * cutoff / sr)
    return lfilter([1.0 - a], [1.0, -a], x).astype(np.float32)


def _bandpass(x: np.ndarray, lo: float, hi: float, sr: int) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    sos = butter(2, [lo, hi], btype="band", fs=sr, output="sos")
    return sosfilt(sos, x).astype(np.float32)


def _snap(t: float) -> float:
    return round(t * FPS) / FPS


def make_impact(rng: np.random.Generator, cfg: SynthConfig) -> Clip:
    n_frames, size, sr = round(cfg.duration * FPS), cfg.size, cfg.sample_rate
    floor = size * 0.85
    radius = size * rng.uniform(0.06, 0.1)
    # Bounce series: the ball appears high up and drops (half an arc), then bounces in arcs that
    # shrink by the restitution; after a pause it reappears up high for the next series.
    flights: list[tuple[float, float, bool]] = []  # (contact time, arc length, is a drop)
    t = _snap(rng.uniform(0.1, 0.6))
    while t < cfg.duration - 0.3:
        arc = _snap(rng.uniform(0.5, 0.9))
        restitution = rng.uniform(0.55, 0.75)
        t = t + _snap(arc / 2)
        flights.append((t, arc, True))
        while True:
            arc = _snap(arc * restitution)
            if arc < 0.16 or t + arc > cfg.duration - 0.1:
                break
            t = t + arc
            flights.append((t, arc, False))
        t = t + _snap(rng.uniform(0.3, 0.8))
    g = 8 * 0.7 * (floor - 2 * radius) / 0.81  # px/s^2: a 0.9 s arc climbs to 70 % of the free height

    def height(tf: float) -> float:
        for contact, arc, drop in flights:
            begin = contact - (arc / 2 if drop else arc)
            if begin <= tf <= contact:
                tau = tf - begin
                return 0.5 * g * ((arc / 2) ** 2 - tau**2) if drop else 0.5 * g * tau * (arc - tau)
        return 0.0  # resting on the floor between series

    first_start = flights[0][0] - flights[0][1] / 2 if flights else cfg.duration
    cx = rng.uniform(0.3, 0.7) * size
    color = rng.uniform(120, 220, size=3)
    bg = _paint(_background(rng, size), _box(size, 0, floor, size, size), (90, 80, 70))
    contacts = [c for c, _, _ in flights]
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    for f in range(n_frames):
        tf = f / FPS
        since = [tf - c for c in contacts if -0.5 / FPS < tf - c]
        glow = max((0.8 ** (d * FPS) for d in since if d < 0.2), default=0.0)  # the flash lights the scene
        img = _lit(bg, glow)
        if tf >= first_start:  # the ball appears with the first drop
            flash = any(abs(tf - c) < 0.5 / FPS for c in contacts)
            ball = _disc(size, cx, floor - radius - height(tf), radius)
            img = _paint(img, ball, (255, 255, 255) if flash else color)
        frames[f] = np.clip(img, 0, 255).astype(np.uint8)
    audio = np.zeros(round(cfg.duration * sr), np.float32)
    decay = rng.uniform(0.025, 0.06)
    cutoff = rng.uniform(1500, 5000)
    n_burst = int(8 * decay * sr)
    env = np.exp(-np.arange(n_burst) / (decay * sr)).astype(np.float32)
    for contact, arc, _ in flights:
        i = round(contact * sr)
        if i >= len(audio):
            continue
        burst = _one_pole_lowpass(rng.standard_normal(n_burst).astype(np.float32), cutoff, sr) * env
        amp = 0.3 + 0.7 * min(arc / 0.9, 1.0)  # louder for faster impacts
        j = min(len(audio), i + n_burst)
        audio[i:j] += amp * burst[: j - i] / (np.max(np.abs(burst)) + 1e-8)
    return Clip(frames, audio, contacts, "impact")


def make_beep(rng: np.random.Generator, cfg: SynthConfig) -> Clip:
    n_frames, size, sr = round(cfg.duration * FPS), cfg.size, cfg.sample_rate
    intervals = []
    t = _snap(rng.uniform(0.1, 0.5))
    while t < cfg.duration - 0.2:
        on = _snap(rng.uniform(0.2, 0.7))
        intervals.append((t, min(t + on, cfg.duration)))
        t = t + on + _snap(rng.uniform(0.25, 0.9))
    side = size * rng.uniform(0.2, 0.3)
    x0, y0 = rng.uniform(0.1, 0.9 - side / size) * size, rng.uniform(0.1, 0.9 - side / size) * size
    off_color, on_color = rng.uniform(40, 80, size=3), np.array([255, 240, 120]) * rng.uniform(0.85, 1.0)
    bg = _background(rng, size)
    lamp = _box(size, x0, y0, x0 + side, y0 + side)
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    for f in range(n_frames):
        tf = f / FPS
        lit = any(a <= tf < b for a, b in intervals)
        img = _paint(_lit(bg, 0.5 if lit else 0.0), lamp, on_color if lit else off_color)
        frames[f] = np.clip(img, 0, 255).astype(np.uint8)
    n = round(cfg.duration * sr)
    gate = np.zeros(n, np.float32)
    for a, b in intervals:
        gate[round(a * sr): round(b * sr)] = 1.0
    ramp = int(0.005 * sr)  # 5 ms fades, no clicks
    gate = np.convolve(gate, np.ones(ramp, np.float32) / ramp, mode="same").astype(np.float32)
    freq = rng.uniform(350, 1200)
    tt = np.arange(n, dtype=np.float64) / sr
    # A buzzer: harmonics up to 7.5 kHz with 1/k amplitudes, so the tone lights up many mel
    # bands (a pure sine moves the mean-over-bands energy only a little).
    harmonics = range(1, int(7500 // freq) + 1)
    tone = sum(np.sin(2 * np.pi * k * freq * tt) / k for k in harmonics)
    tone /= np.max(np.abs(tone)) + 1e-8
    audio = (0.6 * gate * tone).astype(np.float32)
    return Clip(frames, audio, [a for a, _ in intervals], "beep")


def make_rain(rng: np.random.Generator, cfg: SynthConfig) -> Clip:
    n_frames, size, sr = round(cfg.duration * FPS), cfg.size, cfg.sample_rate
    n = round(cfg.duration * sr)
    freqs = rng.uniform(0.15, 0.6, size=3)
    phases = rng.uniform(0, 2 * np.pi, size=3)

    def level(t: np.ndarray) -> np.ndarray:
        s = sum(np.sin(2 * np.pi * f * t + p) for f, p in zip(freqs, phases)) / 3.0
        return (0.5 + 0.5 * s) ** 1.5  # in [0, 1], with quiet stretches

    r_min, r_max = size * 0.04, size * 0.42
    cx, cy = rng.uniform(0.4, 0.6, size=2) * size
    color = rng.uniform(100, 200, size=3)
    bg = _background(rng, size)
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    tf = np.arange(n_frames) / FPS
    lev_f = level(tf)
    for f in range(n_frames):
        r = r_min + (r_max - r_min) * np.sqrt(lev_f[f])  # area ∝ level
        img = _paint(_lit(bg, 0.6 * lev_f[f]), _disc(size, cx, cy, r), color * (0.6 + 0.4 * lev_f[f]))
        frames[f] = np.clip(img, 0, 255).astype(np.uint8)
    # Per-frame loudness (the level a viewer sees), interpolated to samples.
    env = np.interp(np.arange(n) / sr, tf, lev_f).astype(np.float32)
    noise = _one_pole_lowpass(rng.standard_normal(n).astype(np.float32), rng.uniform(2000, 6000), sr)
    noise /= np.max(np.abs(noise)) + 1e-8
    audio = (0.8 * env * noise).astype(np.float32)
    peaks = [float(tf[i]) for i in range(1, n_frames - 1) if lev_f[i] > lev_f[i - 1] and lev_f[i] >= lev_f[i + 1]]
    return Clip(frames, audio, peaks, "rain")


def make_whoosh(rng: np.random.Generator, cfg: SynthConfig) -> Clip:
    n_frames, size, sr = round(cfg.duration * FPS), cfg.size, cfg.sample_rate
    passes = []  # (centre time, half duration, direction)
    t = _snap(rng.uniform(0.5, 1.0))
    while t < cfg.duration - 0.4:
        half = rng.uniform(0.2, 0.45)
        passes.append((t, half, rng.choice([-1.0, 1.0])))
        t = _snap(t + 2 * half + rng.uniform(0.3, 0.9))
    width = size * rng.uniform(0.08, 0.14)
    color = rng.uniform(140, 240, size=3)
    bg = _background(rng, size)
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    for f in range(n_frames):
        tf = f / FPS
        img = _lit(bg, max((float(np.exp(-0.5 * ((tf - c) / (0.3 * h)) ** 2)) for c, h, _ in passes), default=0.0))
        for c, half, d in passes:
            u = (tf - c) / half  # -1 … 1 while on screen
            if -1.0 <= u <= 1.0:
                x = size / 2 + d * u * (size / 2 + width)
                img = _paint(img, _box(size, x - width / 2, size * 0.2, x + width / 2, size * 0.8), color)
        frames[f] = np.clip(img, 0, 255).astype(np.uint8)
    n = round(cfg.duration * sr)
    tt = np.arange(n) / sr
    env = np.zeros(n, np.float32)
    for c, half, _ in passes:
        env += np.exp(-0.5 * ((tt - c) / (0.3 * half)) ** 2).astype(np.float32)
    noise = _bandpass(rng.standard_normal(n).astype(np.float32), rng.uniform(300, 800), rng.uniform(2000, 4000), sr)
    noise /= np.max(np.abs(noise)) + 1e-8
    return Clip(frames, (0.8 * env * noise).astype(np.float32), [c for c, _, _ in passes], "whoosh")


def make_knock(rng: np.random.Generator, cfg: SynthConfig) -> Clip:
    n_frames, size, sr = round(cfg.duration * FPS), cfg.size, cfg.sample_rate
    hits: list[tuple[float, float, float]] = []  # (hit time, swing duration, swing height in [0, 1])
    t = _snap(rng.uniform(0.3, 0.7))
    while t < cfg.duration - 0.15:
        swing = _snap(rng.uniform(0.2, 0.4))
        hits.append((t, swing, rng.uniform(0.25, 1.0)))
        t = _snap(t + rng.uniform(0.3, 0.9))
    block_top = size * 0.62
    bx0, bx1 = size * rng.uniform(0.25, 0.35), size * rng.uniform(0.65, 0.75)
    mallet_w = size * 0.1
    mx = (bx0 + bx1) / 2 - mallet_w / 2
    wood = rng.uniform(110, 170, size=3) * np.array([1.0, 0.75, 0.5])
    bg = _background(rng, size)

    def lift(tf: float) -> float:
        """Mallet height above the block in [0, 1]: up while swinging, down at the hit."""
        for hit, swing, height in hits:
            if hit - swing <= tf <= hit:
                return height * math.sin(math.pi * (hit - tf) / swing) if tf > hit - swing / 2 else \
                    height * (hit - tf) / (swing / 2)
        return 0.0

    frames = np.empty((n_frames, size, size, 3), np.uint8)
    for f in range(n_frames):
        tf = f / FPS
        since = [tf - h for h, _, _ in hits if -0.5 / FPS < tf - h < 0.2]
        glow = max((0.75 ** (d * FPS) for d in since), default=0.0)
        img = _lit(bg, 0.8 * glow)
        block_color = wood + 100 * glow
        img = _paint(img, _box(size, bx0, block_top, bx1, size * 0.8), block_color)
        y1 = block_top - lift(tf) * size * 0.45
        img = _paint(img, _box(size, mx, y1 - size * 0.12, mx + mallet_w, y1), (220, 220, 230))
        frames[f] = np.clip(img, 0, 255).astype(np.uint8)
    audio = np.zeros(round(cfg.duration * sr), np.float32)
    f0 = rng.uniform(120, 300)
    decay = rng.uniform(0.06, 0.12)
    n_k = int(6 * decay * sr)
    tt = np.arange(n_k) / sr
    partials = [(1.0, 1.0), (2.32, 0.5), (4.1, 0.25)]
    body = sum(a * np.exp(-tt / (decay / k)) * np.sin(2 * np.pi * k * f0 * tt) for k, a in partials)
    click = _one_pole_lowpass(rng.standard_normal(n_k).astype(np.float32), 3000, sr) * np.exp(-tt / 0.004)
    knock = (body + 2.0 * click).astype(np.float32)
    knock /= np.max(np.abs(knock)) + 1e-8
    for hit, _, height in hits:
        i = round(hit * sr)
        j = min(len(audio), i + n_k)
        audio[i:j] += (0.3 + 0.6 * height) * knock[: j - i]
    return Clip(frames, audio, [h for h, _, _ in hits], "knock")


def make_hum(rng: np.random.Generator, cfg: SynthConfig) -> Clip:
    n_frames, size, sr = round(cfg.duration * FPS), cfg.size, cfg.sample_rate
    n = round(cfg.duration * sr)
    freqs, phases = rng.uniform(0.2, 0.7, size=2), rng.uniform(0, 2 * np.pi, size=2)

    def speed(t: np.ndarray) -> np.ndarray:  # in [0, 1], with stops
        s = (np.sin(2 * np.pi * freqs[0] * t + phases[0]) + 0.6 * np.sin(2 * np.pi * freqs[1] * t + phases[1])) / 1.6
        return np.clip(s, 0.0, 1.0) ** 1.2

    tf = np.arange(n_frames) / FPS
    sp = speed(tf)
    # The cart drives right while it moves, wrapping around; speed up to 1.5 frame widths per second.
    x = np.cumsum(sp) / FPS * 1.5 * size
    cart_w, cart_h = size * 0.22, size * 0.12
    color = rng.uniform(120, 230, size=3)
    bg = _paint(_background(rng, size), _box(size, 0, size * 0.75, size, size), (60, 60, 65))
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    for f in range(n_frames):
        img = _lit(bg, 0.6 * sp[f])
        cx = (x[f] % (size + cart_w)) - cart_w / 2
        img = _paint(img, _box(size, cx - cart_w / 2, size * 0.75 - cart_h, cx + cart_w / 2, size * 0.75), color)
        for wx in (cx - cart_w * 0.3, cx + cart_w * 0.3):
            img = _paint(img, _disc(size, wx, size * 0.75, size * 0.04), (30, 30, 30))
        frames[f] = np.clip(img, 0, 255).astype(np.uint8)
    env = np.interp(np.arange(n) / sr, tf, sp).astype(np.float32)
    f0 = rng.uniform(60, 110)
    tt = np.arange(n) / sr
    # Pitch rises a little with speed; harmonics up to ~2.5 kHz with 1/k amplitudes (a buzz).
    phase = 2 * np.pi * np.cumsum(f0 * (1.0 + 0.3 * env)) / sr
    tone = sum(np.sin(k * phase) / k for k in range(1, int(2500 // (1.3 * f0)) + 1))
    tone = tone + 0.05 * rng.standard_normal(n)
    tone = _one_pole_lowpass(tone.astype(np.float32), 3000, sr)
    tone /= np.max(np.abs(tone)) + 1e-8
    audio = (0.7 * env * tone).astype(np.float32)
    peaks = [float(tf[i]) for i in range(1, n_frames - 1) if sp[i] > sp[i - 1] and sp[i] >= sp[i + 1]]
    del tt
    return Clip(frames, audio, peaks, "hum")


MAKERS = {"impact": make_impact, "beep": make_beep, "rain": make_rain, "whoosh": make_whoosh,
          "knock": make_knock, "hum": make_hum}


def make_clip(label: str, seed: int | list[int], index: int, cfg: SynthConfig) -> Clip:
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), index])
    clip = MAKERS[label](rng, cfg)
    # A faint noise floor, as in real recordings (silence would sit on the log-mel clamp).
    floor = 1e-3 * rng.standard_normal(len(clip.audio)).astype(np.float32)
    clip.audio = np.clip(clip.audio + floor, -1.0, 1.0).astype(np.float32)
    return clip


def write_mp4(path: Path, frames: np.ndarray, audio: np.ndarray, sample_rate: int, cfg: SynthConfig) -> None:
    """H.264 (yuv420p, single-threaded so the bytes are reproducible) + AAC mono in one MP4."""
    import av

    tmp = path.with_name(f".{path.name}.tmp")
    with av.open(str(tmp), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=FPS, options={"crf": str(cfg.crf), "preset": "veryfast"})
        vs.width, vs.height = frames.shape[2], frames.shape[1]
        vs.pix_fmt = "yuv420p"
        vs.codec_context.thread_count = 1
        as_ = out.add_stream("aac", rate=sample_rate)
        as_.layout = "mono"
        as_.bit_rate = cfg.audio_bitrate
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        chunk = 1024
        for i in range(0, len(audio), chunk):
            part = np.ascontiguousarray(audio[None, i:i + chunk], dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(part, format="fltp", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = i
            frame.time_base = Fraction(1, sample_rate)
            for packet in as_.encode(frame):
                out.mux(packet)
        for packet in as_.encode():
            out.mux(packet)
    tmp.replace(path)


def split_of(index: int, n: int, val_fraction: float, n_classes: int = len(CLASSES)) -> str:
    """Classes go round-robin; the last rounds (at least one, never all) are validation."""
    rounds = math.ceil(n / n_classes)
    if rounds < 2 or val_fraction <= 0:
        return "train"
    val_rounds = min(rounds - 1, max(1, round(rounds * val_fraction)))
    return "val" if index // n_classes >= rounds - val_rounds else "train"


def _write_clip(out: Path, name: str, label: str, seed, index: int, split: str, cfg: SynthConfig) -> dict:
    clip = make_clip(label, seed, index, cfg)
    caption = CAPTIONS[label][np.random.default_rng([*np.atleast_1d(seed).tolist(), index, 1])
                              .integers(len(CAPTIONS[label]))]
    rel = f"clips/{name}.mp4"
    write_mp4(out / rel, clip.frames, clip.audio, cfg.sample_rate, cfg)
    return {"id": name, "video": rel, "caption": caption, "label": label, "split": split, "start": 0.0,
            "duration": cfg.duration, "events": [round(e, 4) for e in clip.events]}


def _finish(out: Path, lines: list[dict], info: dict, cfg: SynthConfig) -> Path:
    manifest = out / MANIFEST
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (out / "synthetic.json").write_text(json.dumps({**info, **dataclasses.asdict(cfg)}, indent=1) + "\n")
    return manifest


def generate(out: Path, n: int = 24, seed: int = 0, cfg: SynthConfig | None = None, log=print,
             classes: tuple[str, ...] = CLASSES) -> Path:
    """Write ``n`` clips (round-robin over ``classes``) and the manifest into ``out``; returns the manifest path."""
    cfg = cfg or SynthConfig()
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        label = classes[i % len(classes)]
        lines.append(_write_clip(out, f"syn_{i:04d}", label, seed, i,
                                 split_of(i, n, cfg.val_fraction, len(classes)), cfg))
        log(f"[{i + 1}/{n}] {lines[-1]['video']} {label:7s} {lines[-1]['split']:5s} "
            f"{len(lines[-1]['events'])} events")
    return _finish(out, lines, {"n": n, "seed": seed, "classes": list(classes)}, cfg)


def generate_splits(out: Path, per_class: dict[str, int], seed: int = 0, cfg: SynthConfig | None = None,
                    log=print, classes: tuple[str, ...] = CLASSES) -> Path:
    """Train / val / test sets with ``per_class[split]`` clips of every class. Clip ``i`` of a
    split draws from ``[seed, split number, i]``: the splits never share a random stream, and
    a split's clips do not depend on how large the other splits are."""
    cfg = cfg or SynthConfig()
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(per_class) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown} (known: {', '.join(SPLITS)})")
    lines = []
    for split in SPLITS:
        n = per_class.get(split, 0) * len(classes)
        for i in range(n):
            label = classes[i % len(classes)]
            lines.append(_write_clip(out, f"{split}_{i:04d}", label, [seed, SPLITS.index(split)], i, split, cfg))
            log(f"[{split} {i + 1}/{n}] {lines[-1]['video']} {label:7s} {len(lines[-1]['events'])} events")
    return _finish(out, lines, {"per_class": per_class, "seed": seed, "classes": list(classes)}, cfg)


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=24, help="number of clips (classes go round-robin)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=SynthConfig.duration, help="clip length in seconds")
    p.add_argument("--size", type=int, default=SynthConfig.size, help="frame width = height in pixels")
    p.add_argument("--sample-rate", type=int, default=SynthConfig.sample_rate)
    p.add_argument("--val-fraction", type=float, default=SynthConfig.val_fraction)
    p.add_argument("--splits", metavar="TRAIN,VAL,TEST",
                   help="clips per class in each split (instead of --n; each split has its own seed stream)")
    args = p.parse_args(argv)
    cfg = SynthConfig(duration=args.duration, size=args.size, sample_rate=args.sample_rate,
                      val_fraction=args.val_fraction)
    if args.splits:
        try:
            counts = [int(x) for x in args.splits.split(",")]
            if len(counts) != 3 or min(counts) < 0:
                raise ValueError
        except ValueError:
            print(f"error: --splits {args.splits!r}: three counts TRAIN,VAL,TEST", file=sys.stderr)
            return 2
        manifest = generate_splits(args.out, dict(zip(SPLITS, counts)), args.seed, cfg)
    else:
        manifest = generate(args.out, args.n, args.seed, cfg)
    print(f"wrote {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
