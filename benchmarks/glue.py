"""Time a request spends outside the graphs ("glue"): ``Pipeline.generate`` end to end minus
the graph calls, on any engine directory (the glue does not depend on the weights or the
model size: the video array is (B, 14, 3, 16, 224, 224) float32 = 134 MB per clip in every
model, so a tiny engine directory measures it with little graph time around it).

    python benchmarks/glue.py --engines /tmp/tiny --repeats 7 --steps 5

Reports the medians of: end to end, the graph calls (``Pipeline.timings``), the glue
(end to end − graphs) and, within it, the video preparation (``Pipeline.predict_energy``
minus its graph calls). Run it before and after a change in one session to compare.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from rewas_rt import constants as C
from rewas_rt.errors import cli_main


def measure(engines: Path, repeats: int, steps: int, sampler: str, batch: int, threads: int | None) -> dict:
    from rewas_rt.graphs import GRAPHS
    from rewas_rt.pipeline import GenerationOptions, Pipeline, Request

    pipe = Pipeline(engines, backend="onnxruntime-cpu", threads=threads, checksums=False)
    for g in GRAPHS:
        pipe.engine(g)
    pipe.unconditional_embedding()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (C.FRAMES, C.CROP, C.CROP, 3), dtype=np.uint8) for _ in range(batch)]
    opts = GenerationOptions(steps=steps, sampler=sampler)
    predict = pipe.predict_energy
    video_prep: list[float] = []

    def timed_predict(f):
        before = dict(pipe.timings)
        t0 = time.perf_counter()
        out = predict(f)
        graphs = sum(pipe.timings.get(k, 0.0) - before.get(k, 0.0) for k in ("synchformer", "phi"))
        video_prep.append(time.perf_counter() - t0 - graphs)
        return out

    pipe.predict_energy = timed_predict
    rows = []
    for r in range(repeats + 1):  # the first is a warm-up
        pipe.timings.clear()
        video_prep.clear()
        reqs = [Request("rain on a roof", i, frames=f) for i, f in enumerate(frames)]
        t0 = time.perf_counter()
        pipe.generate(reqs, opts)
        e2e = time.perf_counter() - t0
        graphs = sum(v for k, v in pipe.timings.items() if not k.startswith("load "))
        if r:
            rows.append({"e2e": e2e, "graphs": graphs, "glue": e2e - graphs, "video_prep": sum(video_prep)})
    med = {k: statistics.median(x[k] for x in rows) for k in rows[0]}
    return {"median": med, "runs": rows, "steps": steps, "sampler": sampler, "batch": batch, "repeats": repeats}


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="glue.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--batch", type=int, default=1, help="requests per generate call")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    res = measure(args.engines, args.repeats, args.steps, args.sampler, args.batch, args.threads)
    m = res["median"]
    print(f"median of {args.repeats} (batch {args.batch}, {args.sampler} {args.steps} steps): end to end "
          f"{m['e2e'] * 1e3:.0f} ms, graphs {m['graphs'] * 1e3:.0f} ms, glue {m['glue'] * 1e3:.0f} ms "
          f"(video preparation {m['video_prep'] * 1e3:.0f} ms)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
