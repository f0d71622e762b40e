"""Energy control: edits, curve files (CSV/NPY), the written CSV, tokenizer batching."""
import numpy as np
import pytest

from rewas_rt import constants as C
from rewas_rt.energy_control import EnergyEdit, frame_times, load_curve, write_curve_csv
from rewas_rt.errors import InputError


def test_identity_edit_returns_the_curve():
    curve = np.random.default_rng(0).normal(-5, 1, C.MEL_FRAMES).astype(np.float32)
    assert EnergyEdit().apply(curve) is curve


def test_scale_stretches_around_the_mean_offset_adds_clip_bounds():
    curve = np.array([-6.0, -4.0, -5.0, -5.0], np.float32)
    np.testing.assert_allclose(EnergyEdit(scale=2.0).apply(curve), [-7.0, -3.0, -5.0, -5.0])
    np.testing.assert_allclose(EnergyEdit(offset=1.5).apply(curve), curve + 1.5)
    np.testing.assert_allclose(EnergyEdit(clip_min=-5.5, clip_max=-4.5).apply(curve), [-5.5, -4.5, -5.0, -5.0])
    batch = np.stack([curve, curve + 1])  # per-curve means
    np.testing.assert_allclose(EnergyEdit(scale=0.0).apply(batch), [[-5.0] * 4, [-4.0] * 4])


def test_csv_round_trip(tmp_path):
    curve = np.linspace(-9, -1, C.MEL_FRAMES, dtype=np.float32)
    write_curve_csv(tmp_path / "c.csv", curve)
    np.testing.assert_allclose(load_curve(tmp_path / "c.csv"), curve, atol=1e-5)
    times = np.loadtxt(tmp_path / "c.csv", delimiter=",", skiprows=1)[:, 0]
    np.testing.assert_allclose(times, frame_times(), atol=5e-4)


def test_any_length_is_resampled_to_the_mel_frames(tmp_path):
    (tmp_path / "c.csv").write_text("1\n2\n3\n4\n")
    np.save(tmp_path / "c.npy", np.arange(112, dtype=np.float32))
    four = load_curve(tmp_path / "c.csv")
    assert four.shape == (C.MEL_FRAMES,) and four[0] == 1 and four[-1] == 4
    assert load_curve(tmp_path / "c.npy")[-1] == 111


@pytest.mark.parametrize("name, content", [("c.txt", "1\n2\n"), ("c.csv", "x\n"), ("c.csv", "1\n"), ("c.npy", None)])
def test_bad_curve_files(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        path.write_bytes(b"garbage")
    else:
        path.write_text(content)
    with pytest.raises(InputError, match=name):
        load_curve(path)
    with pytest.raises(InputError, match="not found"):
        load_curve(tmp_path / "missing.csv")


def test_tokenizer_pads_a_batch_and_masks_it(tiny_engines):
    from rewas_rt.manifest import open_engine_dir
    from rewas_rt.tokenizer import PAD_ID, PromptTokenizer

    d = open_engine_dir(tiny_engines[0], checksums=False)
    tok = PromptTokenizer(d.tokenizer_path)
    short, long = tok.ids("rain"), tok.ids("a dog barking loudly in the rain")
    ids, mask = tok.batch(["rain", "a dog barking loudly in the rain"])
    assert ids.shape == mask.shape == (2, len(long)) and ids.dtype == np.int64
    assert list(ids[0, : len(short)]) == short and (ids[0, len(short):] == PAD_ID).all()
    assert mask[0].sum() == len(short) and mask[1].all()
    assert tok.ids("", allow_empty=True) == d.unconditional_ids
    with pytest.warns(UserWarning, match="truncated"):
        assert len(tok.ids("rain " * 1000)) == C.TEXT_MAX_TOKENS
