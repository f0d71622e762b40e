"""Samplers and the guidance interval through GenerationOptions, Pipeline, the manifest's
recommendation and `rewas-rt infer` (tiny engine directory)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rewas_rt import constants as C
from rewas_rt import manifest as M
from rewas_rt.cli import main
from rewas_rt.options import sampling_settings
from rewas_rt.errors import InputError
from rewas_rt.pipeline import GenerationOptions, Pipeline, Request
from rewas_rt.samplers import DEFAULT_STEPS, SAMPLERS, noise_levels
from tests.media_files import write_video


@pytest.fixture(scope="module")
def pipe(tiny_engines):
    return Pipeline(tiny_engines[0], backend="onnxruntime-cpu")


def curve():
    return np.linspace(-8.0, -2.0, C.MEL_FRAMES, dtype=np.float32)


@pytest.mark.parametrize("bad", [{"sampler": "euler"}, {"sampler": ""}, {"guidance_interval": (2.0, 1.0)},
                                 {"guidance_interval": (-1.0, 1.0)}, {"guidance_interval": (1.0,)}])
def test_options_are_validated(bad):
    with pytest.raises(InputError) as e:
        GenerationOptions(**bad)
    assert "\n" not in str(e.value)


def test_every_sampler_runs_and_calls_the_unet_per_step(pipe):
    rows, progress = [], []
    denoise = pipe.denoise
    pipe.denoise = lambda x, t, c: rows.append(len(x)) or denoise(x, t, c)
    try:
        out = {}
        for sampler in SAMPLERS:
            rows.clear()
            progress.clear()
            opts = GenerationOptions(steps=4, sampler=sampler)
            (res,) = pipe.generate([Request("rain", 3, energy=curve())], opts, progress=lambda d, t: progress.append((d, t)))
            assert np.isfinite(res.waveforms).all()
            assert rows == [2] * 4 and progress == [(k, 4) for k in range(1, 5)]
            out[sampler] = res.waveforms
        assert np.abs(out["dpmpp-2m"] - out["dpmpp-2m-sde"]).max() > 1e-4  # the SDE injects noise
        # Guidance interval: single-branch (batch 1) calls at the steps outside it.
        rows.clear()
        sig = noise_levels(4).edm_sigmas[:-1]
        pipe.generate([Request("rain", 3, energy=curve())],
                      GenerationOptions(steps=4, sampler="dpmpp-2m", guidance_interval=(sig[2], sig[0])))
        assert rows == [2, 2, 1, 1]  # σ_0 == σ_hi is inside (σ_lo, σ_hi]; σ_2 == σ_lo is not
    finally:
        pipe.denoise = denoise


def test_manifest_recommendation_and_cli_defaults(tiny_engines):
    rec = M.open_engine_dir(tiny_engines[0], checksums=False).recommended
    assert rec == {"sampler": "ddim", "steps": C.DDIM_STEPS, "guidance": C.GUIDANCE, "eta": C.ETA,
                   "guidance_interval": None}

    def settings(**flags):
        got = sampling_settings({"sampler": None, "steps": None, "guidance_interval": None, **flags}, custom)
        assert (got["guidance"], got["eta"]) == (custom["guidance"], custom["eta"])
        return {k: got[k] for k in ("sampler", "steps", "guidance_interval")}

    custom = {**rec, "sampler": "dpmpp-2m", "steps": 15, "guidance_interval": [0.3, 20.0]}
    assert settings() == {"sampler": "dpmpp-2m", "steps": 15, "guidance_interval": (0.3, 20.0)}
    assert settings(sampler="ddim") == {"sampler": "ddim", "steps": C.DDIM_STEPS, "guidance_interval": None}
    assert settings(sampler="dpmpp-2m-sde", steps=7)["steps"] == 7
    assert settings(sampler="dpmpp-2m-sde")["steps"] == DEFAULT_STEPS["dpmpp-2m-sde"]
    assert settings(guidance_interval=[1.0, 2.0])["guidance_interval"] == (1.0, 2.0)
    # An older manifest without the keys: the original's settings.
    m = M.read_manifest(tiny_engines[0]).to_json()
    for key in ("sampler", "guidance_interval"):
        m["scheduler"].pop(key, None)
    m["scheduler"] |= {"default_steps": 50, "guidance": 2.5, "eta": 0.0}
    assert M.Manifest.from_json(m).scheduler.recommended == {
        "sampler": "ddim", "steps": 50, "guidance": 2.5, "eta": 0.0, "guidance_interval": None}
    # The typed manifest (and the published schema) refuse an unknown sampler or a malformed interval.
    ok = json.loads(json.dumps(m))
    ok["scheduler"] |= {"sampler": "dpmpp-2m", "guidance_interval": [0.3, 20.0]}
    assert M.Manifest.from_json(ok).scheduler.recommended["guidance_interval"] == (0.3, 20.0)
    for key, value in (("sampler", "euler"), ("guidance_interval", [1.0]), ("guidance_interval", "x"),
                       ("guidance_interval", [2.0, 1.0])):
        bad = json.loads(json.dumps(m))
        bad["scheduler"][key] = value
        with pytest.raises(M.ManifestError) as e:
            M.Manifest.from_json(bad)
        assert "scheduler" in str(e.value) and "\n" not in str(e.value)


def test_cli_sampler_and_interval(tmp_path, tiny_engines, capsys):
    clip = write_video(tmp_path / "clip.mp4", seconds=5.5)
    wav = tmp_path / "out.wav"
    eng = str(tiny_engines[0])
    code = main(["infer", str(clip), "rain", "--engines", eng, "-o", str(wav), "--seed", "0",
                 "--sampler", "dpmpp-2m-sde", "--steps", "2", "--guidance-interval", "0.1", "50"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "dpmpp-2m-sde, 2 steps" in err and wav.is_file()
    code = main(["infer", str(clip), "rain", "--engines", eng, "-o", str(tmp_path / "x.wav"), "--steps", "2",
                 "--guidance-interval", "5", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.strip().startswith("error: guidance interval") and "Traceback" not in err
    assert not (tmp_path / "x.wav").exists()


def test_every_sampler_runs_whole_videos(pipe, tmp_path):
    """Several windows: the DPM samplers take the window-overlap constraint as DDIM does."""
    from rewas_rt.pipeline import VideoRequest, plan_clip

    clip = write_video(tmp_path / "7s.mp4", seconds=7.0, size=(64, 48))
    n = len(plan_clip(VideoRequest("", 0, clip)))
    assert n == 2
    rows, denoise = [], pipe.denoise
    pipe.denoise = lambda x, t, c: rows.append(len(x)) or denoise(x, t, c)
    try:
        for sampler in ("dpmpp-2m", "dpmpp-2m-sde"):
            rows.clear()
            res = pipe.generate_video(VideoRequest("rain", 1, clip, energy=np.full(10, -5.0)),
                                      GenerationOptions(steps=2, sampler=sampler))
            assert res.waveforms.shape == (1, 7 * C.SAMPLE_RATE) and np.isfinite(res.waveforms).all()
            assert rows == [2] * (2 * n)
    finally:
        pipe.denoise = denoise


@pytest.mark.parametrize("mode", ["zeros", "same"])
def test_unconditional_hint_follows_the_manifest(pipe, mode):
    """scheduler.unconditional_hint: "zeros" (the original's) gives the unconditional rows a zero
    hint; "same" gives them the conditional rows' hint (guidance then amplifies the text only)."""
    seen = []
    denoise, scheduler = pipe.denoise, pipe.dir.manifest.scheduler
    old = scheduler.unconditional_hint
    pipe.denoise = lambda x, t, c: seen.append(c["hint"].copy()) or denoise(x, t, c)
    scheduler.unconditional_hint = mode
    try:
        pipe.generate([Request("rain", 3, energy=curve())], GenerationOptions(steps=2))
    finally:
        pipe.denoise, scheduler.unconditional_hint = denoise, old
    hint = seen[0]
    assert len(seen) == 2 and hint.shape[0] == 2 and np.abs(hint[1]).max() > 0  # rows: uncond, cond
    if mode == "zeros":
        assert not hint[0].any()
    else:
        np.testing.assert_array_equal(hint[0], hint[1])


def test_build_engines_records_the_recommendation(tmp_path):
    from export import manifest_sections as S
    from export.build_engines import parse_args

    args = parse_args(["--config", "tiny", "--random-weights", "--sampling", "15", "4", "0.5", "--sampler", "dpmpp-2m",
                       "--guidance-interval", "0.3", "20", "--unconditional-hint", "same", "--out", str(tmp_path)])
    for words in ("--sampler dpmpp-2m", "--guidance-interval 0.3 20.0", "--unconditional-hint same", "--sampling 15 4 0.5"):
        assert words in args.command_line
    s = S.scheduler_section(*args.sampling_defaults, sampler=args.sampler, guidance_interval=args.guidance_interval,
                            unconditional_hint=args.unconditional_hint)
    assert s.recommended == {"sampler": "dpmpp-2m", "steps": 15, "guidance": 4.0, "eta": 0.5,
                             "guidance_interval": (0.3, 20.0)}
    assert s.unconditional_hint == "same"
    with pytest.raises(SystemExit):
        parse_args(["--config", "tiny", "--random-weights", "--guidance-interval", "2", "1", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="unconditional_hint"):
        S.scheduler_section(unconditional_hint="half")
