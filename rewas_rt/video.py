"""Video input: any file PyAV decodes → the window the Synchformer encoder takes
(docs/design.md §1 stages 1–2).

The original re-encodes the video with ffmpeg (``fps=25``, then
``scale=iw*256/min(iw,ih):ih*256/min(iw,ih)``) and centre-crops 224. We apply the
same rules to the decoded frames, without the lossy re-encode:

* Frame rate, as ffmpeg's ``fps`` filter: a source frame's time is rounded to the
  nearest 1/25 s tick (halves up), and output frame k (at ``start + k/25``) shows the
  last source frame whose tick is ≤ k, i.e. whose time is < ``start + (k + ½)/25``.
  Frames are repeated or dropped, never blended. Times are on the file's timeline
  (``media.py``).
* Size: swscale's bicubic filter (ffmpeg's default for ``scale``, so the same
  library and filter as the original) to short side 256, the long side truncated as
  ffmpeg evaluates the expression; then the centre 224×224, offset ``(size − 224)//2``
  (equal to the original's even-size crop followed by torchvision's CenterCrop).
* Short clips: output frame k is real while ``start + (k + ½)/25`` ≤ the end of the
  last source frame (where ffmpeg stops emitting frames). The remaining frames
  repeat the last real one, with a warning; ``VideoClip.real_frames`` says how many
  are real. A window with no real frame (``start`` at or past the end) is an error.
* Display-matrix rotation is ignored: frames are used as stored.
"""
from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from rewas_rt import constants as C
from rewas_rt import media
from rewas_rt.errors import InputError


@dataclass(frozen=True)
class VideoClip:
    frames: np.ndarray  # (n, CROP, CROP, 3) uint8 RGB at C.FPS
    start: float  # window start, seconds on the file's timeline
    real_frames: int  # frames [0, real_frames) show the source; later ones repeat the last
    source_fps: float | None  # the stream's average frame rate
    source_size: tuple[int, int]  # (width, height) as decoded
    source_duration: float | None  # as declared by the stream or container, seconds

    @property
    def real_seconds(self) -> float:
        return self.real_frames / C.FPS


def load_video(path: str | os.PathLike, start: float = 0.0, duration: float = C.VIDEO_SECONDS) -> VideoClip:
    """Decode ``duration`` seconds from ``start`` as ``round(duration·25)`` RGB 224×224 frames."""
    path = os.fspath(path)
    media.check_start(start)
    n = round(duration * C.FPS)
    if n < 1:
        raise ValueError(f"duration {duration} s is shorter than one frame")
    with media.open_input(path) as container:
        stream = media.first_stream(container, "video", path)
        stream.thread_type = "AUTO"
        t0 = media.origin(container)
        decoded = media.decode_from(container, stream, Fraction(start), path)
        frames, real, end = _resample(decoded, stream, t0, Fraction(start), n, path)
        declared = stream.duration * stream.time_base if stream.duration else None
        if declared is None and container.duration:
            declared = Fraction(container.duration, av.time_base)
        clip = VideoClip(
            frames=frames,
            start=float(start),
            real_frames=real,
            source_fps=float(stream.average_rate) if stream.average_rate else None,
            source_size=(stream.width, stream.height),
            source_duration=float(declared) if declared is not None else None,
        )
    if real == 0:
        raise InputError(f"{path}: start {start:g} s leaves no video (the video ends at {float(end):.2f} s)")
    if real < n:
        warnings.warn(
            f"{path}: only {real / C.FPS:.2f} s of video from {start:g} s; "
            f"the last frame is repeated to fill {n / C.FPS:g} s",
            stacklevel=2,
        )
    return clip


def frames_available(path: str | os.PathLike, start: float = 0.0) -> int:
    """How many 25 fps frames from ``start`` are real (the rule above), read from the
    packets' times without decoding: cheap for any length. 0 when start is at or past the end."""
    media.check_start(start)
    end = media.video_end(path)
    ticks = (end - Fraction(start)) * 2 * C.FPS  # output k is real while 2k + 1 ≤ ticks
    return max(0, math.floor((ticks - 1) / 2) + 1) if ticks >= 1 else 0


