"""Audio I/O: read any audio or video file's sound as 16 kHz mono, write WAV files,
and mux generated audio into a copy of the input video (docs/design.md §1 stage 12).

Times are on the file's timeline (``media.py``), shared with ``video.load_video``,
so audio read from a video lines up with its frames.
"""
from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np
import soundfile as sf

from rewas_rt import constants as C
from rewas_rt import media
from rewas_rt.atomic import atomic_path
from rewas_rt.errors import InputError, OutputError

# Containers that take AAC audio beside the video they copy.
MUX_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
# Decoding starts this long before the requested start: after a seek, AAC/MP3/Opus
# decoders need the previous frames (overlap, bit reservoir, pre-roll) and the
# resampler needs its filter's history before their output is right.
_SEEK_PREROLL = Fraction(1, 5)
_TRY_MKV = {fmt: "" if fmt == "matroska" else "; use .mkv, which takes most codecs" for fmt in MUX_FORMATS.values()}


def load_audio(
    path: str | os.PathLike, start: float = 0.0, duration: float | None = None, sr: int = C.SAMPLE_RATE
) -> np.ndarray:
    """The first audio stream from ``start`` as float32 mono at ``sr`` Hz.

    Mono is the mean of the channels. With ``duration`` the result has exactly
    ``round(duration·sr)`` samples (zeros past the end of the stream). Sample i is
    the sound at ``start + i/sr`` to within half a sample.
    """
    path = os.fspath(path)
    media.check_start(start)
    if duration is not None and not duration > 0:
        raise ValueError(f"duration must be > 0 s, got {duration}")
    with media.open_input(path) as container:
        stream = media.first_stream(container, "audio", path)
        t0 = media.origin(container)
        # Keep the channels (planar float) and average them ourselves: swresample's
        # stereo→mono matrix sums at −3 dB each and can exceed ±1.
        resampler = av.AudioResampler(format="fltp", rate=sr)
        chunks, first = [], None
        preroll_start = max(Fraction(0), Fraction(start) - _SEEK_PREROLL)
        for frame in media.decode_from(container, stream, preroll_start, path):
            t = media.frame_time(frame, stream, t0)
            if first is None:
                first = t if t is not None else Fraction(0)
            elif duration is not None and t is not None and t >= start + duration:
                break
            chunks += [f.to_ndarray() for f in resampler.resample(frame)]
        chunks += [f.to_ndarray() for f in resampler.resample(None)]  # flush the filter's delay
    if first is None:
        where = f" from {start:g} s on (is start past the end?)" if start > 0 else " (empty or damaged audio stream)"
        raise InputError(f"{path}: no decodable audio{where}")
    wave = np.concatenate(chunks, axis=1).mean(axis=0, dtype=np.float32) if chunks else np.zeros(0, np.float32)
    skip = round((Fraction(start) - first) * sr)  # decoding began at a packet boundary before start
    wave = wave[skip:] if skip >= 0 else np.concatenate([np.zeros(-skip, np.float32), wave])
    if wave.size == 0:
        raise InputError(f"{path}: start {start:g} s is at or past the end of the audio")
    if duration is not None:
        n = round(duration * sr)
        wave = np.pad(wave[:n], (0, max(0, n - wave.size)))
    return np.ascontiguousarray(wave, dtype=np.float32)


def write_wav(path: str | os.PathLike, wave: np.ndarray, sr: int = C.SAMPLE_RATE) -> None:
    """Write a mono 16-bit PCM WAV atomically.

    16-bit PCM plays everywhere and is what the original writes: samples ×32768,
    truncated to int16 — here clipped first, where the original wraps around.
    """
    wave = _mono(wave)
    pcm = np.clip(wave * 32768.0, -32768, 32767).astype(np.int16)
    with atomic_path(path) as tmp:
        try:
            sf.write(tmp, pcm, sr, format="WAV", subtype="PCM_16")
        except (sf.LibsndfileError, OSError) as err:
            raise OutputError(f"cannot write {os.fspath(path)}: {err}") from None


def mux(
    video_path: str | os.PathLike, wave: np.ndarray, sr: int, out_path: str | os.PathLike, start: float = 0.0
) -> None:
    """Write ``video_path``'s video with ``wave`` as its only audio track (AAC), atomically.

    The video stream is copied packet for packet (not re-encoded); other streams
    (the original audio, subtitles, data) are dropped. ``wave`` starts at ``start``
    seconds (silence before it) and is cut at the end of the video.
    """
    video_path, out_path = os.fspath(video_path), os.fspath(out_path)
    ext = os.path.splitext(out_path)[1].lower()
    fmt = MUX_FORMATS.get(ext)
    if fmt is None:
        allowed = ", ".join(MUX_FORMATS)
        raise OutputError(f"{out_path}: the muxed video must end in {allowed} (containers that take AAC)")
    media.check_start(start)
    wave = _mono(wave)
    video_end = media.video_end(video_path)
    if start >= video_end:
        ends = f"{float(video_end):.2f}"
        raise InputError(f"{video_path}: start {start:g} s leaves no video (the video ends at {ends} s)")
    track = np.concatenate([np.zeros(round(start * sr), np.float32), wave])[: round(video_end * sr)]
    with media.open_input(video_path) as src, atomic_path(out_path) as tmp:
        vin = media.first_stream(src, "video", video_path)
        codec = vin.codec_context.name
        try:
            with av.open(tmp, "w", format=fmt) as dst:
                try:
                    vout = dst.add_stream_from_template(vin)
                except ValueError:  # PyAV's check of the container's codec list
                    raise OutputError(f"{out_path}: {codec} video cannot go in a {ext} file{_TRY_MKV[fmt]}") from None
                audio = _encode_aac(dst, track, sr, round(media.origin(src) * sr))
                done = 0
                for packet in src.demux(vin):
                    if packet.size == 0:  # the demuxer's end-of-stream marker
                        continue
                    ts = packet.dts if packet.dts is not None else packet.pts  # Matroska may omit dts
                    while ts is not None and done < len(audio) and (
                        audio[done].pts * audio[done].time_base <= ts * packet.time_base
                    ):
                        dst.mux(audio[done])  # interleave by time
                        done += 1
                    packet.stream = vout
                    dst.mux(packet)
                dst.mux(audio[done:])
        except av.FFmpegError as err:
            raise OutputError(f"cannot write {out_path} ({codec} video + AAC): {err.strerror}{_TRY_MKV[fmt]}") from None


def _mono(wave: np.ndarray) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected a mono waveform (samples,), got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise ValueError("waveform contains NaN or infinity")
    return wave


def _encode_aac(dst, track: np.ndarray, sr: int, first_pts: int) -> list:
    """Encode the track as AAC for ``dst``; returns its packets in time order."""
    stream = dst.add_stream("aac", rate=sr, layout="mono")
    frame = av.AudioFrame.from_ndarray(track[None], format="fltp", layout="mono")
    frame.sample_rate, frame.pts = sr, first_pts
    return list(stream.encode(frame)) + list(stream.encode(None))
