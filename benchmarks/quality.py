"""Quality metrics of generated sound: energy MAE, AV-Align, energy-curve correlation.

Importable (``from benchmarks.quality import energy_mae, av_align, ...``) and a CLI::

    python benchmarks/quality.py --generated gen.wav --reference gt.wav --video clip.mp4 --curve gen.energy.csv
    python benchmarks/quality.py --generated gen_dir/ --reference gt_dir/ --video video_dir/ --json scores.json

Each metric runs when its inputs are given; with folders, files are paired by stem
(``gen_dir/x.wav`` with ``gt_dir/x.wav``, ``video_dir/x.mp4``, ``curve_dir/x.csv``) and
the means are reported next to the per-clip values.

Definitions (benchmarks/README.md has the long form):

energy MAE (ReWaS paper, ``eval_MAE.py`` of the original repository)
    Both waveforms at 16 kHz are cut or zero-padded to the 5.12 s window (81,920 samples),
    normalised as the original dataset does (minus mean, / (max|x| + 1e-8), × 0.5), turned
    into the natural-log mel spectrogram of ``rewas_rt.energy.log_mel`` (|STFT| n_fft 1024,
    hop 160, slaney mel 64 bins 0–8 kHz, log of the magnitude clamped at 1e-5), and averaged
    over the 64 mel bins: one value per 10 ms frame, 512 frames, **unsmoothed** (the
    original takes ``mean(log_mel_spec, dim=mel)`` of the dataset's mel). MAE = mean over
    frames (and over clips: every frame of every clip weighs the same, as ``nn.L1Loss`` over
    the concatenated batch does). Units: natural-log mel magnitude (nats); gain-invariant
    because of the normalisation.

AV-Align (Yariv et al. 2024, "Diverse and Aligned Audio-to-Video Generation via
Text-to-Video Model Adaptation"; ``av_align.py`` of TempoTokens, also used by ReWaS)
    Video peaks: the mean Farneback optical-flow magnitude between consecutive grey frames
    (OpenCV, parameters 0.5, 3, 15, 3, 5, 1.2, 0), the trajectory being
    ``[flow(f0, f1), flow(f0, f1), flow(f1, f2), …]``, i.e. entry i is the motion into
    frame i; strict local maxima ``a[i-1] < a[i] > a[i+1]`` at time i/fps. The first
    ``5·fps + 1`` frames at the video's own rate, as the ReWaS version cuts at 5 s.
    Audio peaks: onsets. The original uses librosa's ``onset_detect`` (22.05 kHz, hop
    512); here, without librosa: spectral flux of ``rewas_rt.energy.log_mel`` (16 kHz,
    hop 10 ms) in dB (×20/ln 10) with librosa's 80 dB floor below the maximum, the mean
    over mel bins of the positive frame-to-frame increase, normalised to [0, 1], and
    librosa's peak picking with its default windows converted to 10 ms frames (max over
    −30 ms…0, mean over −100…+100 ms, delta 0.07, at least 30 ms between onsets). Frame f
    is centred at (160·f + 80)/16000 s (the STFT window covers samples 160f−432 … 160f+591).
    Score: I = the number of audio peaks with a video peak strictly within ±1/fps; AV-Align
    = I / (|audio peaks| + |video peaks| − I). 1 = every peak matched both ways. Undefined
    (NaN) when neither side has a peak (the original divides by zero).

energy correlation (this project)
    Pearson r between the control curve that drove generation (``Result.energy`` / the
    ``--energy-out`` CSV of ``rewas-rt infer``: 512 values, the log-mel-mean scale) and
    ``rewas_rt.energy.energy_target`` of the generated audio — the same smoothing (112
    nearest → Savitzky–Golay(9, 2) → 512) that made the training targets, so a perfect
    follower scores 1. NaN when either curve is constant. ``control_mae`` is the MAE between
    the same two curves.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewas_rt import constants as C
from rewas_rt.atomic import atomic_write_text
from rewas_rt.errors import cli_main
from rewas_rt.energy import energy_from_log_mel, energy_target, log_mel, normalize_wav, pearson

# --------------------------------------------------------------------------- energy


def fit_window(wave: np.ndarray, samples: int = C.WAVE_SAMPLES) -> np.ndarray:
    """Mono float32 cut or zero-padded to ``samples`` (the 5.12 s window at 16 kHz)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected a mono waveform (1-D), got shape {wave.shape}")
    return np.pad(wave[:samples], (0, max(0, samples - wave.size)))


