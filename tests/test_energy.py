"""Energy maths (rewas_rt.energy) against the golden `energy` reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rewas_rt import constants as C
from rewas_rt import energy
from tests.reference import assert_close, load_config, load_io

COMPONENT = "energy"
IO = load_io(COMPONENT)
# Training-path items b0, b1, …: every one has a raw wave and the whole chain; the normalised wave
# and the first STFT frames are stored for some items only (the reference keeps the file small).
ITEMS = sorted(k.removesuffix("_wave_raw") for k in IO if k.endswith("_wave_raw"))
OPTIONAL = {suffix: [i for i in ITEMS if f"{i}_{suffix}" in IO] for suffix in ("wave_normalized", "stft_mag_first128")}


def check(name: str, actual, key: str):
    assert_close(f"{COMPONENT}/{name}", actual, IO[key])


def test_constants_match_reference_config():
    cfg = load_config(COMPONENT)
    mel, sg = cfg["mel"], cfg["savgol"]
    assert (C.SAMPLE_RATE, C.N_FFT, C.HOP, C.WIN, C.N_MELS) == (
        mel["sampling_rate"], mel["filter_length"], mel["hop_length"], mel["win_length"], mel["n_mel_channels"]
    )
    assert (C.FMIN, C.FMAX, C.WINDOW_SECONDS, C.MEL_FRAMES) == (
        mel["mel_fmin"], mel["mel_fmax"], mel["duration"], mel["target_length"]
    )
    assert (C.SAVGOL_WINDOW, C.SAVGOL_ORDER) == (sg["window_length"], sg["polyorder"])
    assert C.WAVE_SAMPLES == round(C.WINDOW_SECONDS * C.SAMPLE_RATE)


def test_mel_filterbank():
    basis = energy.mel_filterbank()
    assert basis.dtype == np.float32
    check("mel_basis", basis, "mel_basis")


def test_hann_window():
    check("hann_window", energy.hann_window(), "hann_window")


def test_reference_holds_every_intermediate():
    """The checks below are not skipped for lack of data: two items, each optional intermediate stored."""
    assert len(ITEMS) >= 2, ITEMS
    assert all(OPTIONAL.values()), OPTIONAL


@pytest.mark.parametrize("item", OPTIONAL["wave_normalized"])
def test_normalized_wave(item):
    check(f"{item}_wave_normalized", energy.normalize_wav(IO[f"{item}_wave_raw"]), f"{item}_wave_normalized")


@pytest.mark.parametrize("item", OPTIONAL["stft_mag_first128"])
def test_stft_magnitude(item):
    key = f"{item}_stft_mag_first128"  # only the first frames are stored
    check(key, energy.stft_magnitude(energy.normalize_wav(IO[f"{item}_wave_raw"]))[: len(IO[key])], key)


@pytest.mark.parametrize("item", ITEMS)
def test_training_path(item):
    """Every stored intermediate of the dataset's energy chain, from the raw wave."""
    wave = energy.normalize_wav(IO[f"{item}_wave_raw"])

    log_mel = energy.log_mel(wave)
    check(f"{item}_log_mel", log_mel, f"{item}_log_mel")
    e512 = energy.energy_from_log_mel(log_mel)
    check(f"{item}_energy_512", e512, f"{item}_energy_512")
    e112 = energy.resize_nearest(e512, C.ENERGY_STEPS)
    check(f"{item}_energy_112_nearest", e112, f"{item}_energy_112_nearest")
    smooth = energy.savgol(e112)
    assert str(smooth.dtype) == str(IO[f"{item}_savgol_dtype"])
    check(f"{item}_energy_112_savgol", smooth, f"{item}_energy_112_savgol")
    hint = energy.resize_nearest(smooth, C.MEL_FRAMES)
    check(f"{item}_hint_energy_512", hint, f"{item}_hint_energy_512")

    np.testing.assert_array_equal(energy.energy_target(IO[f"{item}_wave_raw"]), hint)


def test_inference_path():
    phi_out = IO["inference_phi_out_112"]
    check("inference_savgol_112", energy.savgol(phi_out), "inference_savgol_112")
    check("inference_energy_512", energy.energy_from_phi(phi_out), "inference_energy_512")


@pytest.mark.parametrize("src,dst", [(C.MEL_FRAMES, C.ENERGY_STEPS), (C.ENERGY_STEPS, C.MEL_FRAMES), (7, 3), (3, 7)])
def test_resize_nearest_matches_torch(src, dst):
    x = np.arange(src, dtype=np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], size=dst, mode="nearest")[0, 0]
    np.testing.assert_array_equal(energy.resize_nearest(x[None], dst)[0], expected.numpy())


def test_energy_to_vae_input():
    e = IO["inference_energy_512"]
    hint = energy.energy_to_vae_input(e)
    assert hint.shape == (len(e), 1, C.MEL_FRAMES, C.N_MELS) and hint.dtype == np.float32
    np.testing.assert_array_equal(hint, np.broadcast_to(e[:, None, :, None], hint.shape))
