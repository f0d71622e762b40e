"""The synthetic audio-visual set: real MP4 files, deterministic by seed, and sound events
where the picture shows them (decoded with the runtime's own readers)."""
from __future__ import annotations

import json

import av
import numpy as np
import pytest

from rewas_rt import constants as C
from rewas_rt import energy as E
from rewas_rt.audio import load_audio
from rewas_rt.video import load_video
from tests.training_helpers import CLASSES, DURATION, N_CLIPS, synthetic_set
from training import synthetic as S

HOP_S = C.HOP / C.SAMPLE_RATE


@pytest.fixture(scope="module")
def rows():
    manifest = synthetic_set()
    return [dict(json.loads(line), path=manifest.parent / json.loads(line)["video"])
            for line in manifest.read_text().splitlines()]


def _row(rows, label):
    return next(r for r in rows if r["label"] == label)


def _energy(path):
    """Frame energy (mean log-mel) at 100 Hz and each frame's centre time in seconds."""
    e = E.energy_from_log_mel(E.log_mel(E.normalize_wav(load_audio(path))))
    # Frame i: samples [160 i − 432, 160 i + 592) of the reflect-padded signal, centred at 160 i + 80.
    return e, (np.arange(len(e)) * C.HOP + C.HOP // 2) / C.SAMPLE_RATE


def _frames(path):
    return load_video(path, 0.0, DURATION).frames.astype(np.float32)


def test_manifest_and_files(rows):
    assert len(rows) == N_CLIPS
    assert {r["label"] for r in rows} == set(CLASSES)
    assert [r["split"] for r in rows] == ["train"] * 4 + ["val"] * 4  # each class in both splits
    for r in rows:
        assert r["caption"] in S.CAPTIONS[r["label"]] and r["events"]
        assert r["path"].stat().st_size < 120_000
        with av.open(str(r["path"])) as c:
            v, a = c.streams.video[0], c.streams.audio[0]
            assert (v.codec_context.name, v.average_rate, v.width) == ("h264", 25, 128)
            assert (a.codec_context.name, a.rate, a.channels) == ("aac", 16000, 1)
            assert c.duration / 1e6 == pytest.approx(DURATION, abs=0.05)


def test_deterministic_by_seed(tmp_path, rows):
    cfg = S.SynthConfig(duration=DURATION)
    manifest = S.generate(tmp_path / "again", 2, 0, cfg, log=lambda _: None)
    for line in manifest.read_text().splitlines()[:2]:
        row = json.loads(line)
        assert (manifest.parent / row["video"]).read_bytes() == synthetic_set().parent.joinpath(row["video"]).read_bytes()
        assert row["events"] == next(r["events"] for r in rows if r["id"] == row["id"])
    other = S.make_clip("impact", 1, 0, cfg)
    same = S.make_clip("impact", 0, 0, cfg)
    assert not np.array_equal(other.audio, same.audio) and other.events != same.events


def test_impact_sounds_when_the_ball_hits(rows):
    r = _row(rows, "impact")
    e, t = _energy(r["path"])
    frames = _frames(r["path"])
    white = (frames.min(axis=-1) > 235).sum(axis=(1, 2))  # the ball flashes white at contact
    flash_frames = set(np.flatnonzero(white > 20).tolist())
    for event in r["events"]:
        assert round(event * C.FPS) in flash_frames
        near = (t > event - 0.06) & (t < event + 0.06)
        peak = t[near][np.argmax(e[near])]
        assert event - HOP_S <= peak <= event + 2 * HOP_S, (event, peak)  # measured: +5 … +15 ms
        # A clear onset: the 64 ms frames centred 20–45 ms before the contact do not hear it yet.
        before = e[(t >= event - 0.045) & (t <= event - 0.02)]
        assert e[near].max() > before.max() + 1.0
    assert flash_frames == {round(ev * C.FPS) for ev in r["events"]}  # and no flash without a contact


def test_beep_sounds_while_the_lamp_is_lit(rows):
    r = _row(rows, "beep")
    e, t = _energy(r["path"])
    frames = _frames(r["path"])
    yellow = ((frames[..., 0] > 200) & (frames[..., 1] > 190) & (frames[..., 2] < 160)).sum(axis=(1, 2))
    lit = yellow > 500
    frame_t = np.arange(len(frames)) / C.FPS
    quiet = np.percentile(e, 10)  # the noise floor between beeps
    loud = np.interp(frame_t, t, e) > quiet + 0.7  # measured: ≥ 1.3 nats above it while lit
    # Frames away from the switching edges (the STFT window spans 64 ms) agree on lit = loud.
    edges = np.flatnonzero(np.diff(lit.astype(int))) + 1
    stable = np.ones(len(lit), bool)
    for k in edges:
        stable[max(0, k - 2):k + 2] = False
    assert np.array_equal(lit[stable], loud[stable])
    assert [round(ev * C.FPS) for ev in r["events"]] == [k for k in edges if lit[k]]


def test_rain_loudness_follows_the_disc(rows):
    r = _row(rows, "rain")
    e, t = _energy(r["path"])
    frames = _frames(r["path"])
    brightness = frames.mean(axis=(1, 2, 3))  # the disc grows and the scene brightens with the level
    frame_t = np.arange(len(frames)) / C.FPS
    assert np.corrcoef(brightness, np.interp(frame_t, t, e))[0, 1] > 0.8


def test_whoosh_peaks_when_the_bar_passes_the_centre(rows):
    r = _row(rows, "whoosh")
    e, t = _energy(r["path"])
    for event in r["events"]:
        near = (t > event - 0.3) & (t < event + 0.3)
        assert abs(t[near][np.argmax(e[near])] - event) < 0.1


def _clip_energy(clip):
    e = E.energy_from_log_mel(E.log_mel(E.normalize_wav(clip.audio)))
    return e, (np.arange(len(e)) * C.HOP + C.HOP // 2) / C.SAMPLE_RATE


def test_knock_sounds_when_the_mallet_hits():
    clip = S.make_clip("knock", 0, 4, S.SynthConfig(duration=DURATION))
    e, t = _clip_energy(clip)
    brightness = clip.frames.astype(np.float32).mean(axis=(1, 2, 3))  # the block flashes at each hit
    assert clip.events
    for event in clip.events:
        near = (t > event - 0.06) & (t < event + 0.06)
        assert event - HOP_S <= t[near][np.argmax(e[near])] <= event + 3 * HOP_S
        f = round(event * C.FPS)
        assert brightness[f] > brightness[max(0, f - 2)] + 5


def test_hum_loudness_follows_the_carts_speed():
    clip = S.make_clip("hum", 0, 5, S.SynthConfig(duration=DURATION))
    e, t = _clip_energy(clip)
    brightness = clip.frames.astype(np.float32).mean(axis=(1, 2, 3))  # headlights: the scene brightens with speed
    frame_t = np.arange(len(clip.frames)) / C.FPS
    assert np.corrcoef(brightness, np.interp(frame_t, t, e))[0, 1] > 0.8


def test_splits_have_every_class_and_their_own_seeds(tmp_path):
    m = S.generate_splits(tmp_path, {"train": 1, "test": 1}, seed=0, cfg=S.SynthConfig(duration=5.2),
                          log=lambda _: None, classes=("beep",))
    rows = [json.loads(line) for line in m.read_text().splitlines()]
    assert [(r["id"], r["split"], r["label"]) for r in rows] == [("train_0000", "train", "beep"),
                                                                 ("test_0000", "test", "beep")]
    assert rows[0]["events"] != rows[1]["events"]
    with pytest.raises(ValueError, match="unknown split"):
        S.generate_splits(tmp_path, {"holdout": 1}, log=lambda _: None)