def iter_windows(
    path: str | os.PathLike, starts: Sequence[int], start: float = 0.0, length: int = C.FRAMES
) -> Iterator[tuple[np.ndarray, int]]:
    """Windows of ``length`` frames beginning at output frames ``starts`` (ascending) of the
    25 fps video from ``start``: yields (frames (length, 224, 224, 3) uint8, real frame count).

    The file is decoded once, front to back, and only the frames of the current window are
    held (overlapping windows share them), so memory does not grow with the video's length.
    Frames are the ones ``load_video(path, start + s/25, length/25)`` gives, also in how a
    window that runs past the end repeats its last real frame (with a warning).
    """
    path = os.fspath(path)
    media.check_start(start)
    if list(starts) != sorted(starts) or (starts and starts[0] < 0):
        raise ValueError(f"window starts must be ascending frame indices ≥ 0, got {list(starts)}")
    with media.open_input(path) as container:
        stream = media.first_stream(container, "video", path)
        stream.thread_type = "AUTO"
        t0 = media.origin(container)
        out = _fps_frames(media.decode_from(container, stream, Fraction(start), path), stream, t0, Fraction(start), path)
        buf: list[np.ndarray] = []
        first = 0  # output frame index of buf[0]
        for s in starts:
            drop = min(len(buf), s - first)
            del buf[:drop]
            first += drop
            while first < s and next(out, None) is not None:
                first += 1
            while first == s and len(buf) < length and (frame := next(out, None)) is not None:
                buf.append(frame)
            real = len(buf) if first == s else 0
            if real == 0:
                raise InputError(f"{path}: no video at {start + s / C.FPS:g} s (the video ends before)")
            if real < length:
                warnings.warn(f"{path}: only {real / C.FPS:.2f} s of video from {start + s / C.FPS:g} s; "
                              f"the last frame is repeated to fill {length / C.FPS:g} s", stacklevel=2)
            yield np.stack(buf + [buf[-1]] * (length - real)), real


def _resample(frames: Iterable, stream, t0: Fraction, start: Fraction, n: int, path: str):
    """The fps rule (module docstring) → (frames (n,224,224,3), real frame count, end time)."""
    out = _fps_frames(frames, stream, t0, start, path)
    picked = list(itertools.islice(out, n))
    real = len(picked)
    if real == 0:
        return np.zeros((0, C.CROP, C.CROP, 3), np.uint8), 0, out.end
    picked += [picked[-1]] * (n - real)
    return np.stack(picked), real, out.end


class _fps_frames:
    """Iterator over the output frames of the fps rule from ``start``: output k is
    the last source frame with time < ``start + (k + ½)/25``, resized and cropped.
    It ends after the last real output frame (``start + (k + ½)/25`` ≤ ``end``, the end
    of the last source frame); ``end`` is known once it has ended. Frames are
    converted only when shown, and only the current source frame is held."""

    def __init__(self, frames: Iterable, stream, t0: Fraction, start: Fraction, path: str):
        self._gen = self._run(iter(frames), stream, t0, start, path)
        self.end: Fraction | None = None

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        return next(self._gen)

    def _run(self, frames, stream, t0, start, path):
        def limit(k: int) -> Fraction:  # output k shows the last frame with time < limit(k)
            return start + Fraction(2 * k + 1, 2 * C.FPS)

        step = 1 / Fraction(stream.average_rate or C.FPS)  # for frames lacking pts or duration
        current, crop, t, k = None, None, None, 0
        for frame in frames:
            ft = media.frame_time(frame, stream, t0)
            t = ft if ft is not None else (t + step if t is not None else Fraction(0))
            # The first frame decoded also stands for any output frames before it.
            while current is not None and t >= limit(k):
                if crop is None:
                    crop = _resize_crop(current)
                yield crop
                k += 1
            current, crop = frame, None
            self.end = t + (frame.duration * stream.time_base if frame.duration else step)
        if current is None:
            where = f" from {float(start):g} s on (is start past the end?)" if start else " (empty or damaged video stream)"
            raise InputError(f"{path}: no decodable video frames{where}")
        while limit(k) <= self.end:
            if crop is None:
                crop = _resize_crop(current)
            yield crop
            k += 1


