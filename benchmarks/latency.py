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
import contextlib
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from rewas_rt.atomic import atomic_write_text
from rewas_rt.errors import cli_main

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / "export" / "build_engines.py"
EAGER = "pytorch-eager"
BACKENDS = (EAGER, "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")
PROMPTS = ("a dog barking while a car passes by", "rain falling on a tin roof", "a crowd cheering in a stadium",
           "waves crashing on rocks", "a train horn blowing", "birds chirping in a forest", "a man hammering a nail",
           "a helicopter flying overhead")

# Rows of the table: key, label. Per-request stages first, in pipeline order.
STAGES = (
    ("video", "video decode + segment"),
    ("synchformer", "synchformer"),
    ("phi", "phi"),
    ("energy_post", "energy post-process"),
    ("vae_encoder", "vae_encoder (hint latent)"),
    ("clap_text", "clap_text"),
    ("unet_step", "unet_adapter, one step (both CFG branches)"),
    ("sampler_step", "sampler step wall (unet + CFG + DDIM update)"),
    ("vae_decoder", "vae_decoder"),
    ("vocoder", "vocoder"),
    ("other", "other (tokenize, noise, glue)"),
)


# --------------------------------------------------------------------------- memory (/proc)


def _proc_status_kb(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


# --------------------------------------------------------------------------- timing helpers


class Clock:
    """Accumulates seconds per stage name."""

    def __init__(self, into: dict[str, float]):
        self.t = into

    @contextlib.contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0


def _step_stats(calls: list[tuple[float, float]], per_step: int, steps: int) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- worker: one backend


def _video_frames(path: str, batch: int, clock: Clock):
    from rewas_rt.video import load_video

    with clock.stage("video"):
        return [load_video(path).frames for _ in range(batch)]


class _OrtRunner:
    calls_per_step = 1

    def __init__(self, spec: dict, name: str):
        import rewas_rt.pipeline as P
        from rewas_rt.graphs import GRAPHS

        self.P = P
        self.pipe = P.Pipeline(spec["engines"], backend=name, threads=spec["threads"], checksums=spec["checksums"])
        for g in GRAPHS:  # open every session now: load time is reported apart from the request
            self.pipe.engine(g)
        self.pipe.unconditional_embedding()  # computed once per process by the runtime
        self.calls: list[tuple[float, float]] = []
        self.times: dict[str, float] = {}
        denoise = self.pipe.denoise

        def timed_denoise(x, t, cond):
            s = time.perf_counter()
            out = denoise(x, t, cond)
            self.calls.append((s, time.perf_counter()))
            return out

        self.pipe.denoise = timed_denoise
        # The NumPy stages inside Pipeline.predict_energy, timed where the pipeline looks them up.
        for fn, stage in (("normalize", "video"), ("segments", "video"), ("energy_from_phi", "energy_post")):
            setattr(P, fn, self._timed(getattr(P, fn), stage))
        self.backend_info = {"backend": self.pipe.backend.name, "threads": spec["threads"],
                             "engine": dict(self.pipe.engine("unet_adapter").metadata)
                             if hasattr(self.pipe.engine("unet_adapter"), "metadata") else None}

    def _timed(self, fn, stage):
        def wrapper(*a, **k):
            with Clock(self.times).stage(stage):
                return fn(*a, **k)
        return wrapper

    def run(self, spec: dict, steps: int) -> dict:
        P = self.P
        self.calls.clear()
        self.times = {}
        self.pipe.timings.clear()
        clock = Clock(self.times)
        t0 = time.perf_counter()
        frames = _video_frames(spec["video"], spec["batch"], clock)
        requests = [P.Request(PROMPTS[i % len(PROMPTS)], seed=i, frames=f) for i, f in enumerate(frames)]
        results = self.pipe.generate(requests, P.GenerationOptions(steps=steps, candidates=spec["candidates"]))
        e2e = time.perf_counter() - t0
        if not all(np.isfinite(r.waveforms).all() for r in results):
            raise RuntimeError("non-finite waveform")
        t = self.pipe.timings
        stages = {**self.times, **{k: t.get(k, 0.0) for k in ("synchformer", "phi", "vae_encoder", "clap_text",
                                                              "vae_decoder", "vocoder")}}
        return {"stages": stages, "unet_total": t.get("unet_adapter", 0.0), "e2e": e2e,
                **_step_stats(self.calls, self.calls_per_step, _actual_steps(steps))}


class _EagerRunner:
    calls_per_step = 2  # the reference loop calls the model once per CFG branch

    def __init__(self, spec: dict):
        import torch

        from export.export_onnx import ModelSource
        from rewas_rt.manifest import open_engine_dir
        from rewas_rt.tokenizer import PromptTokenizer
        from training.pipeline import COMPONENT_NAMES, TorchPipeline

        torch.set_num_threads(spec["threads"])
        self.torch = torch
        if spec.get("checkpoints"):
            src = ModelSource.from_checkpoints(spec["checkpoints"])
        else:
            src = ModelSource.from_preset(spec["preset"], seed=spec["seed"])
        self.tp = TorchPipeline({c: src.component(c) for c in COMPONENT_NAMES})
        d = open_engine_dir(spec["engines"], backend="onnx", checksums=False)
        self.tokenizer = PromptTokenizer(d.tokenizer_path)
        self.uncond_ids = np.asarray([d.unconditional_ids], dtype=np.int64)
        self.calls: list[tuple[float, float]] = []
        inner = self.tp.denoiser

        def timed_denoiser(x, t, film, hint):
            s = time.perf_counter()
            out = inner(x, t, film, hint)
            self.calls.append((s, time.perf_counter()))
            return out

        self.tp.denoiser = timed_denoiser
        self.backend_info = {"backend": EAGER, "torch": torch.__version__, "threads": torch.get_num_threads(),
                             "device": "cpu", "precision": "fp32"}

    def run(self, spec: dict, steps: int) -> dict:
        from rewas_rt import constants as C
        from rewas_rt.ddim import make_schedule
        from rewas_rt.energy import energy_from_phi
        from rewas_rt.video import normalize, segments
        from training.pipeline import Noise

        torch, tp, m = self.torch, self.tp, self.tp.m
        schedule = make_schedule(steps, 1.0)
        n = spec["batch"] * spec["candidates"]
        rng = np.random.default_rng(0)  # drawn before the clock starts (the runtime draws inside generate)
        noise = Noise(rng.standard_normal((n, *C.LATENT_SHAPE), dtype=np.float32),
                      rng.standard_normal((n, *C.LATENT_SHAPE), dtype=np.float32),
                      rng.standard_normal((schedule.steps, n, *C.LATENT_SHAPE), dtype=np.float32))
        self.calls.clear()
        times: dict[str, float] = {}
        clock = Clock(times)
        t0 = time.perf_counter()
        frames = _video_frames(spec["video"], spec["batch"], clock)
        with clock.stage("video"):
            segs = np.repeat(np.concatenate([normalize(segments(f)) for f in frames]), spec["candidates"], axis=0)
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(spec["batch"]) for _ in range(spec["candidates"])]
        ids, mask = self.tokenizer.batch(prompts)
        with torch.no_grad():
            with clock.stage("synchformer"):
                feats = m["synchformer"](torch.from_numpy(segs))
            with clock.stage("phi"):
                phi_out = m["phi"](feats.reshape(feats.shape[0], -1, feats.shape[-1]))
            with clock.stage("energy_post"):
                energy = energy_from_phi(phi_out.squeeze(-1).numpy())
            with clock.stage("vae_encoder"):
                hint = tp.hint_latent(energy, noise.hint)
            with clock.stage("clap_text"):
                film = tp.text_embedding(ids, mask)
                uncond = tp.text_embedding(self.uncond_ids, np.ones_like(self.uncond_ids)).expand(n, -1)
            t_s = time.perf_counter()
            latent = tp.sample(film, uncond, hint, schedule, 3.0, noise)
            sampler = time.perf_counter() - t_s
            with clock.stage("vae_decoder"):
                mel = tp.vae.decode(latent)
            with clock.stage("vocoder"):
                wave = m["vocoder"](mel.squeeze(1).transpose(1, 2))[:, 0, : C.WAVE_SAMPLES].numpy()
        e2e = time.perf_counter() - t0
        if not np.isfinite(wave).all():
            raise RuntimeError("non-finite waveform")
        stats = _step_stats(self.calls, self.calls_per_step, schedule.steps)
        return {"stages": times, "unet_total": sum(stats["unet_steps"]), "sampler_total": sampler, "e2e": e2e, **stats}