def energy_curve(wave: np.ndarray) -> np.ndarray:
    """The paper's per-frame energy (512,): mean over mel bins of the normalised log-mel, unsmoothed."""
    return energy_from_log_mel(log_mel(normalize_wav(fit_window(wave))))


def curve_mae(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"curves differ in shape: {a.shape} vs {b.shape}")
    return float(np.mean(np.abs(a - b)))


def energy_mae(generated: np.ndarray | Sequence[np.ndarray], reference: np.ndarray | Sequence[np.ndarray]) -> float:
    """Energy MAE between generated and ground-truth audio (16 kHz mono), one clip or a list of clips."""
    gen = [generated] if isinstance(generated, np.ndarray) and generated.ndim == 1 else list(generated)
    ref = [reference] if isinstance(reference, np.ndarray) and reference.ndim == 1 else list(reference)
    if len(gen) != len(ref) or not gen:
        raise ValueError(f"need the same non-zero number of generated and reference clips ({len(gen)} vs {len(ref)})")
    return curve_mae(np.stack([energy_curve(g) for g in gen]), np.stack([energy_curve(r) for r in ref]))


def energy_correlation(control: np.ndarray, generated: np.ndarray) -> dict[str, float]:
    """Control curve (512,) vs the generated audio's smoothed energy: Pearson r and MAE."""
    control = np.asarray(control, np.float32).ravel()
    if control.size != C.MEL_FRAMES:
        raise ValueError(f"the control curve must have {C.MEL_FRAMES} values, got {control.size}")
    got = energy_target(fit_window(generated))
    return {"energy_correlation": pearson(control, got), "control_mae": curve_mae(control, got)}


# --------------------------------------------------------------------------- AV-Align: audio onsets

ONSET_TOP_DB = 80.0  # librosa power_to_db(top_db=80)
ONSET_DELTA = 0.07  # librosa onset_detect defaults, as seconds -> 10 ms frames below
FRAME_S = C.HOP / C.SAMPLE_RATE