def _resize_crop(frame: av.VideoFrame) -> np.ndarray:
    """Short side to 256 (bicubic, as ffmpeg's scale), centre 224×224, RGB uint8."""
    w, h = frame.width, frame.height
    if w <= h:
        size = (C.SHORT_SIDE, h * C.SHORT_SIDE // w)
    else:
        size = (w * C.SHORT_SIDE // h, C.SHORT_SIDE)
    rgb = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="BICUBIC").to_ndarray()
    top, left = (size[1] - C.CROP) // 2, (size[0] - C.CROP) // 2
    return rgb[top:top + C.CROP, left:left + C.CROP]


# The original computes x/255 and (x − 0.5)/0.5 in float16; as the input is uint8,
# a 256-entry table of those float16 results reproduces it exactly.
_NORMALIZE_LUT = (
    (np.arange(256, dtype=np.float16) / np.float16(255) - np.float16(C.VIDEO_MEAN)) / np.float16(C.VIDEO_STD)
).astype(np.float32)


def normalize(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB → float32 in [−1, 1], bit-identical to the original's float16 maths."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"normalize expects uint8 frames, got {frames.dtype}")
    return _NORMALIZE_LUT[frames]


def segments(frames: np.ndarray) -> np.ndarray:
    """(125, H, W, C) frames → (1, S, C, T, H, W): 14 segments of 16 frames, stride 8,
    the first starting at frame 2 (frames 0, 1 and 122–124 are in no segment).

    Works on any dtype, so it can run before or after ``normalize``.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] != C.FRAMES:
        raise ValueError(f"segments expects ({C.FRAMES}, H, W, C) frames, got {frames.shape}")
    _, h, w, c = frames.shape
    out = np.empty((1, C.SEGMENTS, c, C.SEGMENT_LEN, h, w), dtype=frames.dtype)
    for i in range(C.SEGMENTS):
        first = C.SEGMENT_START + C.SEGMENT_STRIDE * i
        out[0, i] = frames[first:first + C.SEGMENT_LEN].transpose(3, 0, 1, 2)
    return out


def normalized_segments(clips: Sequence[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """``np.concatenate([normalize(segments(f)) for f in clips])``, bit for bit, written straight into one
    (B, S, C, T, H, W) float32 array: no uint8 segment copies, no per-clip float arrays, no concatenation.

    ``out``: an array to write into (C-contiguous float32 of that shape, e.g. the caller's buffer kept
    between requests, which also saves the page faults of a fresh 134 MB per clip); a new one if None.
    """
    if not len(clips):
        raise ValueError("normalized_segments needs at least one clip")
    shape = (len(clips), C.SEGMENTS, 3, C.SEGMENT_LEN, C.CROP, C.CROP)
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 {shape}, got {out.dtype} {out.shape}")
    for b, frames in enumerate(clips):
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.shape != (C.FRAMES, C.CROP, C.CROP, 3):
            raise ValueError(f"clip {b}: expected ({C.FRAMES}, {C.CROP}, {C.CROP}, 3) uint8 frames, "
                             f"got {frames.dtype} {frames.shape}")
        # Channels first once (34 MB of uint8), so that each segment's table look-up reads contiguous rows.
        planar = np.ascontiguousarray(frames.transpose(3, 0, 1, 2))
        for i in range(C.SEGMENTS):
            first = C.SEGMENT_START + C.SEGMENT_STRIDE * i
            # mode="clip": uint8 indices are always within the 256-entry table, and "raise" would buffer `out`.
            np.take(_NORMALIZE_LUT, planar[:, first:first + C.SEGMENT_LEN], out=out[b, i], mode="clip")
    return out
