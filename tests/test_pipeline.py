"""The NumPy runtime on ONNX graphs equals the PyTorch pipeline of training/
(same tiny random weights, seed and noise), and its batching changes nothing."""
import numpy as np
import pytest

from export.export_onnx import ModelSource
from rewas_rt import constants as C
from rewas_rt.ddim import make_schedule
from rewas_rt.energy_control import EnergyEdit
from rewas_rt.pipeline import GenerationOptions, Pipeline, Request, candidate_rng
from rewas_rt.video import normalize, segments
from training.pipeline import COMPONENT_NAMES, Noise, TorchPipeline

STEPS = 4


def frames(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (C.FRAMES, C.CROP, C.CROP, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def pipe(tiny_engines):
    root, _ = tiny_engines
    return Pipeline(root, backend="onnxruntime-cpu")


def replay_noise(seed: int, candidates: int, steps: int) -> Noise:
    """The runtime's draws, in its order: per candidate hint noise, x_T, one per step."""
    hint, x_T, per_step = [], [], []
    for c in range(candidates):
        g = candidate_rng(seed, c)
        hint.append(g.standard_normal(C.LATENT_SHAPE, dtype=np.float32))
        x_T.append(g.standard_normal(C.LATENT_SHAPE, dtype=np.float32))
        per_step.append([g.standard_normal(C.LATENT_SHAPE, dtype=np.float32) for _ in range(steps)])
    return Noise(np.stack(hint), np.stack(x_T), np.stack(per_step, axis=1))


def rel_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def test_runtime_matches_pytorch_pipeline(pipe, tiny_engines):
    _, weight_seed = tiny_engines
    src = ModelSource.from_preset("tiny", seed=weight_seed)
    torch_pipe = TorchPipeline({c: src.component(c) for c in COMPONENT_NAMES})
    seed, candidates, prompt = 11, 2, "dog barking"
    video = frames(0)
    opts = GenerationOptions(steps=STEPS, guidance=3.0, eta=1.0, candidates=candidates)
    (got,) = pipe.generate([Request(prompt, seed, frames=video)], opts)

    ids, mask = pipe.tokenizer.batch([prompt] * candidates)
    uncond = np.asarray([pipe.dir.unconditional_ids], dtype=np.int64)
    segs = np.repeat(normalize(segments(video)), candidates, axis=0)
    want = torch_pipe.generate(segs, ids, mask, uncond, make_schedule(STEPS, 1.0), 3.0,
                               replay_noise(seed, candidates, STEPS))
    assert rel_err(got.energy, want["energy"][0]) < 1e-4
    assert rel_err(got.waveforms, want["waveform"]) < 1e-3
    assert np.abs(got.waveforms[0] - got.waveforms[1]).max() > 1e-3  # candidates differ


def test_batching_requests_changes_nothing(pipe):
    opts = GenerationOptions(steps=2, candidates=1)
    a = Request("rain", 1, frames=frames(1))
    b = Request("a car engine", 2, frames=frames(2))
    together = pipe.generate([a, b], opts)
    alone = [pipe.generate([r], opts)[0] for r in (a, b)]
    for t, s in zip(together, alone):
        assert rel_err(t.waveforms, s.waveforms) < 1e-4
        assert rel_err(t.energy, s.energy) < 1e-5


def test_same_seed_reproduces_and_other_seed_differs(pipe):
    opts = GenerationOptions(steps=2)
    v = frames(3)
    first = pipe.generate([Request("rain", 5, frames=v)], opts)[0].waveforms
    again = pipe.generate([Request("rain", 5, frames=v)], opts)[0].waveforms
    other = pipe.generate([Request("rain", 6, frames=v)], opts)[0].waveforms
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


def test_given_energy_curve_skips_the_video_encoders_and_is_edited(pipe):
    pipe.timings.clear()
    curve = np.linspace(-8.0, -2.0, C.MEL_FRAMES, dtype=np.float32)
    edit = EnergyEdit(scale=2.0, offset=1.0)
    (res,) = pipe.generate([Request("rain", 1, energy=curve)], GenerationOptions(steps=1, energy_edit=edit))
    assert "synchformer" not in pipe.timings and "phi" not in pipe.timings
    np.testing.assert_allclose(res.energy, curve.mean() + 2.0 * (curve - curve.mean()) + 1.0, rtol=1e-6, atol=1e-5)


def test_hint_latents_are_scaled_posterior_mean_or_sample(pipe, tiny_engines):
    """Against the PyTorch VAE encoder of the same weights: noise=None gives scale x posterior
    mean, noise gives scale x (mean + std x noise)."""
    import torch

    src = ModelSource.from_preset("tiny", seed=tiny_engines[1])
    curve = np.stack([np.linspace(-9.0, -2.0, C.MEL_FRAMES, dtype=np.float32),
                      np.full(C.MEL_FRAMES, -5.0, np.float32)])
    mel = np.repeat(curve[:, None, :, None], C.N_MELS, axis=-1)
    with torch.no_grad():
        moments = src.graph_module("vae_encoder")(torch.from_numpy(mel)).numpy().astype(np.float64)
    mean, logvar = np.split(moments, 2, axis=1)
    std = np.exp(0.5 * np.clip(logvar, *C.LOGVAR_CLAMP))
    scale = src.scale_factor
    assert scale != 1.0  # so that a missing scale would show
    noise = np.random.default_rng(0).standard_normal((2, *C.LATENT_SHAPE), dtype=np.float32)
    assert rel_err(pipe.hint_latents(curve, None), scale * mean) < 1e-4
    assert rel_err(pipe.hint_latents(curve, noise), scale * (mean + std * noise)) < 1e-4


def test_hint_from_mean_option_reaches_the_denoiser(pipe, monkeypatch):
    """GenerationOptions(hint_from_mean=True) feeds scale x mean as the hint, whatever the seed."""
    seen = []
    real = pipe.hint_latents
    monkeypatch.setattr(pipe, "hint_latents", lambda e, n: seen.append(n) or real(e, n))
    curve = np.linspace(-8.0, -2.0, C.MEL_FRAMES, dtype=np.float32)
    a = pipe.generate([Request("rain", 1, energy=curve)], GenerationOptions(steps=1, hint_from_mean=True))[0]
    b = pipe.generate([Request("rain", 1, energy=curve)], GenerationOptions(steps=1))[0]
    assert seen[0] is None and seen[1] is not None
    assert np.abs(a.waveforms - b.waveforms).max() > 1e-4