def _actual_steps(steps: int) -> int:
    from rewas_rt.ddim import make_schedule

    return make_schedule(steps, 1.0).steps


MARK = "@@rewas-bench "  # protocol lines on the worker's stdout start with this; anything else is passed through


def _send(msg: dict) -> None:
    sys.stdout.write(MARK + json.dumps(msg) + "\n")
    sys.stdout.flush()


def worker(spec_path: Path, name: str) -> int:
    """Load one backend, then serve requests read from stdin, one JSON object a line:
    {"op": "run", "steps": S} -> {"event": "result", "record": ...}; {"op": "done"} -> {"event": "done", ...}."""
    spec = json.loads(spec_path.read_text())
    try:
        t0 = time.perf_counter()
        runner = _EagerRunner(spec) if name == EAGER else _OrtRunner(spec, name)
        load_s = time.perf_counter() - t0
        _send({"event": "ready", "pid": os.getpid(), "load_s": load_s, "info": runner.backend_info,
               "rss_after_load_mb": _mb(_proc_status_kb("VmRSS")), "peak_rss_load_mb": _mb(_proc_status_kb("VmHWM")),
               "peak_reset": _reset_peak()})
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "run":
                _send({"event": "result", "record": runner.run(spec, int(cmd["steps"]))})
            elif cmd["op"] == "done":
                _send({"event": "done", "peak_rss_generation_mb": _mb(_proc_status_kb("VmHWM"))})
                return 0
    except Exception as e:  # noqa: BLE001 - reported in the table, the other backends still run
        import traceback

        _send({"event": "error", "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
               "traceback": traceback.format_exc()})
        return 1
    return 0


