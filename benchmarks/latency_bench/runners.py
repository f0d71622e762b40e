"""One backend's request, timed through the pipelines' own ``timing_hook``.

``OrtRunner`` runs ``rewas_rt.pipeline.Pipeline.generate`` as users do (ONNX Runtime or
TensorRT backends); ``EagerRunner`` runs ``training.pipeline.TorchPipeline.generate``, the
reference-style PyTorch loop (two model calls per step for classifier-free guidance). Both
pipelines report every stage call to the hook; the runner keeps each ``unet_adapter`` call's
(start, end) for the per-step statistics and sums the rest per stage.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.latency_bench import EAGER, PROMPTS

# Stages the pipelines time that are reported as table rows (the rest is derived).
REPORTED = ("video", "synchformer", "phi", "energy_post", "vae_encoder", "clap_text", "vae_decoder", "vocoder")


def actual_steps(steps: int) -> int:
    """The DDIM step count a requested count gives (S not dividing 1000 gives another count)."""
    from rewas_rt.ddim import make_schedule

    return make_schedule(steps, 1.0).steps


def sampler_for(spec: dict, steps: int) -> str:
    """The runtime's sampler at a step count: ``--sampler`` except at the original's 200 steps (always DDIM)."""
    from rewas_rt import constants as C

    return "ddim" if steps == C.DDIM_STEPS else spec.get("sampler", "ddim")


def step_stats(calls: list[tuple[float, float]], per_step: int, steps: int) -> dict[str, Any]:
    """Denoiser calls (start, end) -> per-step unet seconds and sampler-step walls (within each DDIM loop)."""
    if len(calls) % (per_step * steps):
        raise RuntimeError(f"recorded {len(calls)} denoiser calls, expected a multiple of {per_step}×{steps}")
    steps_rec = [calls[i:i + per_step] for i in range(0, len(calls), per_step)]
    unet = [sum(e - s for s, e in grp) for grp in steps_rec]
    walls = []
    for loop in range(len(steps_rec) // steps):
        starts = [grp[0][0] for grp in steps_rec[loop * steps:(loop + 1) * steps]]
        walls += [b - a for a, b in zip(starts, starts[1:])]
    return {"unet_steps": unet, "step_walls": walls, "loops": len(steps_rec) // steps}


class _Recorder:
    """The timing hook: per-stage sums, and the unet_adapter calls one by one."""

    def __init__(self):
        self.stages: dict[str, float] = {}
        self.unet_calls: list[tuple[float, float]] = []

    def clear(self) -> None:
        self.stages, self.unet_calls = {}, []

    def __call__(self, stage: str, start: float, end: float) -> None:
        if stage == "unet_adapter":
            self.unet_calls.append((start, end))
        self.stages[stage] = self.stages.get(stage, 0.0) + end - start

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds


def _load_frames(path: str, batch: int, rec: _Recorder) -> list[np.ndarray]:
    from rewas_rt.video import load_video

    t0 = time.perf_counter()
    frames = [load_video(path).frames for _ in range(batch)]
    rec.add("video", time.perf_counter() - t0)
    return frames


class OrtRunner:
    calls_per_step = 1  # both CFG branches in one engine call

    def __init__(self, spec: dict, name: str):
        from rewas_rt.graphs import GRAPHS
        from rewas_rt.pipeline import Pipeline

        self.rec = _Recorder()
        self.pipe = Pipeline(spec["engines"], backend=name, threads=spec["threads"], checksums=spec["checksums"],
                             timing_hook=self.rec)
        for g in GRAPHS:  # open every session now: load time is reported apart from the request
            self.pipe.engine(g)
        self.pipe.unconditional_embedding()  # computed once per process by the runtime
        engine = self.pipe.engine("unet_adapter")
        self.backend_info = {"backend": self.pipe.backend.name, "threads": spec["threads"],
                             "engine": dict(engine.metadata) if hasattr(engine, "metadata") else None}

    def run(self, spec: dict, steps: int) -> dict:
        from rewas_rt.pipeline import GenerationOptions, Request

        self.rec.clear()
        t0 = time.perf_counter()
        frames = _load_frames(spec["video"], spec["batch"], self.rec)
        requests = [Request(PROMPTS[i % len(PROMPTS)], seed=i, frames=f) for i, f in enumerate(frames)]
        opts = GenerationOptions(steps=steps, candidates=spec["candidates"], sampler=sampler_for(spec, steps))
        results = self.pipe.generate(requests, opts)
        e2e = time.perf_counter() - t0
        if not all(np.isfinite(r.waveforms).all() for r in results):
            raise RuntimeError("non-finite waveform")
        stages = {k: self.rec.stages.get(k, 0.0) for k in REPORTED}
        return {"stages": stages, "unet_total": self.rec.stages.get("unet_adapter", 0.0), "e2e": e2e,
                **step_stats(self.rec.unet_calls, self.calls_per_step, actual_steps(steps))}


class EagerRunner:
    calls_per_step = 2  # the reference loop calls the model once per CFG branch

    def __init__(self, spec: dict):
        import torch

        from export.export_onnx import ModelSource
        from rewas_rt.manifest import open_engine_dir
        from rewas_rt.tokenizer import PromptTokenizer
        from training.pipeline import COMPONENT_NAMES, TorchPipeline

        torch.set_num_threads(spec["threads"])
        if spec.get("checkpoints"):
            src = ModelSource.from_checkpoints(spec["checkpoints"])
        else:
            src = ModelSource.from_preset(spec["preset"], seed=spec["seed"])
        self.rec = _Recorder()
        self.tp = TorchPipeline({c: src.component(c) for c in COMPONENT_NAMES}, timing_hook=self.rec)
        d = open_engine_dir(spec["engines"], backend="onnx", checksums=False)
        self.tokenizer = PromptTokenizer(d.tokenizer_path)
        self.uncond_ids = np.asarray([d.unconditional_ids], dtype=np.int64)
        self.backend_info = {"backend": EAGER, "torch": torch.__version__, "threads": torch.get_num_threads(),
                             "device": "cpu", "precision": "fp32"}

    def run(self, spec: dict, steps: int) -> dict:
        from rewas_rt import constants as C
        from rewas_rt.ddim import make_schedule
        from rewas_rt.video import normalize, segments
        from training.pipeline import Noise

        schedule = make_schedule(steps, 1.0)
        n = spec["batch"] * spec["candidates"]
        rng = np.random.default_rng(0)  # drawn before the clock starts (the runtime draws inside generate)
        noise = Noise(rng.standard_normal((n, *C.LATENT_SHAPE), dtype=np.float32),
                      rng.standard_normal((n, *C.LATENT_SHAPE), dtype=np.float32),
                      rng.standard_normal((schedule.steps, n, *C.LATENT_SHAPE), dtype=np.float32))
        self.rec.clear()
        t0 = time.perf_counter()
        frames = _load_frames(spec["video"], spec["batch"], self.rec)
        t_seg = time.perf_counter()
        segs = np.repeat(np.concatenate([normalize(segments(f)) for f in frames]), spec["candidates"], axis=0)
        self.rec.add("video", time.perf_counter() - t_seg)
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(spec["batch"]) for _ in range(spec["candidates"])]
        ids, mask = self.tokenizer.batch(prompts)
        out = self.tp.generate(segs, ids, mask, self.uncond_ids, schedule, 3.0, noise)
        e2e = time.perf_counter() - t0
        if not np.isfinite(out["waveform"]).all():
            raise RuntimeError("non-finite waveform")
        stats = step_stats(self.rec.unet_calls, self.calls_per_step, schedule.steps)
        stages = {k: self.rec.stages.get(k, 0.0) for k in REPORTED}
        return {"stages": stages, "unet_total": sum(stats["unet_steps"]),
                "sampler_total": self.rec.stages.get("sampler", 0.0), "e2e": e2e, **stats}


def make_runner(spec: dict, name: str):
    return EagerRunner(spec) if name == EAGER else OrtRunner(spec, name)
