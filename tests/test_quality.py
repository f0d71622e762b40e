"""benchmarks/quality.py on synthetic signals with known answers."""
import importlib.util
import json
import math

import av
import numpy as np
import pytest
import soundfile as sf
from scipy.ndimage import gaussian_filter

from benchmarks import quality as Q
from rewas_rt import constants as C
from rewas_rt.energy import energy_target

needs_cv2 = pytest.mark.skipif(importlib.util.find_spec("cv2") is None,
                               reason="AV-Align needs opencv-python-headless (pip install 'rewas-rt[bench]')")

FPS = 25
EVENTS = [10, 30, 55, 80, 110]  # frames where the picture moves (and the audio clicks)


def noise(seed: int = 1, n: int = C.WAVE_SAMPLES) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def moving_frames(events=EVENTS, n: int = 130, seed: int = 0) -> list[np.ndarray]:
    """A smooth random texture that jumps 3 px right at each event frame and stands still otherwise."""
    rng = np.random.default_rng(seed)
    tex = gaussian_filter(rng.random((96, 128)), 2)
    tex = (255 * (tex - tex.min()) / (tex.max() - tex.min())).astype(np.uint8)
    frames, offset = [], 0
    for i in range(n):
        offset += 3 * (i in events)
        frames.append(np.roll(tex, offset, axis=1))
    return frames


