"""`rewas-rt infer` / `info` end to end on the tiny engine directory, and every
bad input: one `error:` line, exit status 1, no traceback, no partial file."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from rewas_rt import constants as C
from rewas_rt.cli import main
from tests.media_files import add_audio_stream, sine, write_audio, write_video

FAST = ["--steps", "2", "--seed", "0"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=6.0)


@pytest.fixture
def engines(tiny_engines):
    return str(tiny_engines[0])


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code, err, *fragments):
    assert code == 1, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], lines[0]


def video_packets(path):
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.video[0]) if p.size]


def test_infer_writes_wav_mux_curve_and_plot(tmp_path, clip, engines, capsys):
    wav, mp4 = tmp_path / "out.wav", tmp_path / "out.mp4"
    csv, png = tmp_path / "energy.csv", tmp_path / "energy.png"
    code, _, err = run(capsys, "infer", clip, "dog barking", "--engines", engines, "-o", wav, "--mux", mp4,
                       "--write-energy", csv, "--plot-energy", png, "-v", *FAST)
    assert code == 0, err
    info = sf.info(str(wav))
    assert info.samplerate == C.SAMPLE_RATE and info.channels == 1
    assert info.frames == 6 * C.SAMPLE_RATE  # the whole 6 s clip (two windows)
    with av.open(str(mp4)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        muxed = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    # The muxed track is the WAV, AAC-coded: as long (up to the last 1024-sample AAC frame) and the same
    # signal (correlation 0.9986 measured here on 2026-12-02 with the tiny model; AAC is lossy, hence > 0.95).
    wave = sf.read(str(wav), dtype="float32")[0]
    assert 0 <= muxed.size - wave.size <= 2 * 1024, (muxed.size, wave.size)
    body = slice(2048, wave.size - 2048)  # away from the encoder's start-up and end frames
    assert np.corrcoef(muxed[body], wave[body])[0, 1] > 0.95
    assert video_packets(mp4) == video_packets(clip)  # every video packet copied, bit for bit
    rows = csv.read_text().splitlines()
    assert rows[0] == "time_s,energy" and len(rows) == 1 + 600  # one per 10 ms of the clip
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "unet_adapter" in err and "total" in err  # -v timings


def test_default_output_name_and_candidates(tmp_path, clip, engines, capsys):
    video = tmp_path / "v.mp4"
    shutil.copy(clip, video)
    code, _, err = run(capsys, "infer", video, "rain", "--engines", engines, "--candidates", "2", "-q", *FAST)
    assert code == 0 and err == ""
    a, b = (sf.read(str(tmp_path / f"v.rewas.{i}.wav"))[0] for i in range(2))
    assert np.abs(a - b).max() > 1e-3


def test_energy_from_curve_file_and_audio(tmp_path, clip, engines, capsys):
    curve = tmp_path / "curve.npy"
    np.save(curve, np.linspace(-9, -3, 112, dtype=np.float32))
    code, _, err = run(capsys, "infer", clip, "rain", "--engines", engines, "-o", tmp_path / "a.wav",
                       "--energy-curve", curve, "--energy-offset", "0.5", "--write-energy", tmp_path / "c.csv", *FAST)
    assert code == 0, err
    used = np.loadtxt(tmp_path / "c.csv", delimiter=",", skiprows=1)[:, 1]
    from rewas_rt.energy_control import curve_from_audio, load_curve

    # The whole curve, shifted, stretched over the whole clip (rewas_rt/windows.py: the clip is longer than a window).
    assert len(used) > C.MEL_FRAMES
    np.testing.assert_allclose(used, load_curve(curve, frames=len(used)) + 0.5, atol=1e-4)
    assert used[0] == pytest.approx(-9 + 0.5, abs=1e-4) and used[-1] == pytest.approx(-3 + 0.5, abs=1e-4)
    ref = tmp_path / "ref.wav"
    sf.write(str(ref), sine(440, 6.0, 16000)[0], 16000)
    code, _, err = run(capsys, "infer", clip, "rain", "--engines", engines, "-o", tmp_path / "b.wav",
                       "--energy-from-audio", ref, "--write-energy", tmp_path / "d.csv", *FAST)
    assert code == 0, err
    used = np.loadtxt(tmp_path / "d.csv", delimiter=",", skiprows=1)[:, 1]
    from rewas_rt.pipeline import VideoRequest, plan_clip
    from rewas_rt.windows import WindowOptions

    plan = plan_clip(VideoRequest(prompt="rain", seed=0, video=Path(clip)), WindowOptions())
    np.testing.assert_allclose(used, curve_from_audio(ref, plan=plan if len(plan) > 1 else None), atol=1e-4)
    # The curve reaches the sound: the two requests differ only in their curves.
    assert np.abs(sf.read(str(tmp_path / "a.wav"))[0] - sf.read(str(tmp_path / "b.wav"))[0]).max() > 1e-3


def test_info_lists_engines_and_backends(engines, capsys):
    code, out, _ = run(capsys, "info", "--engines", engines)
    assert code == 0
    assert "onnxruntime-cpu" in out and "unet_adapter" in out


def test_console_script_runs_without_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "rewas_rt.cli", "infer", tmp_path / "none.mp4", "rain"],
                         capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr


# ---- bad input ---------------------------------------------------------------------------------


def _audio_only(path):
    with av.open(str(path), "w") as c:
        write_audio(c, add_audio_stream(c, 16000, 1), sine(440, 1.0, 16000))
    return path


def _no_frames(path):
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
    return path


def _truncated(path, clip):
    data = clip.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


BAD_VIDEO_MESSAGES = {
    "missing": "nope.mp4: no such file",
    "not_video": "t.mp4: not a media file, or damaged or incomplete",
    "no_video_stream": "a.m4a: has no video stream",
    "zero_frames": "z.mp4:",
    "corrupt": "c.mp4:",
    "start_past_end": "start 30 s leaves no video (the video ends at 6.00 s)",
}


@pytest.mark.parametrize("case", list(BAD_VIDEO_MESSAGES))
def test_bad_video_input(case, tmp_path, clip, engines, capsys):
    video = {
        "missing": lambda: tmp_path / "nope.mp4",
        "not_video": lambda: (tmp_path / "t.mp4").write_text("hello") and tmp_path / "t.mp4",
        "no_video_stream": lambda: _audio_only(tmp_path / "a.m4a"),
        "zero_frames": lambda: _no_frames(tmp_path / "z.mp4"),
        "corrupt": lambda: _truncated(tmp_path / "c.mp4", clip),
        "start_past_end": lambda: clip,
    }[case]()
    extra = ["--start", "30"] if case == "start_past_end" else []
    out = tmp_path / "out.wav"
    code, _, err = run(capsys, "infer", video, "rain", "--engines", engines, "-o", out, *extra, *FAST)
    if case == "corrupt" and code == 0:
        # A truncated file may still hold decodable frames: then it must be handled as a short clip.
        assert "warning:" in err and out.exists()
        return
    assert_one_line_error(code, err, BAD_VIDEO_MESSAGES[case])
    assert not out.exists()


def test_empty_prompt(tmp_path, clip, engines, capsys):
    code, _, err = run(capsys, "infer", clip, "   ", "--engines", engines, "-o", tmp_path / "o.wav", *FAST)
    assert_one_line_error(code, err, "prompt is empty")
    assert not (tmp_path / "o.wav").exists()


def test_huge_prompt_is_truncated_with_a_warning(tmp_path, clip, engines, capsys):
    code, _, err = run(capsys, "infer", clip, "rain " * 2000, "--engines", engines, "-o", tmp_path / "o.wav", *FAST)
    assert code == 0 and "warning: prompt longer than" in err


def test_unknown_backend(tmp_path, clip, engines, capsys):
    code, _, err = run(capsys, "infer", clip, "rain", "--engines", engines, "--backend", "cuda9", *FAST)
    assert_one_line_error(code, err, "unknown backend")


def test_missing_engine_directory(tmp_path, clip, capsys):
    code, _, err = run(capsys, "infer", clip, "rain", "--engines", tmp_path / "none", "-o", tmp_path / "o.wav", *FAST)
    assert_one_line_error(code, err, "build_engines.py")


def test_tampered_engine_directory(tmp_path, clip, engines, capsys):
    copy = tmp_path / "engines"
    shutil.copytree(engines, copy)
    data = bytearray((copy / "phi.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "phi.onnx").write_bytes(bytes(data))
    code, _, err = run(capsys, "infer", clip, "rain", "--engines", copy, "-o", tmp_path / "o.wav", *FAST)
    assert_one_line_error(code, err, "phi.onnx")
    assert not (tmp_path / "o.wav").exists()


def test_engines_built_for_another_gpu(tmp_path, clip, engines, capsys, monkeypatch):
    """A directory whose TensorRT engines were built for another GPU is refused, naming both GPUs.
    The TensorRT backend is made available with a stand-in probe (no GPU here), so the request
    reaches the manifest's engine check instead of stopping at "TensorRT is not installed"."""
    from export.manifest_sections import file_entry
    from rewas_rt.backends import tensorrt as trt_backend
    from rewas_rt.graphs import GRAPHS
    from rewas_rt.manifest import write_manifest

    copy = tmp_path / "engines"
    shutil.copytree(engines, copy)
    m = json.loads((copy / "manifest.json").read_text())
    for g in GRAPHS:
        (copy / f"{g}.plan").write_bytes(b"not really an engine " + g.encode())
        m["graphs"][g]["engine"] = {**vars(file_entry(copy, f"{g}.plan")), "precision": "fp16", "fp32_layers": [],
                                    "tensorrt_version": "10.0.0", "compute_capability": "9.9", "gpu": "Imaginary",
                                    "fingerprint": "0" * 64}
    m["tensorrt"] = {"version": "10.0.0", "compute_capability": "9.9", "gpu": "Imaginary"}
    write_manifest(copy, m)
    here = {"version": "10.9.0", "compute_capability": "8.9", "gpu": "Stand-in"}
    monkeypatch.setattr(trt_backend, "_probe", lambda device_id: (True, "stand-in", here))
    code, _, err = run(capsys, "infer", clip, "rain", "--engines", copy, "--backend", "tensorrt", "-o",
                       tmp_path / "o.wav", *FAST)
    assert_one_line_error(code, err, "engine built with TensorRT 10.0.0 for compute capability 9.9 (Imaginary)",
                          "this machine has TensorRT 10.9.0 and compute capability 8.9", "rebuild with:")
    assert not (tmp_path / "o.wav").exists()


