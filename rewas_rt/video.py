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

import os
import warnings
from collections.abc import Iterable
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


def _resample(frames: Iterable, stream, t0: Fraction, start: Fraction, n: int, path: str):
    """The fps rule (module docstring) → (frames (n,224,224,3), real frame count, end time)."""
    def limit(k: int) -> Fraction:  # output k shows the last frame with time < limit(k)
        return start + Fraction(2 * k + 1, 2 * C.FPS)

    step = 1 / Fraction(stream.average_rate or C.FPS)  # for frames lacking pts or duration
    crops: list[np.ndarray] = []  # converted only when a frame is shown
    picks: list[int] = []  # per output frame, its index in crops
    current, current_index, t, end = None, None, None, None

    def show_current() -> int:
        nonlocal current_index
        if current_index is None:
            crops.append(_resize_crop(current))
            current_index = len(crops) - 1
        return current_index

    for frame in frames:
        ft = media.frame_time(frame, stream, t0)
        t = ft if ft is not None else (t + step if t is not None else Fraction(0))
        # The first frame decoded also stands for any output frames before it.
        while current is not None and len(picks) < n and t >= limit(len(picks)):
            picks.append(show_current())
        if len(picks) == n:
            break
        current, current_index = frame, None
        end = t + (frame.duration * stream.time_base if frame.duration else step)
    if current is None:
        where = f" from {float(start):g} s on (is start past the end?)" if start else " (empty or damaged video stream)"
        raise InputError(f"{path}: no decodable video frames{where}")
    real = len(picks)
    if real < n:
        real += sum(1 for k in range(real, n) if limit(k) <= end)
        picks += [show_current()] * (n - len(picks))
    return np.stack([crops[i] for i in picks]), real, end


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
