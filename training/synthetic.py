"""Synthetic audio-visual data set: small MP4 clips whose visible events drive the sound.

    python -m training.synthetic --out DIR --n 24 --seed 0

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
CLASSES = ("impact", "beep", "rain", "whoosh")
CAPTIONS = {
    "impact": ("a ball bouncing on the floor", "impacts of a bouncing ball", "a ball hitting the ground"),
    "beep": ("a beeping light", "beeps while a lamp blinks", "an electronic beep tone"),
    "rain": ("rain noise getting louder and softer", "the sound of rain", "a hissing noise texture"),
    "whoosh": ("something whooshing past", "a fast whoosh", "an object swishing by"),
}
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


MAKERS = {"impact": make_impact, "beep": make_beep, "rain": make_rain, "whoosh": make_whoosh}


def make_clip(label: str, seed: int, index: int, cfg: SynthConfig) -> Clip:
    rng = np.random.default_rng([seed, index])
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


def split_of(index: int, n: int, val_fraction: float) -> str:
    """Classes go round-robin; the last rounds (at least one, never all) are validation."""
    rounds = math.ceil(n / len(CLASSES))
    if rounds < 2 or val_fraction <= 0:
        return "train"
    val_rounds = min(rounds - 1, max(1, round(rounds * val_fraction)))
    return "val" if index // len(CLASSES) >= rounds - val_rounds else "train"


def generate(out: Path, n: int = 24, seed: int = 0, cfg: SynthConfig | None = None, log=print) -> Path:
    """Write ``n`` clips and the manifest into ``out``; returns the manifest path."""
    cfg = cfg or SynthConfig()
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        label = CLASSES[i % len(CLASSES)]
        clip = make_clip(label, seed, i, cfg)
        caption = CAPTIONS[label][np.random.default_rng([seed, i, 1]).integers(len(CAPTIONS[label]))]
        rel = f"clips/syn_{i:04d}.mp4"
        write_mp4(out / rel, clip.frames, clip.audio, cfg.sample_rate, cfg)
        lines.append({
            "id": f"syn_{i:04d}", "video": rel, "caption": caption, "label": label,
            "split": split_of(i, n, cfg.val_fraction), "start": 0.0, "duration": cfg.duration,
            "events": [round(e, 4) for e in clip.events],
        })
        log(f"[{i + 1}/{n}] {rel} {label:7s} {lines[-1]['split']:5s} {len(clip.events)} events "
            f"({(out / rel).stat().st_size / 1024:.0f} KiB)")
    manifest = out / MANIFEST
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (out / "synthetic.json").write_text(json.dumps({"n": n, "seed": seed, **dataclasses.asdict(cfg)}, indent=1) + "\n")
    return manifest


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
    args = p.parse_args(argv)
    cfg = SynthConfig(duration=args.duration, size=args.size, sample_rate=args.sample_rate,
                      val_fraction=args.val_fraction)
    manifest = generate(args.out, args.n, args.seed, cfg)
    print(f"wrote {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