def clicks(times, n: int = C.WAVE_SAMPLES, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    wave = np.zeros(n, np.float32)
    for t in times:
        s = round(t * C.SAMPLE_RATE)
        wave[s:s + 32] = np.hanning(32) * rng.choice([-1.0, 1.0], 32)
    return wave


# ---------------------------------------------------------------- energy MAE


def test_identical_audio_has_zero_mae():
    w = noise()
    assert Q.energy_mae(w, w) == 0.0
    assert Q.energy_mae([w, noise(2)], [w, noise(2)]) == 0.0


def test_mae_is_gain_invariant_like_the_paper():
    w = noise()
    assert Q.energy_mae(3.0 * w, w) < 1e-6  # the dataset normalisation removes gain


def test_known_offset_gives_known_mae():
    a = Q.energy_curve(noise())
    assert Q.curve_mae(a + 0.7, a) == pytest.approx(0.7, abs=1e-6)
    # Audio: the second half 10× quieter (the peak stays in the first half, so normalisation
    # changes nothing) lowers every frame that lies wholly in it by exactly ln 10. Frames 259…511
    # lie wholly in it (window start 160f − 432 ≥ 40960), frames < 253 wholly before it.
    ref = noise()
    ref[100] = 1.0
    gen = ref.copy()
    gen[C.WAVE_SAMPLES // 2:] *= 0.1
    mae = Q.energy_mae(gen, ref)
    assert 253 / 512 * math.log(10) - 1e-4 <= mae <= 259 / 512 * math.log(10) + 1e-4


def test_energy_curve_is_the_unsmoothed_log_mel_mean_over_the_window():
    w = noise()
    curve = Q.energy_curve(np.concatenate([w, noise(3)]))  # longer input: cut to the 5.12 s window
    np.testing.assert_array_equal(curve, Q.energy_curve(w))
    assert curve.shape == (C.MEL_FRAMES,)
    short = Q.energy_curve(w[:40000])  # shorter: zero-padded
    assert short.shape == (C.MEL_FRAMES,)


# ---------------------------------------------------------------- correlation


def test_correlation_of_a_curve_with_itself_and_its_negative():
    c = np.sin(np.linspace(0, 7, C.MEL_FRAMES)) + 0.1 * noise(n=C.MEL_FRAMES)
    assert Q.pearson(c, c) == pytest.approx(1.0, abs=1e-12)
    assert Q.pearson(c, -c) == pytest.approx(-1.0, abs=1e-12)
    assert Q.pearson(c, 2 * c + 5) == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(Q.pearson(c, np.ones_like(c)))


def test_control_curve_followed_exactly_scores_one():
    w = noise() * np.linspace(0.05, 1, C.WAVE_SAMPLES).astype(np.float32)  # rising loudness
    got = Q.energy_correlation(energy_target(w), w)
    assert got["energy_correlation"] == pytest.approx(1.0, abs=1e-6)
    assert got["control_mae"] == pytest.approx(0.0, abs=1e-6)
    anti = Q.energy_correlation(-energy_target(w), w)
    assert anti["energy_correlation"] == pytest.approx(-1.0, abs=1e-6)


# ---------------------------------------------------------------- AV-Align


def test_iou_definition():
    # one audio peak matched (0.4 vs 0.41, within 1/25 s), one not; union = 2 + 2 - 1
    assert Q.peaks_iou([0.4, 1.2], [0.41, 2.0], FPS) == pytest.approx(1 / 3)
    assert Q.peaks_iou([0.4], [0.44], FPS) == 0.0  # the window is open: exactly 1/fps away does not count
    assert Q.peaks_iou([], [0.5], FPS) == 0.0
    assert math.isnan(Q.peaks_iou([], [], FPS))


@needs_cv2
def test_video_peaks_at_the_motion_frames():
    traj, peaks = Q.video_peaks(moving_frames(), FPS)
    assert len(traj) == 130
    np.testing.assert_allclose(peaks, np.array(EVENTS) / FPS)


def test_audio_peaks_at_the_clicks():
    times = np.array(EVENTS) / FPS
    got = Q.audio_peaks(clicks(times))
    assert len(got) == len(times)
    # Onsets are reported where the click enters the 64 ms STFT window: a little early, never late.
    assert np.all(got <= times + 0.005) and np.all(got > times - 0.035)
    assert len(Q.audio_peaks(np.zeros(C.WAVE_SAMPLES, np.float32))) == 0  # silence: no onset


@needs_cv2
def test_aligned_video_and_audio_score_one_and_shifts_score_lower():
    frames = moving_frames()
    aligned = Q.av_align(frames, FPS, clicks(np.array(EVENTS) / FPS))
    assert aligned["av_align"] == 1.0
    for shift in (2, -2, 3):  # more than one frame off
        shifted = Q.av_align(frames, FPS, clicks((np.array(EVENTS) + shift) / FPS))
        assert shifted["av_align"] < 1.0
    half = Q.av_align(frames, FPS, clicks(np.array(EVENTS[:2] + [e + 3 for e in EVENTS[2:]]) / FPS))
    assert half["av_align"] == pytest.approx(2 / (5 + 5 - 2))


# ---------------------------------------------------------------- files and CLI


def write_video(path, frames, fps=FPS):
    """Lossless H.264 (qp 0, 4:4:4): still frames stay identical, as the metric needs."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"qp": "0", "preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv444p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.repeat(f[..., None], 3, 2), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@needs_cv2
def test_cli_on_files(tmp_path, capsys):
    times = np.array(EVENTS) / FPS
    gen = clicks(times) + 0.001 * noise(5)
    ref = clicks(times, seed=3) + 0.001 * noise(6)
    sf.write(tmp_path / "gen.wav", gen, C.SAMPLE_RATE, subtype="FLOAT")
    sf.write(tmp_path / "ref.wav", ref, C.SAMPLE_RATE, subtype="FLOAT")
    write_video(tmp_path / "clip.mp4", moving_frames())
    np.save(tmp_path / "curve.npy", energy_target(gen))
    out = tmp_path / "q.json"
    rc = Q.main(["--generated", str(tmp_path / "gen.wav"), "--reference", str(tmp_path / "ref.wav"),
                 "--video", str(tmp_path / "clip.mp4"), "--curve", str(tmp_path / "curve.npy"), "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["av_align"] == 1.0
    assert res["fps"] == FPS
    assert res["energy_correlation"] == pytest.approx(1.0, abs=1e-5)
    assert 0 <= res["energy_mae"] < 0.5
    assert "av_align 1.0000" in capsys.readouterr().out


def test_cli_on_folders(tmp_path):
    g, r = tmp_path / "gen", tmp_path / "ref"
    g.mkdir()
    r.mkdir()
    for i, stem in enumerate(["a", "b"]):
        sf.write(g / f"{stem}.wav", noise(i), C.SAMPLE_RATE, subtype="FLOAT")
        sf.write(r / f"{stem}.wav", noise(i), C.SAMPLE_RATE, subtype="FLOAT")
    sf.write(g / "c.wav", noise(9), C.SAMPLE_RATE, subtype="FLOAT")  # no reference: skipped, named
    out = tmp_path / "q.json"
    assert Q.main(["--generated", str(g), "--reference", str(r), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["mean"]["energy_mae"] < 1e-4 and res["mean"]["energy_mae_clips"] == 2
    assert [c.get("skipped", "") for c in res["clips"]][2].startswith("no reference")
