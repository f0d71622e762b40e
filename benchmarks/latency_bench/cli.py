"""Per-stage and end-to-end latency of one ReWaS request, every available backend side by side.

    python benchmarks/latency.py                          # rewas-m random weights, 200 and 25 steps (5 measured)
    python benchmarks/latency.py --steps 200 25 --measure-steps 0 --repeats 3 --out runs/bench   # every step run
    python benchmarks/latency.py --engines engines/rewas-m --checkpoints checkpoints/
    python benchmarks/latency.py --quick --engines /tmp/tiny   # CI smoke run: tiny model, 2 steps, 1 repeat

Backends, each in its own subprocess (so its peak memory is its own): ``pytorch-eager``
(``training.pipeline.TorchPipeline``: the reference-style loop, two separate model calls per
step for classifier-free guidance, float32 on the CPU), ``onnxruntime-cpu``, and, when
``rewas_rt.backends.backend_status()`` says they work here, ``onnxruntime-cuda``,
``onnxruntime-tensorrt`` and native ``tensorrt`` (the last needs ``.plan`` engines in the
engine directory). A backend that cannot run is listed with the reason.

One request = decode a 5 s clip (PyAV, ``rewas_rt.video``) → synchformer → phi → energy
post-processing → hint latent (vae_encoder) → CLAP text (prompt and "") → DDIM with CFG
(unet_adapter per step) → vae_decoder → vocoder. ``--batch`` requests of ``--candidates``
candidates each. The ONNX Runtime/TensorRT columns run ``rewas_rt.pipeline.Pipeline.generate``
as users do; the stage times are its own ``Timings`` plus the NumPy steps around them.

All workers are loaded first (one after another), then their requests are interleaved: request k
of every backend in turn, the order reversed every other round, so that load from other processes,
which changes by the minute on a shared machine, falls on every backend alike (``--sequential``:
one backend after another, for hosts without the memory to hold them all).
Each (backend, step count) runs ``--warmup`` untimed requests, then ``--repeats`` timed ones;
the table gives the median and [min–max]. With ``--measure-steps K`` (default 5; 0 = run every step;
``--quick`` runs every step) smaller than a requested
step count S, the DDIM loop runs only K steps and the S-step totals are *extrapolated*:
total(S) = measured total(K) + (S − K) × the median wall time of one sampler step, per repeat
(labelled "extrapolated" in the table and the JSON). Latency does not depend on weight values,
so random weights of the full-size config give the real numbers.

Peak memory: the worker's RSS high-water mark (``VmHWM`` of ``/proc/self/status``), read
after loading (models / sessions), then reset (``/proc/self/clear_refs`` = 5) and read again
after the timed runs: "load" and "generation" peaks of that backend alone. Host RSS only: GPU
memory is not measured.

Without ``--engines`` an engine directory is built (``export/build_engines.py --random-weights``)
into ``~/.cache/rewas-rt/bench/`` and reused; for the full-size config that takes ~10–15 min
on 2 CPU cores (export + parity check of every graph; the FP16 analysis is skipped unless
TensorRT is present).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.latency_bench import BACKENDS, EAGER
from benchmarks.latency_bench.protocol import ROOT, measure, worker
from benchmarks.latency_bench.report import markdown
from benchmarks.latency_bench.stats import ratios, summarise_backend
from rewas_rt.atomic import atomic_write_text
from rewas_rt.errors import cli_main

BUILD_SCRIPT = ROOT / "export" / "build_engines.py"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rewas-rt" / "bench"


def ensure_clip(path: Path) -> Path:
    """A 5.2 s 640×360 30 fps H.264 clip with moving textured shapes (the decode stage needs a real file)."""
    if path.is_file():
        return path
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h, fps = 640, 360, 30
    bg = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    tmp = path.with_name(path.name + ".tmp.mp4")
    with av.open(str(tmp), "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"preset": "veryfast"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(round(5.2 * fps)):
            img = np.roll(bg, i * 3, axis=1).copy()
            x = int((w - 80) * (0.5 + 0.5 * math.sin(i / 9)))
            img[140:220, x:x + 80] = (255, 64 * (i % 4), 32)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    tmp.replace(path)
    return path


def ensure_engines(args) -> Path:
    if args.engines:
        return args.engines
    if args.checkpoints and not args.tokenizer:
        sys.exit("error: with --checkpoints give --engines DIR (built from them) or --tokenizer DIR to build one")
    from rewas_rt.manifest import detect_tensorrt
    from training.models import presets

    name = f"engines-{args.checkpoints.resolve().name}" if args.checkpoints else f"engines-{args.config}-seed{args.seed}"
    out = cache_dir() / name
    if (out / "manifest.json").is_file():
        return out
    cmd = [sys.executable, str(BUILD_SCRIPT), "--out", str(out)]
    if args.checkpoints:
        cmd += ["--checkpoints", str(args.checkpoints), "--tokenizer", str(args.tokenizer)]
    else:
        cmd += ["--config", args.config, "--random-weights", "--seed", str(args.seed)]
        tok = args.tokenizer
        if tok is None and presets.preset(args.config)["clap_text"].vocab_size > presets.TINY_VOCAB_SIZE:
            # The built-in tokenizer cannot grow to RoBERTa's 50k tokens; a smaller vocabulary feeds the
            # same graph (token ids < vocab size), and prompt lengths stay similar.
            from training import tokenizer as T

            tok = cache_dir() / "tokenizer-tiny"
            tok.mkdir(parents=True, exist_ok=True)
            (tok / "tokenizer.json").write_text(T.to_json(T.train_tiny(presets.TINY_VOCAB_SIZE)))
        if tok is not None:
            cmd += ["--tokenizer", str(tok)]
    from rewas_rt.backends import backend_status

    gpu = any(ok for name, (ok, _) in backend_status().items() if name != "onnxruntime-cpu")
    if detect_tensorrt() is None and not gpu:
        cmd.append("--no-fp16-check")  # FP16 check + FP16 graphs: only the GPU backends run them
    print(f"building the engine directory (full size: ~10–15 min on 2 cores): {shlex.join(cmd)}", file=sys.stderr,
          flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=worker_env(args))  # the PyTorch parity checks suffer the same
    if proc.returncode != 0:
        sys.exit(f"error: build_engines.py failed (exit {proc.returncode})")
    return out


def worker_env(args) -> dict[str, str]:
    """The workers' environment. OMP_WAIT_POLICY: libgomp's default busy-wait makes PyTorch's OpenMP threads
    20–40× slower when the cores are shared with other processes (measured on this 2-core machine: a tiny UNet
    step 6 s instead of 0.3 s); PASSIVE removes that and costs little on an idle machine. ONNX Runtime uses its
    own thread pool, not OpenMP."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if args.omp_wait_policy != "default":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    return env


