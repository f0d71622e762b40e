"""Whole videos (issue #12): windowed generation end to end on the tiny engines, with small
fast videos (64×48; the runtime resizes to 224) and 1–2 DDIM steps."""
from __future__ import annotations

import warnings

import av
import numpy as np
import pytest
import soundfile as sf

from benchmarks.seams import seam_report
from rewas_rt import constants as C
from rewas_rt.cli import main
from rewas_rt.errors import InputError
from rewas_rt.pipeline import GenerationOptions, Pipeline, Request, VideoRequest, plan_clip
from rewas_rt.video import frames_available, iter_windows, load_video
from rewas_rt.windows import WindowOptions
from tests.media_files import frame_index, write_video

SMALL = {"size": (64, 48), "fps": 30}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("long")
    vfr_gaps = [0.02, 0.05, 0.033, 0.07, 0.041]
    vfr = list(np.round(np.cumsum([0.0] + vfr_gaps * 56), 3))  # 11.5 s at 14–50 fps
    return {
        "12s": write_video(d / "12s.mp4", seconds=12.0, gop=30, **SMALL),
        "30s": write_video(d / "30s.mp4", seconds=30.0, **SMALL),
        "61.7s": write_video(d / "61.7s.mp4", seconds=61.7, **SMALL),
        "3s": write_video(d / "3s.mp4", seconds=3.0, **SMALL),
        "vfr": write_video(d / "vfr.mkv", times=vfr, size=(64, 48)),
        "vfr_times": vfr,
    }


@pytest.fixture(scope="module")
def pipe(tiny_engines):
    return Pipeline(tiny_engines[0], backend="onnxruntime-cpu")


def run(capsys, *argv):
    try:
        code = main(list(map(str, argv)))
    except SystemExit as e:  # argparse refusing an option value: exit 2
        code = e.code
    out = capsys.readouterr()
    return code, out.err


