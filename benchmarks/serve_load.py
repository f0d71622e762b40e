"""Load test of the HTTP service: throughput and latency percentiles at several
concurrency levels, with request batching on and off, in one run.

    python benchmarks/serve_load.py --engines /tmp/tiny-engines --out runs/serve   # tiny engines, 2 steps
    python benchmarks/serve_load.py --engines engines/ --steps 25 --concurrency 1 4 8 --per-worker 3

One local Ray (``--num-cpus``, no dashboard) on 127.0.0.1 only; the service is
deployed with batching on (``--max-batch``, ``--batch-wait-ms``), loaded, then
redeployed with batching off (max batch 1, no wait) and loaded again. At
concurrency C, C client threads each send ``--per-worker`` requests one after
another (the same clip, different prompts and seeds), so every level is bounded
to C × per-worker requests; one untimed request warms each deployment up.

Reported per (mode, C): requests, wall time, throughput (requests/s), latency
p50/p95/max (client-side, the whole HTTP round trip), and the engine batches
the service made and the mean server-side seconds per request in the decode, queue
(waiting for the batch loop) and generate stages (all from the service's /metrics).
Results: ``serve_load.json`` (every latency) and ``serve_load.md`` (the table).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def load(url: str, video: bytes, concurrency: int, per_worker: int, steps: int, timeout: float) -> dict:
    import requests

    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        for k in range(per_worker):
            data = {"prompt": f"sound {w} {k}", "seed": str(1000 * w + k), "steps": str(steps)}
            t0 = time.perf_counter()
            try:
                r = requests.post(url + "/v1/generate", data=data, files={"video": ("clip.mp4", video)},
                                  timeout=timeout)
                ok, why = r.status_code == 200, f"{r.status_code} {r.text[:200]}"
            except requests.RequestException as e:
                ok, why = False, str(e)
            dt = time.perf_counter() - t0
            with lock:
                (latencies.append(dt) if ok else failures.append(why))

    before = requests.get(url + "/metrics", timeout=30).text
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = requests.get(url + "/metrics", timeout=30).text
    calls = metric(after, "rewas_batch_requests_count") - metric(before, "rewas_batch_requests_count")
    merged = metric(after, "rewas_batch_requests_sum") - metric(before, "rewas_batch_requests_sum")
    stages = {}  # mean seconds per request in each server-side stage, from the service's histograms
    for stage in ("upload", "decode", "queue", "generate", "encode"):
        n = (metric(after, f'rewas_stage_seconds_count{{stage="{stage}"}}')
             - metric(before, f'rewas_stage_seconds_count{{stage="{stage}"}}'))
        total = (metric(after, f'rewas_stage_seconds_sum{{stage="{stage}"}}')
                 - metric(before, f'rewas_stage_seconds_sum{{stage="{stage}"}}'))
        stages[stage] = total / n if n else float("nan")
    return {
        "concurrency": concurrency, "requests": len(latencies), "failures": failures, "wall_s": wall,
        "throughput_rps": len(latencies) / wall if wall else float("nan"),
        "p50_s": percentile(latencies, 0.5), "p95_s": percentile(latencies, 0.95),
        "max_s": max(latencies) if latencies else float("nan"),
        "generate_calls": calls, "requests_per_call": merged / calls if calls else float("nan"),
        "stage_mean_s": stages, "latencies_s": latencies,
    }


def _stage(r: dict, name: str) -> str:
    value = r.get("stage_mean_s", {}).get(name, float("nan"))
    return f"{value:.2f}" if value == value else "–"


def table(results: list[dict], meta: dict) -> str:
    lines = [f"Service load, {meta['engines_name']} engines, {meta['steps']} DDIM steps, backend {meta['backend']}, "
             f"Ray {meta['ray_cpus']} CPUs, {meta['per_worker']} requests per client; batching on = max batch "
             f"{meta['max_batch']}, wait {meta['batch_wait_ms']:g} ms.", "",
             "| batching | clients | requests | throughput (req/s) | p50 (s) | p95 (s) | max (s) | engine calls "
             "| requests/call | decode (s) | queue (s) | generate (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['throughput_rps']:.3f} | "
                     f"{r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['max_s']:.2f} | {r['generate_calls']:.0f} | "
                     f"{r['requests_per_call']:.2f} | {_stage(r, 'decode')} | {_stage(r, 'queue')} | "
                     f"{_stage(r, 'generate')} |")
    by = {(r["mode"], r["concurrency"]): r for r in results}
    ratios = [f"C={c}: {by[('on', c)]['throughput_rps'] / by[('off', c)]['throughput_rps']:.2f}×"
              for c in meta["concurrency"] if ("on", c) in by and ("off", c) in by and by[("off", c)]["requests"]]
    lines += ["", "Throughput with batching on ÷ off: " + ", ".join(ratios)]
    return "\n".join(lines) + "\n"


from rewas_rt.errors import cli_main  # noqa: E402


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="serve_load.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", type=Path, required=True, help="engine directory (e.g. the tiny one)")
    p.add_argument("--steps", type=int, default=2, help="DDIM steps per request (default 2)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8], help="client threads (default 1 2 4 8)")
    p.add_argument("--per-worker", type=int, default=2, help="requests per client thread (default 2)")
    p.add_argument("--modes", nargs="+", choices=["on", "off"], default=["on", "off"], help="batching modes")
    p.add_argument("--max-batch", type=int, default=8, help="batching on: candidates per engine batch (default 8)")
    p.add_argument("--batch-wait-ms", type=float, default=50.0, help="batching on: wait for company (default 50)")
    p.add_argument("--backend", default="onnxruntime-cpu")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads in the replica")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs for the local Ray (default 2)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take")
    p.add_argument("--video", type=Path, help="the clip to send (default: latency.py's synthetic 640×360 clip)")
    p.add_argument("--out", type=Path, default=Path("runs/serve"), help="where serve_load.json/.md go")
    args = p.parse_args(argv)

    import ray
    import requests
    from ray import serve

    from rewas_rt.serve.app import build
    from rewas_rt.serve.command import init_ray
    from rewas_rt.serve.settings import ServeSettings

    args.out.mkdir(parents=True, exist_ok=True)
    if args.video is None:
        from benchmarks.latency import ensure_clip

        args.video = ensure_clip(args.out / "clip.mp4")
    video = args.video.read_bytes()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    init_ray(args.num_cpus)
    results = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
        for mode in args.modes:
            on = mode == "on"
            settings = ServeSettings(engines=str(args.engines), backend=args.backend, threads=args.threads,
                                     port=port, max_batch=args.max_batch if on else 1,
                                     batch_wait_ms=args.batch_wait_ms if on else 0.0,
                                     max_queue=max(args.concurrency) + 4, deadline_s=args.timeout)
            serve.run(build(settings), name="rewas", route_prefix="/")
            warm = requests.post(url + "/v1/generate", data={"prompt": "warm up", "seed": "0", "steps": str(args.steps)},
                                 files={"video": ("clip.mp4", video)}, timeout=args.timeout)
            if warm.status_code != 200:
                raise SystemExit(f"warm-up request failed: {warm.status_code} {warm.text[:300]}")
            for c in args.concurrency:
                r = load(url, video, c, args.per_worker, args.steps, args.timeout)
                r["mode"] = mode
                results.append(r)
                print(f"batching {mode:3s} C={c}: {r['requests']} ok, {len(r['failures'])} failed, "
                      f"{r['throughput_rps']:.3f} req/s, p50 {r['p50_s']:.2f} s, p95 {r['p95_s']:.2f} s, "
                      f"{r['requests_per_call']:.2f} requests/engine call", file=sys.stderr, flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    meta = {"engines": str(args.engines), "engines_name": args.engines.name, "steps": args.steps,
            "backend": args.backend, "ray_cpus": args.num_cpus, "per_worker": args.per_worker,
            "max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms, "concurrency": args.concurrency,
            "host_cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()}
    (args.out / "serve_load.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    md = table(results, meta)
    (args.out / "serve_load.md").write_text(md)
    print(md)
    failed = sum(len(r["failures"]) for r in results)
    if failed:
        print(f"{failed} request(s) failed, e.g. {next(f for r in results for f in r['failures'])}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
