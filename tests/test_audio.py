"""Audio I/O (docs/design.md §1 stage 12): load_audio, write_wav, mux — on files generated here."""
from __future__ import annotations

import os
import warnings

import av
import numpy as np
import pytest
import soundfile as sf

from rewas_rt import audio
from rewas_rt.audio import load_audio, mux, write_wav
from rewas_rt.errors import InputError, OutputError
from tests import media_files as M

SR = 16000


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    # 1 s of silence, then 2 s of a 1 kHz sine: left 0.5, right 0.25 amplitude.
    onset = np.concatenate([np.zeros((2, 44100), np.float32), M.sine(1000, 2.0, 44100, channels=2)], axis=1)
    sf.write(d / "onset.wav", onset.T, 44100)
    with av.open(str(d / "onset.m4a"), "w") as container:
        M.write_audio(container, M.add_audio_stream(container, 44100, 2), onset)
    (d / "text.wav").write_text("not audio\n")
    b_frames = M.write_video(d / "b-frames.mkv", fps=30, seconds=3)
    with av.open(str(b_frames)) as container:  # what mux must not drop
        assert any(p.dts is None for p in container.demux(video=0) if p.size), "Matroska gave every packet a dts"
    return {
        "dir": d,
        "onset.wav": d / "onset.wav",
        "onset.m4a": d / "onset.m4a",
        # 30 fps H.264 + a stereo AAC track (which mux must replace).
        "av.mp4": M.write_video(d / "av.mp4", fps=30, seconds=3, audio_freq=1000),
        "b-frames.mkv": b_frames,
        "mpeg4.mkv": M.write_video(d / "mpeg4.mkv", fps=25, seconds=2, codec="mpeg4"),
    }


def peak_hz(wave: np.ndarray, sr: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.argmax(spectrum) * sr / wave.size)


def onset(wave: np.ndarray) -> int:
    return int(np.argmax(np.abs(wave) > 0.05))


