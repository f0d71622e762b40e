"""benchmarks/latency.py: a --quick run on the session's tiny engine directory (structure only, never
timing values), and the summary/extrapolation arithmetic on made-up records."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import latency_bench as L
from benchmarks.latency_bench.report import markdown
from benchmarks.latency_bench.runners import step_stats
from benchmarks.latency_bench.stats import ratios, summarise_backend

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tiny_engines, tmp_path_factory):
    engines, _ = tiny_engines
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script must find the repo itself
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--quick", "--engines", str(engines),
         "--out", str(out), "--steps", "4", "2", "--measure-steps", "2"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


def test_quick_run_writes_json_for_every_backend(quick_run):
    out, _ = quick_run
    report = json.loads((out / "latency.json").read_text())
    meta = report["meta"]
    assert meta["model"] == "tiny" and meta["steps"] == [4, 2] and meta["repeats"] == 1
    assert set(report["backends"]) == set(L.BACKENDS)
    for name, b in report["backends"].items():
        assert b["status"] in ("ok", "skipped"), (name, b)
        if b["status"] == "skipped":
            assert b["reason"]
    for name in (L.EAGER, "onnxruntime-cpu"):
        b = report["backends"][name]
        assert b["status"] == "ok", b
        s = b["summary"]
        assert set(s["stages"]) == {k for k, _ in L.STAGES}
        for k, st in s["stages"].items():
            assert st["min"] <= st["median"] <= st["max"], (name, k)
        assert s["end_to_end"]["2"]["kind"] == "measured" and s["end_to_end"]["2"]["steps"] == 2
        assert s["end_to_end"]["4"]["kind"].startswith("extrapolated") and s["end_to_end"]["4"]["steps"] == 4
        assert s["end_to_end"]["4"]["median"] > s["end_to_end"]["2"]["median"]  # two more steps added
        assert b["peak_rss_load_mb"] > 0 and b["peak_rss_generation_mb"] > 0 and b["load_s"] > 0
        run = b["plans"]["2"]["runs"][0]
        assert len(run["unet_steps"]) == 2 and run["loops"] == 1
    ratios = report["ratios"]["onnxruntime-cpu"]
    for key in ["end_to_end@2", "end_to_end@4", "unet_total@2", "unet_step", "synchformer", "vocoder"]:
        assert ratios[key] > 0


def test_quick_run_writes_markdown_table(quick_run):
    out, proc = quick_run
    md = (out / "latency.md").read_text()
    assert md in proc.stdout
    header = next(line for line in md.splitlines() if line.startswith("| stage"))
    for name in L.BACKENDS:
        assert name in header
    assert "onnxruntime-cpu / eager" in header
    rows = {line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ")}
    for _, label in L.STAGES:
        assert label in rows
    assert "**end to end, 2 steps**" in rows and "**end to end, 4 steps** (extrapolated†)" in rows
    assert "† Measured" in md
    width = {len(line.split("|")) for line in md.splitlines() if line.startswith("|")}
    assert len(width) == 1  # every row has every column
    report = json.loads((out / "latency.json").read_text())
    for name, b in report["backends"].items():
        if b["status"] == "skipped":
            assert f"skipped: {b['reason']}"[:40] in md


def _raw(e2e: float, unet: list[float], walls: list[float], loops: int = 1) -> dict:
    stages = {k: 0.1 for k, _ in L.STAGES if k not in ("unet_step", "sampler_step", "other")}
    return {"stages": stages, "unet_steps": unet, "step_walls": walls, "loops": loops, "e2e": e2e,
            "unet_total": sum(unet)}


def test_extrapolation_arithmetic():
    runs = [_raw(10.0, [1.0, 1.0, 1.0, 1.0], [1.2, 1.1, 1.3]), _raw(12.0, [2.0] * 4, [2.5, 2.5, 2.5])]
    raw = {"plans": {"4": {"steps": 4, "runs": runs}}}
    s = summarise_backend(raw, [200, 25], 4)
    e = s["end_to_end"]["200"]
    # per repeat: e2e(4) + (200 − 4) × median step wall
    assert e["min"] == pytest.approx(10.0 + 196 * 1.2) and e["max"] == pytest.approx(12.0 + 196 * 2.5)
    assert e["kind"] == "extrapolated from 4 measured steps" and e["steps"] == 200
    assert s["unet_total"]["25"]["min"] == pytest.approx(25 * 1.0)
    assert s["stages"]["unet_step"]["median"] == pytest.approx(1.5)
    # other = e2e − listed stages (8 × 0.1) − the DDIM loop (step walls + the last step's unet call)
    assert s["stages"]["other"]["max"] == pytest.approx(10.0 - 0.8 - (3.6 + 1.0))
    assert s["stages"]["other"]["min"] == pytest.approx(12.0 - 0.8 - (7.5 + 2.0))


def test_measured_plan_is_used_when_present_and_ratios():
    base = {"plans": {"2": {"steps": 2, "runs": [_raw(4.0, [1.0, 1.0], [1.1])]}}}
    fast = {"plans": {"2": {"steps": 2, "runs": [_raw(1.0, [0.25, 0.25], [0.3])]}}}
    sums = {L.EAGER: summarise_backend(base, [2], None), "onnxruntime-cpu": summarise_backend(fast, [2], None)}
    assert sums[L.EAGER]["end_to_end"]["2"]["kind"] == "measured"
    r = ratios(sums, [2])["onnxruntime-cpu"]
    assert r["end_to_end@2"] == pytest.approx(0.25) and r["unet_step"] == pytest.approx(0.25)


def test_step_stats_groups_cfg_calls_per_step():
    calls = [(0.0, 0.4), (0.4, 0.9), (1.0, 1.4), (1.4, 1.8)]  # two steps, two calls each (eager)
    st = step_stats(calls, per_step=2, steps=2)
    assert st["unet_steps"] == pytest.approx([0.9, 0.8]) and st["step_walls"] == pytest.approx([1.0])
    with pytest.raises(RuntimeError):
        step_stats(calls[:3], per_step=2, steps=2)


def test_failed_backend_is_reported_in_the_table():
    ok = {"status": "ok", "load_s": 1.0, "peak_rss_load_mb": 10.0, "peak_rss_generation_mb": 20.0,
          "summary": summarise_backend({"plans": {"2": {"steps": 2, "runs": [_raw(4.0, [1.0, 1.0], [1.1])]}}},
                                         [2], None)}
    report = {"meta": {"model": "tiny", "weights": "random", "batch": 1, "candidates": 1, "steps": [2],
                       "measure_steps": None, "repeats": 1, "warmup": 0, "threads": 2, "created": "now",
                       "command": "x", "host": {"cpu": "cpu", "cores": 2, "load_before": "0", "load_after": "0"}},
              "backends": {L.EAGER: ok, "onnxruntime-cpu": {"status": "failed", "reason": "boom | bang"}},
              "ratios": {}}
    md = markdown(report)
    assert "failed: boom / bang" in md
    assert len({len(line.split("|")) for line in md.splitlines() if line.startswith("|")}) == 1


def test_pipelines_report_every_stage_call_to_the_timing_hook(tiny_engines):
    """The benchmark times through these hooks instead of patching the pipelines."""
    import numpy as np

    from export.export_onnx import ModelSource
    from rewas_rt import constants as C
    from rewas_rt.ddim import make_schedule
    from rewas_rt.pipeline import GenerationOptions, Pipeline, Request
    from training.pipeline import COMPONENT_NAMES, Noise, TorchPipeline

    calls = []
    pipe = Pipeline(tiny_engines[0], backend="onnxruntime-cpu", timing_hook=lambda *c: calls.append(c))
    frames = np.zeros((C.FRAMES, C.CROP, C.CROP, 3), np.uint8)
    pipe.generate([Request("rain", 0, frames=frames)], GenerationOptions(steps=4))  # 4 divides 1000: 4 steps
    names = [c[0] for c in calls]
    assert names.count("unet_adapter") == 4 and all(s <= e for _, s, e in calls)
    assert {"video", "synchformer", "phi", "energy_post", "vae_encoder", "clap_text", "vae_decoder", "vocoder"} <= set(names)
    assert sum(e - s for n, s, e in calls if n == "unet_adapter") == pytest.approx(pipe.timings["unet_adapter"])

    src = ModelSource.from_preset("tiny", seed=tiny_engines[1])
    calls.clear()
    tp = TorchPipeline({c: src.component(c) for c in COMPONENT_NAMES}, timing_hook=lambda *c: calls.append(c))
    rng = np.random.default_rng(0)
    z = lambda *s: rng.standard_normal(s, dtype=np.float32)  # noqa: E731
    segs = np.zeros((1, C.SEGMENTS, 3, C.SEGMENT_LEN, C.CROP, C.CROP), np.float32)
    ids = np.array([[0, 5, 2]], np.int64)
    tp.generate(segs, ids, np.ones_like(ids), np.array([[0, 2]], np.int64), make_schedule(4, 1.0), 3.0,
                Noise(z(1, *C.LATENT_SHAPE), z(1, *C.LATENT_SHAPE), z(4, 1, *C.LATENT_SHAPE)))
    names = [c[0] for c in calls]
    assert names.count("unet_adapter") == 8  # two model calls per step: the reference loop
    assert names.count("sampler") == 1 and {"synchformer", "phi", "vae_decoder", "vocoder"} <= set(names)


def test_long_video_publishes_json_and_table(tiny_engines, tmp_path):
    """benchmarks/long_video.py on a 3-second clip: one row per length, written through
    benchmarks.report.publish (NAME.json and NAME.md), from a measured subprocess run."""
    engines, _ = tiny_engines
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "long_video.py"), "--engines", str(engines),
                           "--seconds", "3", "--steps", "1", "--threads", "1", "--out", str(tmp_path), "--name", "lv"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "lv.json").read_text())
    (row,) = report["rows"]
    assert row["seconds"] == 3 and row["windows"] >= 1 and row["samples"] == 3 * 16000 and row["wall_s"] > 0
    assert row["peak_rss_mib"] >= row["peak_rss_loaded_mib"] > 0
    assert "| 3 s | %d |" % row["windows"] in (tmp_path / "lv.md").read_text()
