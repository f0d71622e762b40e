"""What video.py and audio.py share: opening media files with PyAV, one timeline,
error-tolerant decoding.

Timeline: seconds from the start of the file, where the start is the container's
``start_time`` (the earliest stream start). This is the ffmpeg command line's
convention, so video frames and audio samples of one file share one time axis
(and MPEG-TS files, whose timestamps start near 1.4 s, start at 0 too).
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from fractions import Fraction

import av
import av.container
import av.stream

from rewas_rt import constants as C
from rewas_rt.errors import InputError


def check_start(start: float) -> None:
    if not (math.isfinite(start) and start >= 0):
        raise InputError(f"start must be a time ≥ 0 s, got {start}")


def open_input(path: str | os.PathLike) -> av.container.InputContainer:
    """Open a media file for reading; every failure is an InputError naming the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not a media file")
    try:
        return av.open(path, metadata_errors="ignore")
    except (av.InvalidDataError, av.EOFError):
        raise InputError(f"{path}: not a media file, or damaged or incomplete") from None
    except av.FFmpegError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None


def first_stream(container: av.container.InputContainer, kind: str, path: str | os.PathLike) -> av.stream.Stream:
    """The first ``kind`` ("video" or "audio") stream; cover art is not video."""
    streams = [
        s for s in getattr(container.streams, kind)
        if not s.disposition & av.stream.Disposition.attached_pic
    ]
    if not streams:
        raise InputError(f"{os.fspath(path)}: has no {kind} stream")
    return streams[0]


def origin(container: av.container.InputContainer) -> Fraction:
    """Time 0 of the file's timeline, in seconds of the streams' timestamps."""
    start = container.start_time  # in AV_TIME_BASE units (microseconds)
    return Fraction(start, av.time_base) if start is not None else Fraction(0)


def decode_from(
    container: av.container.InputContainer, stream: av.stream.Stream, seconds: Fraction, path: str | os.PathLike
) -> Iterator:
    """Decoded frames of ``stream`` from a keyframe at or before ``seconds`` on the timeline.

    Seeking is only as exact as the container's index: in MPEG-TS/PS it lands on
    any packet, sometimes after the target. So after a seek, video frames before
    the first keyframe are dropped (they decode to garbage), and while the first
    frame is later than ``seconds`` we seek 1, 2, 4 … s further back, at last
    decoding from the beginning.
    """
    t0, back, seeked = origin(container), Fraction(0), False
    while seconds - back > 0:
        _seek(container, stream, t0 + seconds - back)
        seeked = True
        frames = decode(container, stream, path)
        first = next((f for f in frames if stream.type != "video" or f.key_frame), None)
        if first is not None and (first.pts is None or frame_time(first, stream, t0) <= seconds):
            yield first
            yield from frames
            return
        back = max(Fraction(1), 2 * back)
    if seeked:
        _seek(container, stream, t0)
    yield from decode(container, stream, path)


def _seek(container: av.container.InputContainer, stream: av.stream.Stream, pts_seconds: Fraction) -> None:
    # A failed seek leaves the position alone; the caller's checks of the frames
    # it then decodes (time, keyframe) cover that case as well.
    try:
        container.seek(int(pts_seconds / stream.time_base), stream=stream, backward=True)
    except av.FFmpegError:
        pass


def decode(container: av.container.InputContainer, stream: av.stream.Stream, path: str | os.PathLike) -> Iterator:
    """Decoded frames of ``stream``, tolerating damage the way ffmpeg does.

    A packet the decoder rejects is skipped; a read error ends the stream. Both
    are reported with a warning. Callers decide whether what remains is enough.
    """
    path = os.fspath(path)
    packets = container.demux(stream)
    damaged = 0
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.FFmpegError as err:
            warnings.warn(f"{path}: read error ({err.strerror}); using what was decoded before it", stacklevel=3)
            break
        try:
            frames = packet.decode()
        except av.FFmpegError:
            damaged += 1
            continue
        yield from frames
    if damaged:
        warnings.warn(f"{path}: skipped {damaged} damaged {stream.type} packet(s)", stacklevel=3)


def frame_time(frame, stream: av.stream.Stream, origin_s: Fraction) -> Fraction | None:
    """A decoded frame's presentation time on the file's timeline (None when unknown)."""
    if frame.pts is None:
        return None
    return frame.pts * stream.time_base - origin_s


def video_end(path: str | os.PathLike) -> Fraction:
    """End of the first video stream on the file's timeline (the last frame's time plus its
    duration), from its packets: demuxed, not decoded, so cheap even for long videos."""
    path = os.fspath(path)
    with open_input(path) as container:
        stream = first_stream(container, "video", path)
        t0, end = origin(container), None
        step = 1 / Fraction(stream.average_rate or C.FPS)
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError:  # a damaged file: its readable part counts (decode() warns)
                break
            if packet.pts is not None:
                t = packet.pts * stream.time_base + (packet.duration * stream.time_base if packet.duration else step)
                end = t if end is None else max(end, t)
    if end is None:
        raise InputError(f"{path}: the video stream has no packets")
    return end - t0
