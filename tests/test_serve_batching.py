"""The service's batching as plain functions (no Ray): grouping, packing, and that a
request's bytes do not depend on what shared its batch."""
from __future__ import annotations

import numpy as np
import pytest

from rewas_rt import constants as C
from rewas_rt.options import GenerationOptions, energy_edit
from rewas_rt.pipeline import Request
from rewas_rt.serve.batching import Job, job_size, plan_batches, run_batches


def test_plan_groups_by_key_and_packs_up_to_max_items():
    keys = ["a", "b", "a", "a", "b", "a"]
    sizes = [2, 1, 3, 4, 1, 1]
    assert plan_batches(keys, sizes, 6) == [[0, 2, 5], [1, 4], [3]]
    # first fit: the big job does not hold back the small one after it
    assert plan_batches(["k"] * 3, [5, 4, 1], 6) == [[0, 2], [1]]
    assert plan_batches(["k"] * 4, [1] * 4, 1) == [[0], [1], [2], [3]]
    assert plan_batches([], [], 8) == []


def test_plan_invariants_on_random_inputs():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, cap = int(rng.integers(1, 20)), int(rng.integers(1, 9))
        keys = [int(k) for k in rng.integers(0, 3, n)]
        sizes = [job_size(int(c), cap) for c in rng.integers(1, 12, n)]
        groups = plan_batches(keys, sizes, cap)
        assert sorted(i for g in groups for i in g) == list(range(n))  # every job exactly once
        for g in groups:
            assert len({keys[i] for i in g}) == 1  # compatible
            assert sum(sizes[i] for i in g) <= cap  # fits the engines' profile
            assert g == sorted(g)  # arrival order inside a group


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError):
        plan_batches(["a"], [1], 0)
    with pytest.raises(ValueError):
        plan_batches(["a"], [1, 2], 4)
    assert job_size(20, 8) == 8 and job_size(0, 8) == 1


@pytest.fixture(scope="module")
def pipe(tiny_engines):
    from rewas_rt.pipeline import Pipeline

    return Pipeline(tiny_engines[0], backend="onnxruntime-cpu")


def frames(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (C.FRAMES, C.CROP, C.CROP, 3), dtype=np.uint8)


def job(prompt, seed, candidates=1, edit=None, steps=2, eta=1.0, energy=None):
    opts = GenerationOptions(steps=steps, eta=eta, candidates=candidates, energy_edit=edit or energy_edit())
    req = Request(prompt, seed, frames=None if energy is not None else frames(seed), energy=energy,
                  candidates=candidates, energy_edit=opts.energy_edit)
    return Job(req, opts, size=job_size(candidates, 8))


def test_merged_requests_get_the_bytes_they_get_alone(pipe):
    """Different prompts, seeds, candidate counts and energy edits share one generate call;
    a different eta gets its own; each result equals running the request alone, bit for bit."""
    curve = np.linspace(-9, -2, C.MEL_FRAMES, dtype=np.float32)  # given curves skip the video encoder (CPU time)
    jobs = [job("rain", 1), job("a dog barking loudly twice", 2, candidates=2, edit=energy_edit(2.0, 0.5),
                                energy=curve), job("wind", 3, eta=0.0, energy=curve), job("engine", 4, energy=-curve)]
    batched = run_batches(pipe, jobs, max_items=8)
    assert [o.batch_requests for o in batched] == [3, 3, 1, 3]
    assert [o.batch_items for o in batched] == [4, 4, 1, 4]
    for j, got in zip(jobs, batched):
        (alone,) = run_batches(pipe, [j], max_items=8)
        assert alone.batch_requests == 1
        np.testing.assert_array_equal(got.result.waveforms, alone.result.waveforms)
        np.testing.assert_array_equal(got.result.energy, alone.result.energy)
        assert got.result.waveforms.shape == (j.candidates, C.WAVE_SAMPLES)


def test_a_bad_request_does_not_fail_its_batch(pipe):
    curve = np.full(C.MEL_FRAMES, -5.0, np.float32)
    bad = job("rain", 5, steps=1, energy=curve)
    bad.request.prompt = "   "  # refused by the tokenizer inside generate
    good = job("rain", 6, steps=1, energy=curve)
    bad.options = good.options
    out = run_batches(pipe, [bad, good], max_items=8)
    assert out[0].error is not None and "prompt is empty" in str(out[0].error)
    assert out[1].error is None and out[1].result.waveforms.shape == (1, C.WAVE_SAMPLES)


def test_a_whole_video_job_runs_alone_through_generate_video(pipe, tmp_path):
    """A clip of several windows (VideoRequest) is never merged: it gets its own call, and its
    result is generate_video's; the one-window jobs around it still share theirs."""
    from rewas_rt.pipeline import VideoRequest
    from tests.media_files import write_video

    video = write_video(tmp_path / "long.mp4", seconds=7.0)
    curve = np.linspace(-9, -2, C.MEL_FRAMES, dtype=np.float32)
    opts = GenerationOptions(steps=1)
    long_job = Job(VideoRequest("rain", 9, video), opts, size=1)
    jobs = [job("rain", 1, steps=1, energy=curve), long_job, job("wind", 2, steps=1, energy=-curve)]
    out = run_batches(pipe, jobs, max_items=8)
    assert [o.batch_requests for o in out] == [2, 1, 2]
    assert out[1].call not in (out[0].call, out[2].call)
    direct = pipe.generate_video(VideoRequest("rain", 9, video), opts)
    assert out[1].result.waveforms.shape == (1, 7 * C.SAMPLE_RATE)
    np.testing.assert_array_equal(out[1].result.waveforms, direct.waveforms)