class Worker:
    """The parent's handle on one backend's worker process."""

    def __init__(self, name: str, spec_path: Path, env: dict[str, str], timeout: float | None):
        import queue
        import threading

        self.name, self.timeout = name, timeout
        self.raw: dict[str, Any] = {"backend": name, "status": "ok", "plans": {}}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--spec", str(spec_path)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.msgs: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                self.msgs.put(json.loads(line[len(MARK):]))
            else:
                sys.stdout.write(line)
        self.msgs.put({"event": "error", "reason": f"worker exited ({self.proc.wait()}) without answering"})

    @property
    def ok(self) -> bool:
        return self.raw["status"] == "ok"

    def _fail(self, reason: str, tb: str = "") -> None:
        self.raw.update(status="failed", reason=reason, traceback=tb)
        print(f"{self.name}: failed: {reason}\n{tb}", file=sys.stderr, flush=True)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _expect(self, event: str) -> dict | None:
        import queue

        try:
            msg = self.msgs.get(timeout=self.timeout)
        except queue.Empty:
            self._fail(f"no answer within --timeout {self.timeout:g} s")
            return None
        if msg["event"] != event:
            self._fail(msg.get("reason", f"unexpected {msg['event']}"), msg.get("traceback", ""))
            return None
        return msg

    def _send(self, msg: dict) -> bool:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            self._fail("the worker closed its input")
            return False

    def wait_ready(self) -> None:
        msg = self._expect("ready")
        if msg:
            msg.pop("event")
            self.raw.update(msg)

    def run(self, steps: int, timed: bool, label: str) -> None:
        if not (self.ok and self._send({"op": "run", "steps": steps})):
            return
        msg = self._expect("result")
        if msg is None:
            return
        rec = msg["record"]
        print(f"[{self.name}] {steps} steps, {label}: {rec['e2e']:.2f} s", file=sys.stderr, flush=True)
        if timed:
            self.raw["plans"].setdefault(str(steps), {"steps": _actual_steps(steps), "runs": []})["runs"].append(rec)

    def finish(self) -> None:
        if self.ok and self._send({"op": "done"}):
            msg = self._expect("done")
            if msg:
                self.raw["peak_rss_generation_mb"] = msg["peak_rss_generation_mb"]
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def measure(names: list[str], spec: dict, spec_path: Path, env: dict[str, str], timeout: float | None,
            sequential: bool) -> dict[str, dict]:
    """Run every plan on every backend. Interleaved (default): all workers loaded (one after another), then
    request k of each backend in turn, the order reversed every other round, so that changing load from other
    processes hits every backend alike. Sequential: one backend at a time (less memory at once)."""
    rounds = [(steps, r) for steps in spec["plan_steps"] for r in range(spec["warmup"] + spec["repeats"])]

    def label(r: int) -> str:
        return f"warm-up {r + 1}" if r < spec["warmup"] else f"run {r + 1 - spec['warmup']}"

    def start(name: str) -> Worker:
        print(f"{name}: loading", file=sys.stderr, flush=True)
        w = Worker(name, spec_path, env, timeout)
        w.wait_ready()
        return w

    workers: list[Worker] = []
    if sequential:
        for name in names:
            w = start(name)
            for steps, r in rounds:
                w.run(steps, r >= spec["warmup"], label(r))
            w.finish()
            workers.append(w)
    else:
        workers = [start(name) for name in names]
        for i, (steps, r) in enumerate(rounds):
            for w in (workers if i % 2 == 0 else workers[::-1]):
                w.run(steps, r >= spec["warmup"], label(r))
        for w in workers:
            w.finish()
    return {w.name: w.raw for w in workers}