def test_stereo_44k_becomes_16k_mono_mean(files):
    wave = load_audio(files["onset.wav"], start=1.0)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.size - 2 * SR) <= 2
    assert peak_hz(wave) == pytest.approx(1000, abs=1)
    # Mean of the channels: (0.5 + 0.25) / 2.
    assert np.sqrt(2) * wave[SR // 10:-SR // 10].std() == pytest.approx(0.375, rel=0.01)


@pytest.mark.parametrize("name, tolerance", [("onset.wav", 2), ("onset.m4a", 2)])
def test_start_and_duration(files, name, tolerance):
    wave = load_audio(files[name], start=0.5, duration=1.0)
    assert wave.size == SR  # exact with a duration
    assert abs(onset(wave) - SR // 2) <= tolerance  # the sine starts at 1.0 s
    tail = load_audio(files[name], start=2.5, duration=1.0)  # 0.5 s left in the file
    assert tail.size == SR and not tail[SR * 6 // 10:].any()


@pytest.mark.parametrize("start", [0.5, 1.0, 2.0])
def test_a_window_equals_that_part_of_the_whole_file(files, start):
    whole = load_audio(files["av.mp4"])
    part = load_audio(files["av.mp4"], start=start, duration=0.5)
    i = round(start * SR)
    # Up to half a 16 kHz sample of phase on this 1 kHz tone (≤ 0.074) plus AAC noise;
    # without decoding a pre-roll before the seek point, AAC's first frames are off by ~0.3.
    assert np.abs(part - whole[i:i + part.size]).max() < 0.08


def test_audio_track_of_a_video(files):
    wave = load_audio(files["av.mp4"], duration=3.0)
    assert wave.size == 3 * SR and peak_hz(wave) == pytest.approx(1000, abs=1)


def test_other_rates(files):
    wave = load_audio(files["onset.wav"], start=1.0, duration=1.0, sr=22050)
    assert wave.size == 22050 and peak_hz(wave, 22050) == pytest.approx(1000, abs=1)


@pytest.mark.parametrize(
    "name, start, words",
    [
        ("missing.wav", 0.0, "no such file"),
        ("text.wav", 0.0, "not a media file"),
        ("b-frames.mkv", 0.0, "no audio stream"),
        ("onset.wav", 4.0, "past the end"),
        ("onset.m4a", 3.5, "past the end"),
        ("onset.wav", -0.5, "≥ 0"),
    ],
)
def test_bad_audio_input(files, name, start, words):
    with pytest.raises(InputError, match=words) as err:
        load_audio(files["dir"] / name, start=start)
    assert "\n" not in str(err.value)


def test_write_wav_pcm16_like_the_original(tmp_path):
    wave = np.array([0.0, 0.5, -0.5, 0.99999, -1.0, 1.5, -1.5, 1e-5], np.float32)
    path = tmp_path / "out.wav"
    write_wav(path, wave, SR)
    data, sr = sf.read(path, dtype="int16")
    assert sr == SR and sf.info(path).subtype == "PCM_16"
    # ×32768 truncated (the original's astype(int16)); out-of-range values clip instead of wrapping.
    assert data.tolist() == [0, 16384, -16384, 32767, -32768, 32767, -32768, 0]
    assert os.listdir(tmp_path) == ["out.wav"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_write_wav_replaces_atomically_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "out.wav"
    write_wav(path, np.zeros(100, np.float32), SR)
    write_wav(path, np.full(50, 0.5, np.float32), SR)
    assert sf.read(path)[0].size == 50

    def disk_full(file, *args, **kwargs):
        with open(file, "wb") as f:
            f.write(b"RIFF partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audio.sf, "write", disk_full)
    with pytest.raises(OutputError, match="No space left"):
        write_wav(path, np.zeros(10, np.float32), SR)
    assert os.listdir(tmp_path) == ["out.wav"] and sf.read(path)[0].size == 50


def test_write_wav_to_a_bad_place(tmp_path):
    (tmp_path / "file").write_text("")
    for target, words in [
        (tmp_path / "nope" / "out.wav", "does not exist"),
        (tmp_path / "file" / "out.wav", "not a directory"),
    ]:
        with pytest.raises(OutputError, match=words) as err:
            write_wav(target, np.zeros(10, np.float32), SR)
        assert str(target) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_write_wav_to_a_read_only_directory(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            write_wav(tmp_path / "out.wav", np.zeros(10, np.float32), SR)
    finally:
        tmp_path.chmod(0o700)


def test_write_wav_rejects_non_finite_or_multichannel(tmp_path):
    with pytest.raises(ValueError):
        write_wav(tmp_path / "a.wav", np.array([0.0, np.nan], np.float32), SR)
    with pytest.raises(ValueError):
        write_wav(tmp_path / "a.wav", np.zeros((2, 10), np.float32), SR)
    assert not os.listdir(tmp_path)


def video_packets(path) -> list[tuple[bytes, float]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [(bytes(p), float(p.pts * stream.time_base)) for p in container.demux(stream) if p.size]


def decode_audio(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])


@pytest.mark.parametrize(
    "src, out, video_seconds",
    [
        ("av.mp4", "muxed.mp4", 3.0),
        ("b-frames.mkv", "muxed.mp4", 3.0),
        ("b-frames.mkv", "muxed.mkv", 3.0),
        ("mpeg4.mkv", "muxed.mov", 2.0),
    ],
)
def test_mux_copies_the_video_and_replaces_the_audio(files, tmp_path, src, out, video_seconds):
    src, out = files[src], tmp_path / out
    wave = M.sine(440, 8.0, SR)[0]  # longer than the video: cut at its end
    mux(src, wave, SR, out)
    assert os.listdir(tmp_path) == [out.name]
    with av.open(str(out)) as container:
        kinds = [(s.type, s.codec_context.name) for s in container.streams]
        assert kinds[0][0] == "video" and kinds[1:] == [("audio", "aac")], kinds
        assert container.streams.audio[0].rate == SR
    assert video_packets(out) == video_packets(src)  # byte-identical, same times
    assert M.decoded_times(out) == M.decoded_times(src)
    track = decode_audio(out)
    assert abs(track.size / SR - video_seconds) < 0.07  # within one AAC frame (1024 samples)
    assert peak_hz(track[: SR]) == pytest.approx(440, abs=2)


def test_mux_start_offsets_the_track(files, tmp_path):
    out = tmp_path / "late.mp4"
    mux(files["av.mp4"], M.sine(440, 5.0, SR)[0], SR, out, start=1.5)
    track = decode_audio(out)
    assert abs(onset(track) - int(1.5 * SR)) < 200  # AAC smears the onset a little


def test_mux_errors(files, tmp_path):
    wave = np.zeros(SR, np.float32)
    cases = [
        (files["av.mp4"], tmp_path / "out.avi", OutputError, "must end in"),
        (files["av.mp4"], tmp_path / "missing" / "out.mp4", OutputError, "does not exist"),
        (files["onset.wav"], tmp_path / "out.mp4", InputError, "no video stream"),
        (files["av.mp4"], tmp_path / "out.mp4", InputError, "leaves no video"),  # start 5 s > 3 s
    ]
    for src, out, kind, words in cases:
        with pytest.raises(kind, match=words) as err, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mux(src, wave, SR, out, start=5.0 if words == "leaves no video" else 0.0)
        assert "\n" not in str(err.value)
    assert not os.listdir(tmp_path)


def test_mux_codec_the_container_refuses(tmp_path):
    src = tmp_path / "vp8.mkv"
    M.write_video(src, fps=25, seconds=1, codec="libvpx", size=(64, 48))
    with pytest.raises(OutputError, match="vp8 video cannot go in a .mp4 file; use .mkv"):
        mux(src, np.zeros(SR, np.float32), SR, tmp_path / "out.mp4")
    assert os.listdir(tmp_path) == ["vp8.mkv"]
    mux(src, np.zeros(SR, np.float32), SR, tmp_path / "out.mkv")