def test_unwritable_output(tmp_path, clip, engines, capsys):
    target = tmp_path / "no_such_dir" / "o.wav"
    code, _, err = run(capsys, "infer", clip, "rain", "--engines", engines, "-o", target, *FAST)
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run(capsys, "infer", clip, "rain", "--engines", engines, "-o", tmp_path / "o.wav",
                       "--mux", tmp_path / "no_such_dir" / "x.mp4", *FAST)
    assert_one_line_error(code, err, "does not exist")
    assert not (tmp_path / "o.wav").exists()


def test_bad_energy_curve_file(tmp_path, clip, engines, capsys):
    bad = tmp_path / "curve.csv"
    bad.write_text("a,b\nx,y\n")
    code, _, err = run(capsys, "infer", clip, "rain", "--engines", engines, "--energy-curve", bad, "-o",
                       tmp_path / "o.wav", *FAST)
    assert_one_line_error(code, err, "curve")


# ---- nothing half-written -----------------------------------------------------------------------


def _leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_unmuxable_stream_with_candidates_leaves_nothing(tmp_path, engines, capsys):
    """--candidates 2 --mux out.mp4 on VP8 video (which .mp4 cannot take): the WAVs were already
    generated when the mux fails; none of the request's files may appear, earlier ones stay."""
    from tests.media_files import write_video

    video = write_video(tmp_path / "vp8.mkv", fps=25, seconds=6, codec="libvpx", size=(64, 48))
    (tmp_path / "out.1.wav").write_bytes(b"an earlier result")
    code, _, err = run(capsys, "infer", video, "rain", "--engines", engines, "-o", tmp_path / "out.wav",
                       "--candidates", "2", "--mux", tmp_path / "out.mp4", "--write-energy", tmp_path / "e.csv",
                       "-q", *FAST)
    assert_one_line_error(code, err, "out.0.mp4", "vp8 video cannot go in a .mp4 file")
    assert ".tmp" not in err  # the message names the file asked for
    assert _leftovers(tmp_path, {"vp8.mkv"}) == ["out.1.wav"]
    assert (tmp_path / "out.1.wav").read_bytes() == b"an earlier result"


