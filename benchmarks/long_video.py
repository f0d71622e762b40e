"""Time and peak memory of whole-video generation against the video's length (issue #12).

    python benchmarks/long_video.py --engines /tmp/tiny --seconds 5 30 120 --steps 2 --out benchmarks/results --name long-video-tiny-2cpu

Each length runs in its own subprocess (so its peak RSS is its own): write a synthetic video
(320×240, 25 fps, H.264), then ``Pipeline.generate_video`` on it — energy from the video over
overlapping windows (decoded once, front to back), then the windows in order — and report wall
time, windows, and the peak resident memory (``VmHWM``) after loading the engines and at the end.
Time should grow linearly with the windows and the peak should not grow with the length beyond
the output sound (4 bytes a sample per candidate) — holding 120 s of 224×224 frames alone would
take 450 MB.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

from benchmarks.report import publish  # noqa: E402


def _hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(engines: str, seconds: float, steps: int, threads: int | None) -> dict:
    import time

    from rewas_rt.pipeline import GenerationOptions, Pipeline, VideoRequest, plan_clip
    from tests.media_files import write_video

    with tempfile.TemporaryDirectory() as tmp:
        video = write_video(Path(tmp) / "v.mp4", size=(320, 240), fps=25, seconds=seconds)
        pipe = Pipeline(engines, backend="onnxruntime-cpu", threads=threads)
        for g in ("synchformer", "phi", "clap_text", "vae_encoder", "unet_adapter", "vae_decoder", "vocoder"):
            pipe.engine(g)
        loaded = _hwm_mib()
        request = VideoRequest("rain", 0, video)
        t0 = time.perf_counter()
        res = pipe.generate_video(request, GenerationOptions(steps=steps))
        wall = time.perf_counter() - t0
        return {"seconds": seconds, "windows": len(plan_clip(request)), "steps": steps, "wall_s": wall,
                "peak_rss_loaded_mib": loaded, "peak_rss_mib": _hwm_mib(), "samples": int(res.waveforms.shape[1]),
                "stages_s": dict(pipe.timings)}


def markdown(rows: list[dict], threads: int | None) -> str:
    """The results as a table, one row per length."""
    lines = [f"{rows[0]['steps'] if rows else '?'} steps, ONNX Runtime CPU, "
             f"{threads or 'default'} thread(s), one subprocess per length", "",
             "| clip | windows | wall | per window | peak RSS | after loading engines |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seconds']:g} s | {r['windows']} | {r['wall_s']:.1f} s | {r['wall_s'] / r['windows']:.2f} s "
                     f"| {r['peak_rss_mib']:.1f} MiB | {r['peak_rss_loaded_mib']:.1f} MiB |")
    return "\n".join(lines) + "\n"


from rewas_rt.errors import cli_main  # noqa: E402


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", required=True)
    p.add_argument("--seconds", type=float, nargs="+", default=[5, 30, 120])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, help="write NAME.json and NAME.md here")
    p.add_argument("--name", default="long-video", help="file name stem of the results (default long-video)")
    p.add_argument("--worker", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.engines, args.worker, args.steps, args.threads)))
        return 0
    rows = []
    for s in args.seconds:
        cmd = [sys.executable, __file__, "--engines", args.engines, "--steps", str(args.steps), "--worker", str(s)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT,
                             env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['seconds']:6.1f} s  {r['windows']:3d} windows  {r['wall_s']:7.1f} s wall  "
              f"{r['wall_s'] / r['windows']:5.2f} s/window  peak RSS {r['peak_rss_mib']:7.1f} MiB "
              f"(after loading {r['peak_rss_loaded_mib']:.1f})", flush=True)
    if args.out:
        publish({"engines": args.engines, "threads": args.threads, "rows": rows}, markdown(rows, args.threads),
                args.out, args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
