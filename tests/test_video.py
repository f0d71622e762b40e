"""Video input (docs/design.md §1 stages 1–2) on small videos generated here with PyAV."""
from __future__ import annotations

import warnings
from fractions import Fraction

import av
import numpy as np
import pytest

from rewas_rt import constants as C
from rewas_rt.errors import InputError
from rewas_rt.video import load_video, normalize, segments
from tests import media_files as M
from tests import reference


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("video")
    vfr = list(np.cumsum([0.0] + [0.02, 0.05, 0.033, 0.07] * 30))  # 5.19 s, 14–50 fps
    return {
        "30fps": M.write_video(d / "30fps.mp4", fps=30, seconds=6, gop=10),
        "12.5fps": M.write_video(d / "12.5fps.mkv", fps=Fraction(25, 2), seconds=4, codec="mpeg4", size=(300, 500)),
        "vfr": M.write_video(d / "vfr.mkv", times=vfr, size=(256, 144)),
        "short": M.write_video(d / "short.mp4", fps=30, seconds=3),
        "mkv": M.write_video(d / "6s.mkv", fps=30, seconds=6),
        "ts": M.write_video(d / "6s.ts", fps=25, seconds=6, codec="mpeg4"),
        "dir": d,
    }


def load_quietly(path, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clip = load_video(path, **kw)
    return clip, [str(w.message) for w in caught]


def indices(clip) -> list[int]:
    return [M.frame_index(f) for f in clip.frames]


def expected(path, start=0.0, n=C.FRAMES) -> list[int]:
    times = M.decoded_times(path)
    return [M.ffmpeg_fps_pick(times, k, Fraction(start)) for k in range(n)]


def cross_position(frame: np.ndarray) -> tuple[int, int]:
    """(row, column) of the white cross in a cropped frame."""
    grey = frame.astype(np.float32).mean(axis=2)
    return int(grey.mean(axis=1).argmax()), int(grey.mean(axis=0).argmax())


def test_30fps_is_resampled_like_ffmpegs_fps_filter(files):
    clip, warned = load_quietly(files["30fps"])
    assert clip.frames.shape == (C.FRAMES, C.CROP, C.CROP, 3) and clip.frames.dtype == np.uint8
    assert (clip.real_frames, clip.source_fps, clip.source_size) == (C.FRAMES, 30.0, (320, 240))
    assert clip.source_duration == pytest.approx(6.0) and not warned
    got = indices(clip)
    # Source times are rounded to the nearest 1/25 s: output 3 (0.12 s) shows source
    # frame 4 (0.133 s → tick 3), not floor(3·30/25) = 3.
    assert got[:8] == [0, 1, 2, 4, 5, 6, 7, 8]
    assert got == expected(files["30fps"])


def test_12_5fps_portrait_mpeg4_mkv_and_short_clip_padding(files):
    clip, warned = load_quietly(files["12.5fps"])
    got = indices(clip)
    assert got[:100] == [k // 2 for k in range(100)]  # every source frame shown twice
    # 4 s of video: 100 real frames, then the last one repeated, with a warning.
    assert clip.real_frames == 100 and clip.real_seconds == 4.0
    assert all((f == clip.frames[99]).all() for f in clip.frames[100:])
    assert len(warned) == 1 and "only 4.00 s" in warned[0]
    assert clip.source_size == (300, 500) and clip.source_fps == 12.5


def test_variable_frame_rate(files):
    clip, _ = load_quietly(files["vfr"])
    assert clip.real_frames == C.FRAMES
    assert indices(clip) == expected(files["vfr"])


def test_short_clip_counts_the_frames_ffmpeg_would_emit(files):
    clip, warned = load_quietly(files["short"])  # 3 s at 30 fps: ends at 3.0 s
    assert clip.real_frames == 75  # outputs k with (k + ½)/25 ≤ 3.0
    assert indices(clip) == expected(files["short"])[:75] + [89] * 50
    assert warned


@pytest.mark.parametrize("name", ["30fps", "12.5fps"])
def test_resize_short_side_256_and_centre_crop(name, files):
    clip, _ = load_quietly(files[name])
    row, col = cross_position(clip.frames[0])
    # The source's centre lands at 111.5–112 in the 224 crop (see the resize maths).
    assert abs(row - 111.75) <= 1.5 and abs(col - 111.75) <= 1.5


@pytest.mark.parametrize("name", ["30fps", "vfr", "short"])
def test_frame_timing_matches_ffmpegs_own_fps_filter(name, files):
    """Which source frame each output frame shows, against libavfilter's fps=25 itself."""
    clip, _ = load_quietly(files[name])
    theirs = [M.frame_index(M.centre_crop(f)) for f in M.ffmpeg_filtered(files[name])]
    assert indices(clip)[: clip.real_frames] == theirs[: clip.real_frames]
    assert clip.real_frames == min(len(theirs), C.FRAMES)  # ffmpeg emits exactly the frames counted as real


def test_pixels_match_ffmpegs_own_scale_filter(tmp_path):
    """Bicubic short-side-256 + centre crop, pixel for pixel against ffmpeg's scale filter on
    lossless noise (4:4:4, so no chroma resampling is involved); nearest or bilinear would fail."""
    path = M.noise_video(tmp_path / "noise.mp4")
    clip, _ = load_quietly(path, duration=2.0)
    ref = np.stack([M.centre_crop(f) for f in M.ffmpeg_filtered(path)])[: len(clip.frames)]
    np.testing.assert_array_equal(clip.frames, ref)
    for flags in ("neighbor", "bilinear"):  # the check can tell interpolations apart
        other = np.stack([M.centre_crop(f) for f in M.ffmpeg_filtered(path, flags)])[: len(clip.frames)]
        assert np.abs(other.astype(int) - ref.astype(int)).mean() > 5, flags


@pytest.mark.parametrize("start, real", [(0.5, C.FRAMES), (2.2, 95)])
def test_start_selects_the_window(files, start, real):
    clip, warned = load_quietly(files["30fps"], start=start)  # keyframe every 10 frames: a real seek
    assert clip.start == start and clip.real_frames == real
    assert indices(clip)[:real] == expected(files["30fps"], start)[:real]
    assert bool(warned) == (real < C.FRAMES)


@pytest.mark.parametrize("start", [1.0, 2.5])
def test_start_in_mpeg_ts_whose_seeks_land_between_keyframes(files, start):
    clip, _ = load_quietly(files["ts"], start=start)
    assert clip.real_frames == min(C.FRAMES, round((6 - start) * C.FPS))
    assert indices(clip)[: clip.real_frames] == expected(files["ts"], start)[: clip.real_frames]


def test_duration_gives_other_window_lengths(files):
    clip, _ = load_quietly(files["30fps"], start=1.0, duration=2.0)
    assert clip.frames.shape[0] == 50 == clip.real_frames
    assert indices(clip) == expected(files["30fps"], 1.0, 50)


def bad_inputs(d):
    """name -> (path, start, words the one-line message must contain)."""
    (d / "text.mp4").write_text("hello, I am not a video\n")
    data = (d / "30fps.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) * 3 // 10])  # the index (moov) is at the end
    with av.open(str(d / "audio.m4a"), "w") as container:
        M.write_audio(container, M.add_audio_stream(container, 16000, 1), M.sine(440, 1.0, 16000))
    with av.open(str(d / "undecodable.mkv"), "w") as container:  # a video stream of garbage packets
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        rng = np.random.default_rng(0)
        for i in range(10):
            packet = av.Packet(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, 25)
            container.mux(packet)
    return {
        "missing": (d / "missing.mp4", 0.0, "no such file"),
        "directory": (d, 0.0, "directory"),
        "text renamed .mp4": (d / "text.mp4", 0.0, "not a media file"),
        "truncated mp4": (d / "truncated.mp4", 0.0, "damaged"),
        "audio only": (d / "audio.m4a", 0.0, "no video stream"),
        "undecodable stream": (d / "undecodable.mkv", 0.0, "no decodable video frames"),
        "start past the end": (d / "30fps.mp4", 7.0, "ends at 6.00 s"),
        "start at the end": (d / "30fps.mp4", 6.0, "leaves no video"),
        "negative start": (d / "30fps.mp4", -1.0, "≥ 0"),
        "nan start": (d / "30fps.mp4", float("nan"), "≥ 0"),
    }


def test_bad_input_gives_one_line_input_error(files):
    for name, (path, start, words) in bad_inputs(files["dir"]).items():
        with pytest.raises(InputError) as err, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_video(path, start=start)
        message = str(err.value)
        assert words in message and "\n" not in message, (name, message)


def test_truncated_mkv_keeps_the_frames_before_the_cut(files, tmp_path):
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(files["mkv"].read_bytes()[: files["mkv"].stat().st_size // 2])
    clip, warned = load_quietly(cut)
    assert 0 < clip.real_frames < C.FRAMES and warned
    assert indices(clip)[: clip.real_frames] == expected(files["mkv"])[: clip.real_frames]


def test_normalize_matches_the_float16_reference_lut():
    lut = reference.load_io("synchformer_video")["uint8_to_normalized_lut"]
    got = normalize(np.arange(256, dtype=np.uint8))
    assert got.dtype == np.float32 and np.array_equal(got, lut)
    with pytest.raises(TypeError):
        normalize(np.zeros(3, np.float32))


def test_segments_take_frames_2_plus_8i_to_17_plus_8i():
    frames = np.broadcast_to(np.arange(C.FRAMES, dtype=np.int32)[:, None, None, None], (C.FRAMES, 4, 5, 3))
    out = segments(frames)
    assert out.shape == (1, C.SEGMENTS, 3, C.SEGMENT_LEN, 4, 5) and out.flags.c_contiguous
    for i in range(C.SEGMENTS):
        assert (out[0, i, :, :, 0, 0] == np.arange(2 + 8 * i, 18 + 8 * i)).all()
    with pytest.raises(ValueError):
        segments(frames[:100])


def test_segments_layout_matches_the_reference_permute():
    io = reference.load_io("synchformer_video")
    video = io["video_uint8_BSTCHW"]  # (B,S,T,C,H,W) as the test transforms give it
    # The reference's segments are independent random data; place segment 0 where it belongs.
    frames = np.zeros((C.FRAMES, C.CROP, C.CROP, 3), np.uint8)
    frames[2:18] = video[0, 0].transpose(0, 2, 3, 1)
    got = segments(normalize(frames))[0, 0]
    # The pipeline permutes (0,1,3,2,4,5) to the encoder's (B,S,C,T,H,W).
    want = io["uint8_to_normalized_lut"][video].transpose(0, 1, 3, 2, 4, 5)[0, 0]
    assert np.array_equal(got, want)
    normalized = normalize(video)
    checksum = [normalized.sum(dtype=np.float64), np.abs(normalized).sum(dtype=np.float64)]
    np.testing.assert_allclose(checksum, io["normalized_input_checksum"], rtol=1e-5)