WRITERS = [("rewas_rt.audio", "write_wav", 1), ("rewas_rt.audio", "write_wav", 2), ("rewas_rt.audio", "mux", 1),
           ("rewas_rt.audio", "mux", 2), ("rewas_rt.energy_control", "write_curve_csv", 1),
           ("rewas_rt.energy_control", "plot_curve", 1)]


@pytest.mark.parametrize("module,name,nth", WRITERS, ids=[f"{n}#{k}" for _, n, k in WRITERS])
def test_a_failure_at_any_output_step_leaves_nothing(module, name, nth, tmp_path, clip, engines, capsys, monkeypatch):
    import importlib

    from rewas_rt.errors import OutputError

    mod = importlib.import_module(module)
    real, calls = getattr(mod, name), []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == nth:
            raise OutputError(f"disk full while writing step {name} #{nth}")
        return real(*a, **k)

    monkeypatch.setattr(mod, name, failing)
    code, _, err = run(capsys, "infer", clip, "rain", "--engines", engines, "-o", tmp_path / "o.wav",
                       "--candidates", "2", "--mux", tmp_path / "o.mp4", "--write-energy", tmp_path / "e.csv",
                       "--plot-energy", tmp_path / "e.png", "-q", *FAST)
    assert_one_line_error(code, err, f"disk full while writing step {name} #{nth}")
    assert len(calls) == nth
    assert _leftovers(tmp_path, set()) == []  # no output, no temporary file