def video_seconds(path) -> float:
    """The video's length from PyAV: the last frame's time plus its duration."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        ends = [(p.pts + (p.duration or 0)) * s.time_base for p in c.demux(s) if p.pts is not None]
        return float(max(ends) - (c.start_time or 0) / av.time_base)


def test_windows_stream_the_frames_load_video_gives(videos):
    path = videos["12s"]
    n = frames_available(path)
    assert n == 300
    starts = plan_clip(VideoRequest("", 0, path)).starts
    for s, (frames, real) in zip(starts, iter_windows(path, starts)):
        alone = load_video(path, start=s / C.FPS)
        assert real == alone.real_frames == C.FRAMES
        np.testing.assert_array_equal(frames, alone.frames)


@pytest.mark.parametrize("name", ["12s", "30s", "61.7s"])
def test_wav_is_as_long_as_the_video_and_joins_are_continuous(name, videos, tiny_engines, tmp_path, capsys):
    path, wav = videos[name], tmp_path / "o.wav"
    args = ["infer", path, "rain", "--engines", tiny_engines[0], "-o", wav, "--seed", "3", "-q"]
    if name == "12s":  # the whole path: energy from the video over overlapping windows, muxed
        args += ["--steps", "2", "--mux", tmp_path / "o.mp4", "--write-energy", tmp_path / "e.csv"]
    else:  # longer ones skip the video encoders to keep the suite fast (the 12 s case covers them)
        np.save(tmp_path / "c.npy", np.linspace(-8, -4, 50, dtype=np.float32))
        args += ["--steps", "1", "--energy-curve", tmp_path / "c.npy"]
    code, err = run(capsys, *args)
    assert code == 0, err
    wave, sr = sf.read(str(wav), dtype="float32")
    assert sr == C.SAMPLE_RATE
    assert abs(len(wave) / sr - video_seconds(path)) <= 1 / C.FPS, (len(wave) / sr, video_seconds(path))
    plan = plan_clip(VideoRequest("", 0, path))
    assert len(wave) == plan.samples and len(plan) > 1
    # The tiny random-weight model makes near-stationary noise, so this only catches gross seams
    # (gaps, level jumps); tests/test_windows.py checks the joins with a model of known output.
    report = seam_report(wave, plan)
    assert report["loudness_db"]["p95_ratio"] < 1.5 and report["flux"]["p95_ratio"] < 1.5, report
    if name == "12s":
        rows = (tmp_path / "e.csv").read_text().splitlines()
        assert len(rows) == 1 + 4 * plan.frames
        curve = np.loadtxt(tmp_path / "e.csv", delimiter=",", skiprows=1)[:, 1]
        steps = np.abs(np.diff(curve))
        edges = [4 * s for s in plan.starts[1:]] + [4 * (s + 128) - 1 for s in plan.starts[:-1]]
        assert steps[edges].max() <= steps.max()  # no step at a window edge beyond the curve's own
        with av.open(str(tmp_path / "o.mp4")) as c:
            audio = c.streams.audio[0]
            decoded = sum(f.samples for f in c.decode(audio))
            assert abs(decoded / audio.rate - video_seconds(path)) < 0.1  # AAC pads by < 1 frame of 1024


def test_progress_counts_windows_times_steps(pipe, videos):
    seen = []
    opts = GenerationOptions(steps=2, candidates=2)
    res = pipe.generate_video(VideoRequest("rain", 0, videos["12s"], energy=np.full(10, -5.0)), opts,
                              progress=lambda d, t, label: seen.append((d, t, label)))
    n = len(plan_clip(VideoRequest("", 0, videos["12s"])))
    assert [d for d, _, _ in seen] == list(range(1, 2 * n + 1)) and {t for _, t, _ in seen} == {2 * n}
    assert seen[-1][2] == f"window {n}/{n}"
    assert res.waveforms.shape == (2, 12 * C.SAMPLE_RATE)
    assert np.abs(res.waveforms[0] - res.waveforms[1]).max() > 1e-3


def test_short_video_is_one_window_generated_as_before(pipe, videos):
    """Shorter than a window: exactly the single-window pipeline, cut to the video (with its warning)."""
    opts = GenerationOptions(steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = pipe.generate_video(VideoRequest("rain", 4, videos["3s"]), opts)
    assert any("repeated" in str(w.message) for w in caught)
    clip = load_video(videos["3s"])
    (before,) = pipe.generate([Request("rain", 4, frames=clip.frames)], opts)
    assert res.waveforms.shape == (1, 3 * C.SAMPLE_RATE) == (1, clip.real_frames * 640)
    np.testing.assert_array_equal(res.waveforms, before.waveforms[:, :3 * C.SAMPLE_RATE])
    np.testing.assert_array_equal(res.energy, before.energy)


def test_start_and_duration_pick_a_window(pipe, videos, tmp_path, tiny_engines, capsys):
    assert plan_clip(VideoRequest("", 0, videos["30s"], start=4.0, duration=5.12)).starts == (0,)
    plan = plan_clip(VideoRequest("", 0, videos["30s"], start=20.0))
    assert plan.frames == 250  # to the end
    code, err = run(capsys, "infer", videos["30s"], "rain", "--engines", tiny_engines[0], "-o", tmp_path / "w.wav",
                    "--start", "10", "--duration", "5", "--steps", "1", "-q")
    assert code == 0, err
    assert sf.info(str(tmp_path / "w.wav")).frames == 5 * C.SAMPLE_RATE


@pytest.mark.parametrize("argv, fragment, status", [
    (["--max-duration", "20"], "over the 20 s limit", 1),
    (["--duration", "0"], "duration must be a finite number in [0.04, 86400] or full", 2),  # the options table
    (["--duration", "nan"], "duration must be", 2),
    (["--start", "40"], "leaves no video", 1),
    (["--max-duration", "-3"], "max-duration", 1),
])
def test_clip_errors_are_one_line_and_write_nothing(argv, fragment, status, videos, tiny_engines, tmp_path, capsys):
    out = tmp_path / "o.wav"
    code, err = run(capsys, "infer", videos["30s"], "rain", "--engines", tiny_engines[0], "-o", out, *argv)
    lines = err.strip().splitlines()
    assert code == status and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert not out.exists()


def test_over_the_limit_fails_before_any_work(videos):
    with pytest.raises(InputError, match="61.72 s of video from 0 s is over the 60 s limit"):
        plan_clip(VideoRequest("", 0, videos["61.7s"]), WindowOptions(max_duration=60))
    # a part of it is fine
    assert plan_clip(VideoRequest("", 0, videos["61.7s"], start=30), WindowOptions(max_duration=60)).frames == 793


def test_variable_frame_rate_video(videos, tiny_engines, tmp_path, capsys):
    """Resampled to 25 fps by the ffmpeg fps rule (video.py), the sound covers the video to its
    last frame's end, and every window's frames are the ones load_video gives there."""
    path, times = videos["vfr"], videos["vfr_times"]
    starts = plan_clip(VideoRequest("", 0, path)).starts
    for s, (frames, _) in zip(starts, iter_windows(path, starts)):
        np.testing.assert_array_equal(frames, load_video(path, start=s / C.FPS).frames)
        # frame k of the window shows the last source frame whose time is < (s + k + ½)/25
        k = 60
        want = max(j for j, t in enumerate(times) if t < (s + k + 0.5) / C.FPS)
        assert frame_index(frames[k]) == want % 256
    code, err = run(capsys, "infer", path, "rain", "--engines", tiny_engines[0], "-o", tmp_path / "v.wav",
                    "--steps", "1", "-q")
    assert code == 0, err
    seconds = sf.info(str(tmp_path / "v.wav")).frames / C.SAMPLE_RATE
    assert abs(seconds - video_seconds(path)) <= 1 / C.FPS


def test_batching_windows_changes_nothing(pipe, videos):
    """window_batch > 1 (the GPU setting) batches Synchformer/φ, the hint encoder and the decoder
    across windows; the sound and the curve are those of one window at a time."""
    request, opts = VideoRequest("rain", 2, videos["12s"]), GenerationOptions(steps=1)
    assert pipe.window_batch == 1  # the CPU default
    a = pipe.generate_video(request, opts)
    try:
        pipe.window_batch = 2  # 3 windows: a batch of 2 and a last one of 1
        b = pipe.generate_video(request, opts)
    finally:
        pipe.window_batch = 1
    np.testing.assert_allclose(b.energy, a.energy, rtol=1e-5, atol=1e-5)
    assert np.abs(b.waveforms - a.waveforms).max() <= 1e-3 * np.abs(a.waveforms).max()
