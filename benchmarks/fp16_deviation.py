"""The whole pipeline on the FP16 graphs vs the FP32 graphs, in ONNX Runtime on the CPU.

Each graph's FP16 variant is checked alone at build time (``export/fp16_graph.py``); here
the errors meet and compound: the energy curve (Synchformer -> phi, smoothed) and the
waveform after DDIM's steps, each step feeding the UNet its own FP16-rounded result. Same
requests, seeds and noise on both sides, so every difference comes from FP16::

    python benchmarks/fp16_deviation.py ENGINE_DIR --steps 2 10 25 --requests 2 --json out.json

Reported per step count: energy max |Δ| and max |Δ| / max |FP32| (the curve is shared by all
step counts), waveform max |Δ|, relative L2 ‖Δ‖ / ‖FP32‖, and the energy MAE between the
two waveforms (``benchmarks.quality.energy_mae``, nats: 0 means identical loudness curves).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def _frames(seed: int) -> np.ndarray:
    from rewas_rt import constants as C

    return np.random.default_rng(seed).integers(0, 256, (C.FRAMES, C.CROP, C.CROP, 3), dtype=np.uint8)


PROMPTS = ("rain on a tin roof", "a dog barking", "an engine starting", "footsteps on gravel")


def measure(engine_dir: str | Path, steps: Sequence[int] = (2, 10), requests: int = 1, threads: int | None = None,
            seed: int = 0) -> dict[str, Any]:
    from benchmarks.quality import energy_mae
    from rewas_rt.backends.onnxruntime import OnnxRuntimeBackend
    from rewas_rt.pipeline import GenerationOptions, Pipeline, Request

    pipes = {p: Pipeline(engine_dir, backend=OnnxRuntimeBackend("cpu", threads=threads, precision=p))
             for p in ("fp32", "fp16")}
    reqs = [Request(PROMPTS[i % len(PROMPTS)], seed + i, frames=_frames(seed + i)) for i in range(requests)]
    energy = {p: pipe.predict_energy([r.frames for r in reqs]) for p, pipe in pipes.items()}
    d_energy = np.abs(energy["fp16"] - energy["fp32"])
    out: dict[str, Any] = {
        "engine_dir": str(engine_dir), "requests": requests,
        "precisions": {p: sorted({e.metadata["precision"] for e in pipe._engines.values()}) for p, pipe in pipes.items()},
        "energy": {"max_abs": float(d_energy.max()), "rel": float(d_energy.max() / np.abs(energy["fp32"]).max())},
        "steps": {},
    }
    for n in steps:
        waves, seconds = {}, {}
        for p, pipe in pipes.items():
            t0 = time.perf_counter()
            waves[p] = np.stack([r.waveforms[0] for r in pipe.generate(reqs, GenerationOptions(steps=n))])
            seconds[p] = time.perf_counter() - t0
        ref, got = waves["fp32"].astype(np.float64), waves["fp16"].astype(np.float64)
        out["steps"][str(n)] = {
            "wave_max_abs": float(np.abs(got - ref).max()),
            "wave_rel_l2": float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30)),
            "energy_mae_between_waves": float(np.mean([energy_mae(g, r) for g, r in zip(got, ref)])),
            "finite": bool(np.isfinite(got).all()),
            "seconds": {p: round(s, 2) for p, s in seconds.items()},
        }
    return out


from rewas_rt.errors import cli_main  # noqa: E402


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fp16_deviation.py", description=__doc__.splitlines()[0])
    p.add_argument("engine_dir", type=Path)
    p.add_argument("--steps", type=int, nargs="+", default=[2, 10])
    p.add_argument("--requests", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from rewas_rt.errors import RewasError

    try:
        res = measure(args.engine_dir, args.steps, args.requests, args.threads, args.seed)
    except RewasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"engine directory {res['engine_dir']}: graphs run as {res['precisions']}")
    print(f"energy curve: max |d| {res['energy']['max_abs']:.3e}, rel {res['energy']['rel']:.2e}")
    print("steps  wave max|d|  wave rel L2  energy MAE (nats)  fp32 s  fp16 s")
    for n, r in res["steps"].items():
        print(f"{n:>5}  {r['wave_max_abs']:10.3e}  {r['wave_rel_l2']:11.3e}  {r['energy_mae_between_waves']:17.4f}"
              f"  {r['seconds']['fp32']:6.1f}  {r['seconds']['fp16']:6.1f}" + ("" if r["finite"] else "  NON-FINITE"))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0 if all(r["finite"] for r in res["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