def test_all_outputs_appear_together(tmp_path, clip, engines, capsys):
    code, _, err = run(capsys, "infer", clip, "rain", "--engines", engines, "-o", tmp_path / "o.wav",
                       "--candidates", "2", "--mux", tmp_path / "o.mkv", "--write-energy", tmp_path / "e.csv", *FAST)
    assert code == 0, err
    assert _leftovers(tmp_path, set()) == ["e.csv", "o.0.mkv", "o.0.wav", "o.1.mkv", "o.1.wav"]


def test_hint_mean_end_to_end(tmp_path, clip, engines, capsys):
    """--hint-mean: the CLI's output equals the pipeline's with hint_from_mean=True and differs from the default."""
    from rewas_rt.pipeline import GenerationOptions, Pipeline, Request
    from rewas_rt.video import load_video

    # One model window (--duration 5.12): the request the single-window pipeline call below makes.
    code, _, err = run(capsys, "infer", clip, "rain", "--engines", engines, "-o", tmp_path / "m.wav", "--hint-mean",
                       "--duration", "5.12", *FAST)
    assert code == 0, err
    code, _, err = run(capsys, "infer", clip, "rain", "--engines", engines, "-o", tmp_path / "s.wav",
                       "--duration", "5.12", *FAST)
    assert code == 0, err
    pipe = Pipeline(engines, backend="onnxruntime-cpu")
    frames = load_video(clip).frames
    (want,) = pipe.generate([Request("rain", 0, frames=frames)], GenerationOptions(steps=2, hint_from_mean=True))
    got = sf.read(str(tmp_path / "m.wav"), dtype="float32")[0]
    np.testing.assert_allclose(got, want.waveforms[0][: got.size], atol=2 / 32768)  # 16-bit PCM
    assert np.abs(got - sf.read(str(tmp_path / "s.wav"), dtype="float32")[0]).max() > 1e-3
