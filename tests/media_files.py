"""Small synthetic media files for the video/audio tests, written with PyAV.

Every video frame encodes its index j in grey levels, which survive codecs far
better than colours: the top half is (j % 16)·16 + 8, the bottom half (j // 16)·16 + 8,
steps of 16 so codec noise of a few levels cannot change them. A white cross
through the picture's centre checks the crop.
"""
from __future__ import annotations

import math
from fractions import Fraction

import av
import numpy as np


def frame_image(j: int, width: int, height: int) -> np.ndarray:
    img = np.empty((height, width, 3), np.uint8)
    img[: height // 2] = (j % 16) * 16 + 8
    img[height // 2:] = (j // 16) % 16 * 16 + 8  # indices repeat every 256 frames
    img[height // 2 - 2:height // 2 + 2, :] = 255
    img[:, width // 2 - 2:width // 2 + 2] = 255
    return img


def frame_index(rgb: np.ndarray) -> int:
    """Index (mod 256) encoded in a (resized, cropped) frame, read from patches away from the cross."""
    low, high = rgb[8:40, 8:40].mean(), rgb[-40:-8, 8:40].mean()
    return int(round((low - 8) / 16)) + 16 * int(round((high - 8) / 16))


def sine(freq: float, seconds: float, sr: int, channels: int = 1) -> np.ndarray:
    """(channels, samples) float32 sine at 0.5 amplitude; channel c is scaled by 1/(c+1)."""
    t = np.arange(round(seconds * sr)) / sr
    wave = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([wave / (c + 1) for c in range(channels)])


def write_video(
    path,
    *,
    size=(320, 240),
    fps: Fraction | int = 30,
    seconds: float = 3.0,
    codec: str = "libx264",
    times: list[float] | None = None,
    gop: int | None = None,
    audio_freq: float | None = None,
):
    """A video of flat indexed frames; ``times`` (seconds) gives variable frame timing.

    With ``audio_freq`` it also gets a 44.1 kHz stereo AAC sine track as long as the video.
    """
    width, height = size
    count = len(times) if times is not None else round(seconds * fps)
    with av.open(str(path), "w") as container:
        # superfast: quicker than the default preset and still uses B-frames.
        stream = container.add_stream(codec, rate=fps, options={"preset": "superfast"} if codec == "libx264" else {})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if gop is not None:
            stream.codec_context.gop_size = gop
        # Every stream must exist before the first packet is written.
        audio = add_audio_stream(container, 44100, 2) if audio_freq is not None else None
        for j in range(count):
            frame = av.VideoFrame.from_ndarray(frame_image(j, width, height), format="rgb24")
            frame.pts = round(times[j] * 1000) if times is not None else j
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if audio is not None:
            seconds = float(count / fps) if times is None else times[-1]
            write_audio(container, audio, sine(audio_freq, seconds, 44100, 2))
    return path


def add_audio_stream(container, sr: int, channels: int, codec: str = "aac"):
    return container.add_stream(codec, rate=sr, layout="stereo" if channels == 2 else "mono")


def write_audio(container, stream, wave: np.ndarray) -> None:
    """Encode (channels, samples) float32 into an audio stream of ``container``."""
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave), format="fltp", layout=stream.layout.name)
    frame.sample_rate, frame.pts = stream.rate, 0
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def decoded_times(path) -> list[Fraction]:
    """Presentation times (s) of the first video stream's frames, straight from PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [frame.pts * stream.time_base for frame in container.decode(stream)]


def ffmpeg_fps_pick(times: list[Fraction], k: int, start: Fraction = Fraction(0)) -> int:
    """Index of the source frame ffmpeg's fps=25 filter shows as output frame k.

    The filter rounds each input time to the nearest output tick (halves away from
    zero) and shows the last input whose tick ≤ the output's tick.
    """
    ticks = [math.floor((t - start) * 25 + Fraction(1, 2)) for t in times]
    return max(j for j, tick in enumerate(ticks) if tick <= k) if ticks[0] <= k else 0


def ffmpeg_filtered(path, flags: str = "bicubic") -> list[np.ndarray]:
    """The frames ffmpeg itself makes of ``path`` with the original's filters, ``fps=25`` then
    ``scale=iw*256/min(iw,ih):ih*256/min(iw,ih)`` (``flags`` = swscale interpolation), as RGB,
    through PyAV's binding of libavfilter (not a re-implementation)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        graph = av.filter.Graph()
        node = graph.add_buffer(template=stream)
        for name, args in (("fps", "fps=25"), ("scale", f"w='iw*256/min(iw,ih)':h='ih*256/min(iw,ih)':flags={flags}"),
                           ("format", "pix_fmts=rgb24"), ("buffersink", None)):
            nxt = graph.add(name, args) if args else graph.add(name)
            node.link_to(nxt)
            node = nxt
        graph.configure()
        out: list[np.ndarray] = []

        def drain():
            while True:
                try:
                    out.append(graph.pull().to_ndarray())
                except (av.BlockingIOError, av.EOFError):
                    return

        for frame in container.decode(stream):
            graph.push(frame)
            drain()
        graph.push(None)
        drain()
    return out


def centre_crop(rgb: np.ndarray, size: int = 224) -> np.ndarray:
    h, w = rgb.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return rgb[top:top + size, left:left + size]


def noise_video(path, *, size=(96, 64), fps=30, seconds=2.0, pix_fmt="yuv444p"):
    """Lossless random-noise frames: every pixel matters, so interpolation methods differ visibly."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "superfast", "crf": "0"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], pix_fmt
        for j in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8),
                                               format="rgb24")
            frame.pts = j
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path