def _frames(seconds: float, plus_one: bool = False) -> int:
    # librosa: int(seconds * sr // hop) (+ 1 for the post windows)
    return int(seconds * C.SAMPLE_RATE // C.HOP) + (1 if plus_one else 0)


def onset_envelope(wave: np.ndarray) -> np.ndarray:
    """Spectral flux (frames,) of a 16 kHz waveform, normalised to [0, 1]."""
    wave = np.asarray(wave, np.float32)
    if wave.ndim != 1 or wave.size < C.N_FFT:
        raise ValueError(f"need a mono waveform of at least {C.N_FFT} samples")
    db = log_mel(wave).astype(np.float64) * (20.0 / np.log(10.0))  # (frames, mels), dB of the mel magnitude
    db = np.maximum(db, db.max() - ONSET_TOP_DB)
    flux = np.zeros(db.shape[0])
    flux[1:] = np.maximum(0.0, np.diff(db, axis=0)).mean(axis=1)
    flux -= flux.min()
    return flux / (flux.max() + np.finfo(np.float64).tiny)


def peak_pick(x: np.ndarray, pre_max: int, post_max: int, pre_avg: int, post_avg: int, delta: float,
              wait: int) -> np.ndarray:
    """librosa.util.peak_pick: x[n] = max(x[n-pre_max : n+post_max]), x[n] >= mean(x[n-pre_avg : n+post_avg]) + delta,
    and more than ``wait`` frames after the previous peak."""
    n = len(x)
    peaks: list[int] = []
    for i in range(n):
        lo_m, hi_m = max(0, i - pre_max), min(n, i + post_max)
        lo_a, hi_a = max(0, i - pre_avg), min(n, i + post_avg)
        if x[i] == x[lo_m:hi_m].max() and x[i] >= x[lo_a:hi_a].mean() + delta:
            if not peaks or i - peaks[-1] > wait:
                peaks.append(i)
    return np.asarray(peaks, dtype=np.int64)


def audio_peaks(wave: np.ndarray, seconds: float | None = 5.0) -> np.ndarray:
    """Onset times (s) of a 16 kHz mono waveform (its first ``seconds``, as the ReWaS AV-Align cuts at 5 s)."""
    wave = np.asarray(wave, np.float32)
    if seconds is not None:
        wave = wave[: round(seconds * C.SAMPLE_RATE)]
    env = onset_envelope(wave)
    frames = peak_pick(env, pre_max=_frames(0.03), post_max=_frames(0.0, True), pre_avg=_frames(0.10),
                       post_avg=_frames(0.10, True), delta=ONSET_DELTA, wait=_frames(0.03))
    return (frames * C.HOP + (C.N_FFT // 2 - C.STFT_PAD)) / C.SAMPLE_RATE


# --------------------------------------------------------------------------- AV-Align: video motion


def _cv2():
    try:
        import cv2
    except ImportError:
        raise RuntimeError("AV-Align needs OpenCV: pip install 'rewas-rt[bench]' (opencv-python-headless)") from None
    return cv2


def _gray(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 2:
        return np.ascontiguousarray(frame, dtype=np.uint8)
    # RGB and BGR give the same weights up to the R/B swap; the original uses BGR2GRAY on BGR frames.
    return _cv2().cvtColor(np.ascontiguousarray(frame, dtype=np.uint8), _cv2().COLOR_RGB2GRAY)


def flow_magnitude(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Farneback optical-flow magnitude between two frames (the original's parameters)."""
    cv2 = _cv2()
    flow = cv2.calcOpticalFlowFarneback(_gray(a), _gray(b), None, 0.5, 3, 15, 3, 5, 1.2, 0)
    return float(cv2.mean(cv2.magnitude(flow[..., 0], flow[..., 1]))[0])


def flow_trajectory(frames: Sequence[np.ndarray]) -> np.ndarray:
    """Entry i: motion into frame i (entry 0 repeats entry 1, as the original)."""
    if len(frames) < 2:
        raise ValueError("AV-Align needs at least 2 video frames")
    grey = [_gray(f) for f in frames]
    traj = [flow_magnitude(grey[i - 1], grey[i]) for i in range(1, len(grey))]
    return np.asarray([traj[0], *traj])


def local_max_indexes(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    i = np.arange(1, len(arr) - 1)
    return i[(arr[i - 1] < arr[i]) & (arr[i] > arr[i + 1])]


def video_peaks(frames: Sequence[np.ndarray], fps: float) -> tuple[np.ndarray, np.ndarray]:
    """(flow trajectory, peak times in seconds)."""
    traj = flow_trajectory(frames)
    return traj, local_max_indexes(traj) / float(fps)


def peaks_iou(audio: Sequence[float], video: Sequence[float], fps: float) -> float:
    """The original's IoU: audio peaks with a video peak strictly within ±1/fps, over the union."""
    audio, video = np.asarray(audio, np.float64), np.asarray(video, np.float64)
    tol = 1.0 / float(fps)
    hits = sum(1 for a in audio if np.any((video - tol < a) & (a < video + tol)))
    union = len(audio) + len(video) - hits
    return hits / union if union else float("nan")


def av_align(frames: Sequence[np.ndarray], fps: float, wave: np.ndarray, seconds: float | None = 5.0) -> dict:
    """AV-Align of video frames (at ``fps``) and a 16 kHz waveform starting at the first frame."""
    if seconds is not None:
        frames = frames[: int(fps * seconds) + 1]
    _, v = video_peaks(frames, fps)
    a = audio_peaks(wave, seconds)
    return {"av_align": peaks_iou(a, v, fps), "audio_peaks": a.tolist(), "video_peaks": v.tolist(), "fps": float(fps)}


def read_video_frames(path: str | os.PathLike, start: float = 0.0, seconds: float | None = 5.0
                      ) -> tuple[list[np.ndarray], float]:
    """Grey frames at the file's own rate from ``start`` (PyAV), and that rate."""
    from rewas_rt import media

    path = os.fspath(path)
    with media.open_input(path) as container:
        stream = media.first_stream(container, "video", path)
        fps = float(stream.average_rate or stream.guessed_rate or C.FPS)
        t0 = media.origin(container)
        limit = None if seconds is None else int(fps * seconds) + 1
        frames = []
        from fractions import Fraction

        for frame in media.decode_from(container, stream, Fraction(start), path):
            t = media.frame_time(frame, stream, t0)
            if t is not None and t < start - 0.5 / fps:
                continue
            frames.append(frame.to_ndarray(format="gray"))
            if limit is not None and len(frames) >= limit:
                break
    return frames, fps


# --------------------------------------------------------------------------- files and CLI


def load_wave(path: str | os.PathLike, start: float = 0.0) -> np.ndarray:
    from rewas_rt.audio import load_audio

    return load_audio(path, start=start, sr=C.SAMPLE_RATE)


def evaluate(generated: str | os.PathLike, reference: str | os.PathLike | None = None,
             video: str | os.PathLike | None = None, curve: str | os.PathLike | None = None,
             start: float = 0.0) -> dict:
    """Every metric whose inputs are given, for one generated clip (a WAV, or a video with the sound muxed in).

    ``start``: where the window starts in the reference audio and the video (the generated sound starts at 0).
    """
    gen = load_wave(generated)
    out: dict = {"generated": os.fspath(generated)}
    if reference is not None:
        out["reference"] = os.fspath(reference)
        out["energy_mae"] = energy_mae(gen, load_wave(reference, start))
    if video is not None:
        frames, fps = read_video_frames(video, start)
        out["video"] = os.fspath(video)
        out.update(av_align(frames, fps, gen))
    if curve is not None:
        from rewas_rt.energy_control import load_curve

        out["curve"] = os.fspath(curve)
        out.update(energy_correlation(load_curve(curve), gen))
    return out


METRICS = ("energy_mae", "av_align", "energy_correlation", "control_mae")
_VIDEO_EXT = (".mp4", ".mkv", ".mov", ".webm", ".avi")
_AUDIO_EXT = (".wav", ".flac", ".mp3", ".ogg", ".m4a", *_VIDEO_EXT)


def _match(folder: Path, stem: str, exts: Sequence[str]) -> Path | None:
    for ext in exts:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def evaluate_many(generated: Path, reference: Path | None, video: Path | None, curve: Path | None,
                  start: float = 0.0) -> dict:
    """Folders paired by stem: per-clip results and the mean of each metric (energy MAE: over all frames)."""
    gens = sorted(p for p in generated.iterdir() if p.suffix.lower() in _AUDIO_EXT and not p.name.startswith("."))
    clips = []
    for g in gens:
        stem = g.name.split(".")[0]  # x.rewas.wav pairs with x.mp4
        find = {k: (_match(d, stem, exts) if d is not None else None)
                for k, d, exts in (("reference", reference, _AUDIO_EXT), ("video", video, _VIDEO_EXT),
                                   ("curve", curve, (".csv", ".npy", ".energy.csv")))}
        missing = [k for k, d in (("reference", reference), ("video", video), ("curve", curve))
                   if d is not None and find[k] is None]
        if missing:
            clips.append({"generated": str(g), "skipped": f"no {', '.join(missing)} for stem {stem!r}"})
            continue
        clips.append(evaluate(g, find["reference"], find["video"], find["curve"], start))
    summary = {}
    for m in METRICS:
        vals = [c[m] for c in clips if m in c and not math.isnan(c[m])]
        if vals:
            summary[m] = float(np.mean(vals))
            summary[f"{m}_clips"] = len(vals)
    return {"clips": clips, "mean": summary}


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="quality.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--generated", type=Path, required=True, help="generated audio (WAV or a video with sound) or a folder")
    p.add_argument("--reference", type=Path, help="ground-truth audio (or video with sound) or folder: energy MAE")
    p.add_argument("--video", type=Path, help="the input video or folder: AV-Align")
    p.add_argument("--curve", type=Path, help="the control curve (.csv from `rewas-rt infer --energy-out`, or .npy) "
                                              "or folder: energy correlation")
    p.add_argument("--start", type=float, default=0.0, help="window start (s) in the reference and the video")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    for name in ("generated", "reference", "video", "curve"):
        path = getattr(args, name)
        if path is not None and not path.exists():
            p.error(f"--{name} {path}: not found")
    if args.generated.is_dir():
        others = [getattr(args, n) for n in ("reference", "video", "curve") if getattr(args, n) is not None]
        if any(not o.is_dir() for o in others):
            p.error("with a --generated folder, --reference/--video/--curve must be folders too")
        res = evaluate_many(args.generated, args.reference, args.video, args.curve, args.start)
        for c in res["clips"]:
            print(_line(c))
        print("mean: " + ", ".join(f"{k} {v:.4f}" for k, v in res["mean"].items() if not k.endswith("_clips")))
    else:
        res = evaluate(args.generated, args.reference, args.video, args.curve, args.start)
        print(_line(res))
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=1) + "\n")
    return 0


def _line(r: dict) -> str:
    if "skipped" in r:
        return f"{r['generated']}: skipped ({r['skipped']})"
    parts = [f"{m} {r[m]:.4f}" for m in METRICS if m in r]
    if "av_align" in r:
        parts.append(f"({len(r['audio_peaks'])} audio / {len(r['video_peaks'])} video peaks)")
    return f"{r['generated']}: " + (", ".join(parts) or "no metric (give --reference, --video or --curve)")


if __name__ == "__main__":
    sys.exit(main())
