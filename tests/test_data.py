"""training.data: manifests, windows, targets (docs/design.md §4 energy of real audio) and the
frozen-encoder feature cache (computed once, reused; new key when weights or preprocessing change)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rewas_rt import constants as C
from rewas_rt import energy as E
from tests.training_helpers import synthetic_set
from training import data as D
from training.checkpoints import save_component
from training.components import CheckpointSource, RandomSource, export_canonical


@pytest.fixture(scope="module")
def items():
    return D.read_manifest(synthetic_set())


@pytest.fixture(scope="module")
def one_window(items):
    return [(items[0], 0.0)]


# --- manifest -------------------------------------------------------------------------

def test_jsonl_and_csv_manifests(tmp_path):
    (tmp_path / "v").mkdir()
    rows = [{"video": "v/a.mp4", "caption": "rain", "split": "val", "start": 1.5},
            {"video": "/abs/b.mp4", "label": "beep", "extra": 3}]
    D.write_manifest(tmp_path / "m.jsonl", rows)
    (tmp_path / "m.csv").write_text("video,caption,label,split,start,duration\nv/a.mp4,rain,,val,1.5,\n"
                                    "/abs/b.mp4,,beep,,,7\n")
    for name in ("m.jsonl", "m.csv"):
        a, b = D.read_manifest(tmp_path / name)
        assert a.video == tmp_path.resolve() / "v" / "a.mp4" and a.caption == "rain"
        assert (a.split, a.start, a.id) == ("val", 1.5, "a")
        assert b.video.as_posix() == "/abs/b.mp4" and b.caption == "beep" and b.split == "train"
    assert D.read_manifest(tmp_path / "m.jsonl")[1].extra == {"extra": 3}
    assert D.read_manifest(tmp_path / "m.csv")[1].duration == 7.0


@pytest.mark.parametrize("line, message", [
    ('{"caption": "x"}', "no 'video'"),
    ('{"video": "a.mp4"}', "caption"),
    ('{"video": "a.mp4", "caption": "x", "split": "holdout"}', "split"),
    ("{not json", "not JSON"),
])
def test_manifest_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "m.jsonl"
    path.write_text('{"video": "ok.mp4", "caption": "x"}\n' + line + "\n")
    with pytest.raises(D.DataError, match=rf"m\.jsonl:2: .*{message}"):
        D.read_manifest(path)


# --- windows and targets --------------------------------------------------------------

def test_windows(items):
    item = items[0]  # 5.44 s
    assert D.item_duration(item) == pytest.approx(5.44)
    assert D.train_starts(item, 0.32) == [0.0, 0.32]
    assert D.train_starts(item, 0.1) == [0.0, 0.1, 0.2, 0.3]
    late = D.Item("x", item.video, "c", start=0.2, duration=5.44)
    assert D.train_starts(late, 0.32) == [0.2]  # at least one window, even when none fits the grid
    assert D.val_start(late) == 0.2
    train, val = D.windows(items, "train"), D.windows(items, "val")
    assert len(train) == 2 * sum(i.split == "train" for i in items)
    assert [s for _, s in val] == [0.0] * sum(i.split == "val" for i in items)


def test_targets_are_the_design_energy(items):
    wave = D.audio_window(items[0].video, 0.32)
    assert wave.shape == (C.WAVE_SAMPLES,) and wave.dtype == np.float32
    t = D.audio_targets(wave)
    assert t["log_mel"].shape == (C.MEL_FRAMES, C.N_MELS)
    np.testing.assert_array_equal(t["energy_512"], E.energy_target(wave))
    energy = E.energy_from_log_mel(E.log_mel(E.normalize_wav(wave)))
    np.testing.assert_array_equal(t["energy_112"], E.savgol(E.resize_nearest(energy, C.ENERGY_STEPS)))
    np.testing.assert_array_equal(E.resize_nearest(t["energy_112"], C.MEL_FRAMES), t["energy_512"])


def test_audio_past_the_end_is_zero_padded(items):
    wave = D.audio_window(items[0].video, 1.0)  # 5.44 s clip: 4.44 s of sound, then zeros
    n = round(4.44 * C.SAMPLE_RATE)
    assert np.abs(wave[n - 1600:n - 100]).max() > 0
    assert not wave[n + 100:].any()


def test_video_window_is_the_synchformer_input(items):
    seg = D.video_segments(items[0].video, 0.32)
    assert seg.shape == (1, C.SEGMENTS, 3, C.SEGMENT_LEN, C.CROP, C.CROP) and seg.dtype == np.float32
    assert -1.0 <= seg.min() and seg.max() <= 1.0


def test_energy_mae():
    pred = np.linspace(-8, -2, 112, dtype=np.float32)[None].repeat(2, 0)  # linear: Savitzky–Golay keeps it
    target = E.resize_nearest(pred, 512)
    assert D.energy_mae(pred, target) == pytest.approx(0.0, abs=1e-5)
    assert D.energy_mae(pred + 0.5, target) == pytest.approx(0.5, abs=1e-5)


# --- the feature cache ----------------------------------------------------------------

def _fill(store, wins):
    store.precompute(wins, ("audio", "video", "vae"), captions=True)


def test_features_are_computed_once_and_reused(tmp_path, one_window):
    src = RandomSource("tiny", 0)
    first = D.FeatureStore(src, tmp_path)
    _fill(first, one_window)
    assert first.cache.misses == 3 + 2  # audio, video, vae entries; caption and "" embeddings
    assert set(first.loads) == {"synchformer", "vae", "clap_text"}
    item, start = one_window[0]
    assert first.video_features(item, start).shape == (C.ENERGY_STEPS, src.config("synchformer").embed_dim)
    moments = first.vae_moments(item, start)
    assert moments["target"].shape == moments["hint"].shape == (16, 128, 16)
    assert first.text_embedding(item.caption).shape == (C.TEXT_EMBED_DIM,)

    again = D.FeatureStore(src, tmp_path)  # a new run on the same cache
    _fill(again, one_window)
    assert again.cache.misses == 0 and again.cache.hits == 5
    assert again.loads == {}  # no encoder was even loaded
    np.testing.assert_array_equal(again.video_features(item, start), first.video_features(item, start))
    # Frozen-encoder features match a direct computation.
    syn = src.load("synchformer")
    with torch.no_grad():
        direct = syn(torch.from_numpy(D.video_segments(item.video, start))).reshape(C.ENERGY_STEPS, -1).numpy()
    np.testing.assert_allclose(first.video_features(item, start), direct, rtol=0, atol=1e-6)


def test_key_changes_with_weights_and_preprocessing(tmp_path):
    kinds = ("video", "audio", "vae", "clap")
    base = D.FeatureStore(RandomSource("tiny", 0), tmp_path)
    keys = {k: base.key(k) for k in kinds}
    assert keys == {k: D.FeatureStore(RandomSource("tiny", 0), tmp_path).key(k) for k in kinds}
    other_weights = D.FeatureStore(RandomSource("tiny", 1), tmp_path)
    assert {k for k in kinds if other_weights.key(k) != keys[k]} == {"video", "vae", "clap"}
    audio_prep = D.FeatureStore(RandomSource("tiny", 0), tmp_path, audio_prep={"n_mels": 80})
    assert {k for k in kinds if audio_prep.key(k) != keys[k]} == {"audio", "vae"}
    video_prep = D.FeatureStore(RandomSource("tiny", 0), tmp_path, video_prep={"crop": 192})
    assert {k for k in kinds if video_prep.key(k) != keys[k]} == {"video"}


def test_checkpoint_key_follows_the_file(tmp_path, one_window):
    """Canonical folder: key = sha256 of the safetensors file (+ config); one changed tensor
    selects a new cache folder, and the old entries stay for the old weights."""
    src = RandomSource("tiny", 0)
    ckpt = tmp_path / "ckpt"
    export_canonical(ckpt, src, {})
    store = D.FeatureStore(CheckpointSource(ckpt), tmp_path / "cache")
    key = store.key("video")
    assert key == D.FeatureStore(CheckpointSource(ckpt), tmp_path / "cache").key("video")
    item, start = one_window[0]
    a = store.video_features(item, start)
    sd = src.load("synchformer").state_dict()
    sd["norm.weight"] = sd["norm.weight"] + 1e-3
    save_component(ckpt, "synchformer", sd, src.config("synchformer"))
    changed = D.FeatureStore(CheckpointSource(ckpt), tmp_path / "cache")
    assert changed.key("video") != key and changed.key("vae") == store.key("vae")
    b = changed.video_features(item, start)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(D.FeatureStore(CheckpointSource(ckpt), tmp_path / "cache").video_features(item, start), b)
    assert len(list((tmp_path / "cache").glob("video-*"))) == 2
    info = json.loads((changed.folder("video") / "key.json").read_text())
    assert info["key"] == changed.key("video") and info["prep"]["fps"] == C.FPS


def test_random_weights_are_the_project_scheme():
    """--random-weights here gives the tensors export/ and checkpoints.random_models give."""
    from training.checkpoints import random_models

    ours, theirs = RandomSource("tiny", 3), random_models("tiny", 3)
    for component in ("synchformer", "vae"):
        a, b = ours.load(component).state_dict(), theirs[component].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