def host_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def availability(names: list[str], engines: Path) -> dict[str, tuple[bool, str]]:
    from rewas_rt.backends import backend_status
    from rewas_rt.manifest import open_engine_dir

    status = backend_status()
    out = {}
    for n in names:
        if n == EAGER:
            try:
                import torch  # noqa: F401

                out[n] = (True, "torch importable")
            except ImportError as e:
                out[n] = (False, f"torch is not installed ({e}); pip install 'rewas-rt[train]'")
            continue
        ok, why = status.get(n, (False, "unknown backend"))
        if ok and n == "tensorrt" and not open_engine_dir(engines, backend="onnx", checksums=False).has_engines:
            ok, why = False, "the engine directory has no TensorRT .plan engines (build it on the GPU machine)"
        out[n] = (ok, why)
    return out


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="latency.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", type=Path, help="engine directory (default: build/reuse one in ~/.cache/rewas-rt/bench)")
    p.add_argument("--checkpoints", type=Path, help="canonical checkpoint folder: real weights for PyTorch eager "
                                                    "(and for the engine build without --engines)")
    p.add_argument("--tokenizer", type=Path, help="RoBERTa tokenizer folder, to build engines from --checkpoints")
    p.add_argument("--config", default=None, help="preset for random weights when building engines (default rewas-m)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights when building engines")
    p.add_argument("--steps", type=int, nargs="+", default=None, help="DDIM step counts to report (default: 200 25)")
    p.add_argument("--sampler", default="ddim", choices=("ddim", "dpmpp-2m", "dpmpp-2m-sde"),
                   help="the runtime's sampler at every step count but 200 (the original's DDIM 200 stays the "
                        "reference row); e.g. --sampler dpmpp-2m --steps 200 20. One UNet call per step either way")
    p.add_argument("--measure-steps", type=int, default=None,
                   help="run only this many DDIM steps and extrapolate larger step counts (default 5, "
                        "--quick: 0); 0 = run every step count in full")
    p.add_argument("--batch", type=int, default=1, help="requests per generate call (default 1)")
    p.add_argument("--candidates", type=int, default=1, help="candidates per request (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed requests per backend (default 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed requests first (default 1; --quick: 0)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for every backend (default: cores)")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS), help="backends to try")
    p.add_argument("--video", type=Path, help="the input clip (default: a synthetic 640×360 30 fps H.264 clip)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="where latency.json and latency.md go")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds a backend may take to load or to answer one request (default: no limit)")
    p.add_argument("--sequential", action="store_true",
                   help="one backend after another instead of interleaving their requests (less memory at once)")
    p.add_argument("--checksums", action="store_true", help="hash every engine file when opening (as `rewas-rt infer` "
                                                            "does by default); counts in load time only")
    p.add_argument("--omp-wait-policy", choices=("passive", "active", "default"), default="passive",
                   help="OMP_WAIT_POLICY of the workers (PyTorch's OpenMP threads; default passive, see README)")
    p.add_argument("--quick", action="store_true", help="CI smoke run: tiny config, 2 steps, 1 repeat")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.config = args.config or "tiny"
        args.steps = args.steps or [2]
        args.repeats = args.repeats or 1
        args.warmup = 0 if args.warmup is None else args.warmup
    args.config = args.config or "rewas-m"
    args.steps = args.steps or [200, 25]
    args.repeats = args.repeats or 3
    args.warmup = 1 if args.warmup is None else args.warmup
    if args.measure_steps is None:
        args.measure_steps = 0 if args.quick else 5
    if any(s < 1 for s in args.steps) or args.measure_steps < 0:
        p.error("step counts must be >= 1 (--measure-steps >= 0)")
    args.measure_steps = args.measure_steps or None  # None: every step count is run in full
    if args.batch < 1 or args.candidates < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--batch, --candidates, --repeats must be >= 1 and --warmup >= 0")
    if args.engines is not None and not (args.engines / "manifest.json").is_file():
        p.error(f"--engines {args.engines}: no manifest.json there")
    if args.checkpoints is not None and not args.checkpoints.is_dir():
        p.error(f"--checkpoints {args.checkpoints}: no such folder")
    if args.video is not None and not args.video.is_file():
        p.error(f"--video {args.video}: not found")
    return args


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args.spec, args.worker)

    from rewas_rt.backends.onnxruntime import physical_cores
    from rewas_rt.manifest import read_manifest

    engines = ensure_engines(args).resolve()
    manifest = read_manifest(engines)
    model = manifest.model
    checkpoints = args.checkpoints or (Path(model.checkpoints) if model.weights == "checkpoints" else None)
    args.out.mkdir(parents=True, exist_ok=True)
    video = args.video or ensure_clip(args.out / "bench_clip.mp4")
    threads = args.threads or physical_cores()
    targets = sorted(set(args.steps), reverse=True)
    ms = args.measure_steps
    plan_steps = sorted({s for s in targets if ms is None or s <= ms} |
                        ({ms} if ms is not None and any(s > ms for s in targets) else set()), reverse=True)
    spec = {
        "engines": str(engines), "video": str(video.resolve()), "batch": args.batch, "candidates": args.candidates,
        "threads": threads, "warmup": args.warmup, "repeats": args.repeats, "plan_steps": plan_steps,
        "checksums": args.checksums, "preset": model.name, "seed": model.seed or 0,
        "checkpoints": str(checkpoints) if checkpoints else None, "sampler": args.sampler,
    }
    weights = f"checkpoints {checkpoints}" if checkpoints else f"random weights, seed {spec['seed']}"
    meta = {
        "model": model.name, "weights": weights, "engines": str(engines), "steps": targets,
        "measure_steps": ms, "plan_steps": plan_steps, "sampler": args.sampler, "batch": args.batch, "candidates": args.candidates,
        "repeats": args.repeats, "warmup": args.warmup, "threads": threads, "video": spec["video"],
        "host": {**host_info(), "load_before": _load()},
        "versions": _versions(),
        "omp_wait_policy": args.omp_wait_policy,
        "schedule": "sequential" if args.sequential else "interleaved",
        "memory": "VmHWM of /proc/self/status per backend worker process; reset via /proc/self/clear_refs after load",
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": shlex.join(["python", "benchmarks/latency.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    avail = availability(args.backends, engines)
    backends: dict[str, dict] = {}
    for name in args.backends:
        ok, why = avail[name]
        if not ok:
            backends[name] = {"status": "skipped", "reason": why}
            print(f"{name}: skipped ({why})", file=sys.stderr, flush=True)
    runnable = [n for n in args.backends if avail[n][0]]
    with tempfile.TemporaryDirectory(prefix="rewas-latency-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        measured = measure(runnable, spec, spec_path, worker_env(args), args.timeout, args.sequential)
    for name, raw in measured.items():
        if raw["status"] == "ok":
            raw["summary"] = summarise_backend(raw, targets, ms)
        backends[name] = raw
    backends = {n: backends[n] for n in args.backends}  # table columns in the order asked for
    meta["host"]["load_after"] = _load()
    summaries = {n: b["summary"] for n, b in backends.items() if b["status"] == "ok"}
    report = {"meta": meta, "backends": backends, "ratios": ratios(summaries, targets)}
    atomic_write_text(args.out / "latency.json", json.dumps(report, indent=1) + "\n")
    md = markdown(report)
    atomic_write_text(args.out / "latency.md", md)
    print(md)
    print(f"wrote {args.out / 'latency.json'} and {args.out / 'latency.md'}", file=sys.stderr)
    return 0 if any(b["status"] == "ok" for b in backends.values()) else 1


def _versions() -> dict:
    out = {"numpy": np.__version__}
    for mod in ("onnxruntime", "torch", "av"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out