# --------------------------------------------------------------------------- summarising


def summary(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    v = sorted(values)
    q = np.percentile(v, [25, 75]) if len(v) > 1 else [v[0], v[0]]
    return {"median": statistics.median(v), "min": v[0], "max": v[-1], "q1": float(q[0]), "q3": float(q[1]),
            "n": len(v)}


def summarise_backend(raw: dict, targets: list[int], measure_steps: int | None) -> dict:
    """Stage medians/spreads and the end-to-end time per requested step count (measured or extrapolated)."""
    plans = raw["plans"]
    out: dict[str, Any] = {"stages": {}, "end_to_end": {}, "unet_total": {}}
    # Per-request stages: pooled over every plan's timed runs (they do not depend on the step count).
    all_runs = [r for p in plans.values() for r in p["runs"]]
    keys = [k for k, _ in STAGES if k not in ("unet_step", "sampler_step", "other")]
    for k in keys:
        out["stages"][k] = summary([r["stages"].get(k, 0.0) for r in all_runs])
    out["stages"]["unet_step"] = summary([s for r in all_runs for s in r["unet_steps"]])
    out["stages"]["sampler_step"] = summary([s for r in all_runs for s in r["step_walls"]])
    for r in all_runs:
        r["other"] = r["e2e"] - sum(r["stages"].get(k, 0.0) for k in keys) - _sampler_total(r)
    out["stages"]["other"] = summary([r["other"] for r in all_runs])
    for s in targets:
        actual = _actual_steps(s)
        direct = plans.get(str(s))
        if direct is not None:
            e2e = [r["e2e"] for r in direct["runs"]]
            unet = [r["unet_total"] for r in direct["runs"]]
            kind = "measured"
        else:
            base = plans[str(measure_steps)]
            k = base["steps"]
            e2e, unet = [], []
            for r in base["runs"]:
                per_step_wall = statistics.median(r["step_walls"]) if r["step_walls"] else statistics.median(r["unet_steps"])
                per_step_unet = statistics.median(r["unet_steps"])
                e2e.append(r["e2e"] + r["loops"] * (actual - k) * per_step_wall)
                unet.append(r["loops"] * actual * per_step_unet)
            kind = f"extrapolated from {k} measured steps"
        out["end_to_end"][str(s)] = {**summary(e2e), "kind": kind, "steps": actual}
        out["unet_total"][str(s)] = {**summary(unet), "kind": kind, "steps": actual}
    return out


def _sampler_total(r: dict) -> float:
    """Seconds of the DDIM loop(s): the eager runner measures it; for the runtime it is the step walls plus the
    last step of each loop (its unet call; the final NumPy update is small and lands in 'other')."""
    if "sampler_total" in r:
        return r["sampler_total"]
    per_loop = len(r["unet_steps"]) // max(r["loops"], 1)
    lasts = [r["unet_steps"][(i + 1) * per_loop - 1] for i in range(r["loops"])]
    return sum(r["step_walls"]) + sum(lasts)


def ratios(summaries: dict[str, dict], targets: list[int]) -> dict[str, dict[str, float]]:
    """Median of each backend / median of PyTorch eager, per stage and end to end (< 1: faster than eager)."""
    base = summaries.get(EAGER)
    if not base:
        return {}
    out = {}
    for name, s in summaries.items():
        if name == EAGER:
            continue
        r = {}
        for k, _ in STAGES:
            a, b = s["stages"].get(k), base["stages"].get(k)
            if a and b and b["median"] > 0:
                r[k] = a["median"] / b["median"]
        for st in targets:
            for key, section in (("unet_total", "unet_total"), ("end_to_end", "end_to_end")):
                a, b = s[section].get(str(st)), base[section].get(str(st))
                if a and b and b["median"] > 0:
                    r[f"{key}@{st}"] = a["median"] / b["median"]
        out[name] = r
    return out


# --------------------------------------------------------------------------- markdown


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    if x >= 0.01:
        return f"{x:.3f}"
    return f"{x:.4f}"


def _cell(s: dict | None) -> str:
    if not s:
        return "—"
    if s["n"] == 1 or s["min"] == s["max"]:
        return _fmt(s["median"])
    return f"{_fmt(s['median'])} [{_fmt(s['min'])}–{_fmt(s['max'])}]"


def markdown(report: dict) -> str:
    meta, res = report["meta"], report["backends"]
    names = list(res)
    ok = [n for n in names if res[n]["status"] == "ok"]
    others = [n for n in ok if n != EAGER]
    has_eager = EAGER in ok
    targets = meta["steps"]
    header = ["stage (seconds)"]
    for n in names:
        header.append(n)
        if has_eager and n in others:
            header.append(f"{n} / eager")
    lines = [
        f"### {meta['model']} ({meta['weights']}), {meta['batch']} request(s) × {meta['candidates']} candidate(s), "
        f"5 s clip, DDIM {' / '.join(str(s) for s in targets)} steps",
        "",
        f"{meta['host']['cpu']}, {meta['host']['cores']} cores, {meta['threads']} threads per backend; "
        f"load average {meta['host']['load_before']} before, {meta['host']['load_after']} after; "
        f"backends {meta.get('schedule', 'interleaved')} (see README). "
        f"Median [min–max] of {meta['repeats']} timed request(s) after {meta['warmup']} warm-up; "
        f"ratio = backend median / PyTorch eager median (< 1: faster). {meta['created']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]

    def row(label: str, cells: dict[str, str], ratio_key: str | None):
        out = [label]
        for n in names:
            out.append(cells.get(n, "—"))
            if has_eager and n in others:
                r = report["ratios"].get(n, {}).get(ratio_key) if ratio_key else None
                out.append(f"**{r:.2f}**" if r is not None else "—")
        lines.append("| " + " | ".join(out) + " |")

    status = {}
    for n in names:
        b = res[n]
        status[n] = "ok" if b["status"] == "ok" else f"{b['status']}: {b.get('reason', '')}".replace("|", "/")
    row("status", status, None)
    for k, label in STAGES:
        row(label, {n: _cell(res[n]["summary"]["stages"].get(k)) for n in ok}, None if k == "other" else k)
    for st in targets:
        any_ok = next((res[n]["summary"] for n in ok), None)
        kind = any_ok["end_to_end"][str(st)]["kind"] if any_ok else ""
        mark = " (extrapolated†)" if kind.startswith("extrapolated") else ""
        row(f"unet_adapter total, {st} steps{mark}",
            {n: _cell(res[n]["summary"]["unet_total"][str(st)]) for n in ok}, f"unet_total@{st}")
        row(f"**end to end, {st} steps**{mark}",
            {n: "**" + _cell(res[n]["summary"]["end_to_end"][str(st)]) + "**" for n in ok}, f"end_to_end@{st}")
    row("load (models / sessions), not in end to end", {n: _fmt(res[n]["load_s"]) for n in ok}, None)
    row("peak RSS MB, load", {n: _fmt(res[n].get("peak_rss_load_mb")) for n in ok}, None)
    row("peak RSS MB, generation", {n: _fmt(res[n].get("peak_rss_generation_mb")) for n in ok}, None)
    lines.append("")
    ms = meta.get("measure_steps")
    if ms is not None and any(s > ms for s in targets):
        k = _actual_steps(ms)
        lines.append(f"† Measured: every stage, and a DDIM loop of {k} steps. Computed: the totals for more steps = "
                     f"measured end to end ({k} steps) + (S − {k}) × that repeat's median sampler-step wall time; "
                     f"unet_adapter total = S × median per-step time.")
    lines.append("Peak RSS: VmHWM of each backend's own worker process (/proc), after loading and, reset, over the "
                 "warm-up and timed requests. PyTorch eager: the reference loop (two model calls per DDIM step), "
                 "float32. Per-stage rows of the runtime columns come from `Pipeline.timings`; 'other' is end to "
                 "end minus the listed stages and the DDIM loop.")
    lines.append("")
    lines.append(f"Command: `{meta['command']}`")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- parent


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
    if detect_tensorrt() is None:
        cmd.append("--no-fp16-check")  # only needed for TensorRT FP16 engines
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
        "checkpoints": str(checkpoints) if checkpoints else None,
    }
    weights = f"checkpoints {checkpoints}" if checkpoints else f"random weights, seed {spec['seed']}"
    meta = {
        "model": model.name, "weights": weights, "engines": str(engines), "steps": targets,
        "measure_steps": ms, "plan_steps": plan_steps, "batch": args.batch, "candidates": args.candidates,
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


if __name__ == "__main__":
    sys.exit(main())
