"""What the opt-in INT8 graphs change in a trained model's output, and what they save, on held-out clips.

    python export/build_engines.py --checkpoints CKPT --out /tmp/demo-int8 --int8 synchformer,unet_adapter ...
    python benchmarks/int8_quality.py --engines /tmp/demo-int8 --data runs/demo/data/manifest.jsonl \\
        --out benchmarks/results/int8-demo

``export/quantize.py`` reports the deviation of a graph's raw outputs on generated inputs; this
script measures what a user hears, through ``rewas_rt.pipeline.Pipeline`` (ONNX Runtime CPU),
FP32 against ``Pipeline(..., int8=[graph])`` on every clip of the split (seed = the clip's index):

* **synchformer**: the energy curve φ predicts from the video: Pearson r and mean |Δ| between
  the FP32 and INT8 curves, and each one's r with the true audio's energy;
* **unet_adapter**: the sound generated from the clip's caption and its true energy curve:
  mean log-mel distance INT8 vs FP32 (same seed), next to FP32 vs FP32 with another seed (two
  equally good samples: the scale to read it against), energy-control r, and the text class
  (a logistic regression on the train split's real audio, as ``sampler_quality.py``);
* the seconds each graph took per request, FP32 and INT8, interleaved clip by clip.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import quality as Q
from benchmarks.report import publish
from benchmarks.demo_quality import features
from benchmarks.sampler_quality import fit_classifier, logmel_distance, read_clips, true_wave
from rewas_rt import energy as E
from rewas_rt.errors import cli_main

OTHER_SEED = 1000


def evaluate(args, log=print) -> dict:
    from rewas_rt.pipeline import GenerationOptions, Pipeline, Request
    from rewas_rt.video import load_video

    fp32 = Pipeline(args.engines, backend="onnxruntime-cpu", threads=args.threads)
    int8 = {g: Pipeline(args.engines, backend="onnxruntime-cpu", threads=args.threads, int8=[g])
            for g in ("synchformer", "unet_adapter")}
    opts = GenerationOptions(**{**fp32.dir.recommended, **({"steps": args.steps} if args.steps else {})})
    clf = fit_classifier(args.data, log)
    rows = read_clips(args.data, args.split)[: args.limit or None]
    out: dict = {"synchformer": [], "unet_adapter": []}
    secs = {k: {"fp32": 0.0, "int8": 0.0} for k in out}
    for i, r in enumerate(rows):
        wave = true_wave(args.data, r)
        true_energy = Q.energy_curve(wave)
        frames = load_video(args.data.parent / r["video"], float(r.get("start", 0.0))).frames
        curves = {}
        for name, pipe in (("fp32", fp32), ("int8", int8["synchformer"])):
            before = pipe.timings.get("synchformer", 0.0)
            curves[name] = pipe.predict_energy([frames])[0]
            secs["synchformer"][name] += pipe.timings["synchformer"] - before
        out["synchformer"].append({
            "id": r.get("id", str(i)), "r_int8_vs_fp32": Q.pearson(curves["fp32"], curves["int8"]),
            "mean_abs_diff": float(np.mean(np.abs(curves["fp32"] - curves["int8"]))),
            "r_true_fp32": Q.pearson(true_energy, curves["fp32"][: len(true_energy)]),
            "r_true_int8": Q.pearson(true_energy, curves["int8"][: len(true_energy)])})
        target = E.energy_target(wave)
        waves = {}
        for name, pipe, seed in (("fp32", fp32, i), ("int8", int8["unet_adapter"], i),
                                 ("fp32_other_seed", fp32, i + OTHER_SEED)):
            before = pipe.timings.get("unet_adapter", 0.0)
            (res,) = pipe.generate([Request(r["caption"], seed, energy=target)], opts)
            if name != "fp32_other_seed":
                secs["unet_adapter"][name] += pipe.timings["unet_adapter"] - before
            waves[name] = res.waveforms[0]
        rec = {"id": r.get("id", str(i)),
               "logmel_dist_int8_vs_fp32": logmel_distance(waves["int8"][None], waves["fp32"][None]),
               "logmel_dist_other_seed": logmel_distance(waves["fp32_other_seed"][None], waves["fp32"][None]),
               "control_r_fp32": Q.energy_correlation(target, waves["fp32"])["energy_correlation"],
               "control_r_int8": Q.energy_correlation(target, waves["int8"])["energy_correlation"]}
        if clf is not None:
            pred = clf.predict(np.stack([features(waves["fp32"]), features(waves["int8"])]))
            rec |= {"class_fp32_ok": bool(pred[0] == r.get("label")), "class_int8_ok": bool(pred[1] == r.get("label"))}
        out["unet_adapter"].append(rec)
        log(f"[{i + 1}/{len(rows)}] {rec['id']}: curve r {out['synchformer'][-1]['r_int8_vs_fp32']:.4f}, "
            f"log-mel dist {rec['logmel_dist_int8_vs_fp32']:.3f} (other seed {rec['logmel_dist_other_seed']:.3f})")
    n = len(rows)
    s, u = out["synchformer"], out["unet_adapter"]
    summary = {
        "synchformer": {"curve_r_int8_vs_fp32_median": float(np.median([x["r_int8_vs_fp32"] for x in s])),
                        "curve_mean_abs_diff": float(np.mean([x["mean_abs_diff"] for x in s])),
                        "true_r_fp32_median": float(np.nanmedian([x["r_true_fp32"] for x in s])),
                        "true_r_int8_median": float(np.nanmedian([x["r_true_int8"] for x in s])),
                        "seconds_fp32": secs["synchformer"]["fp32"] / n, "seconds_int8": secs["synchformer"]["int8"] / n},
        "unet_adapter": {"logmel_dist_int8_vs_fp32": float(np.mean([x["logmel_dist_int8_vs_fp32"] for x in u])),
                         "logmel_dist_other_seed": float(np.mean([x["logmel_dist_other_seed"] for x in u])),
                         "control_r_fp32_median": float(np.nanmedian([x["control_r_fp32"] for x in u])),
                         "control_r_int8_median": float(np.nanmedian([x["control_r_int8"] for x in u])),
                         "seconds_fp32": secs["unet_adapter"]["fp32"] / n, "seconds_int8": secs["unet_adapter"]["int8"] / n},
    }
    if clf is not None:
        summary["unet_adapter"] |= {"class_acc_fp32": float(np.mean([x["class_fp32_ok"] for x in u])),
                                    "class_acc_int8": float(np.mean([x["class_int8_ok"] for x in u]))}
    for g in summary:
        summary[g]["speedup"] = summary[g]["seconds_fp32"] / summary[g]["seconds_int8"]
    return {"engines": str(args.engines), "data": str(args.data), "split": args.split, "clips": n,
            "sampling": {k: v for k, v in vars(opts).items() if k in ("sampler", "steps", "guidance", "eta")},
            "int8": {g: {"mode": fp32.dir.graph(g).entry.int8.mode} for g in int8},
            "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "summary": summary, "clips_detail": out}


def markdown(rep: dict) -> str:
    s, u = rep["summary"]["synchformer"], rep["summary"]["unet_adapter"]
    cls = (f"; text class {100 * u['class_acc_fp32']:.0f} % → {100 * u['class_acc_int8']:.0f} %"
           if "class_acc_fp32" in u else "")
    return "\n".join([
        f"{rep['clips']} {rep['split']} clips of {rep['data']}, {rep['sampling']}, {rep['created']}.", "",
        "| graph | FP32 s/request | INT8 s/request | speed-up | what changes |", "|---|---:|---:|---:|---|",
        f"| synchformer | {s['seconds_fp32']:.3f} | {s['seconds_int8']:.3f} | {s['speedup']:.2f}× | energy curve r INT8 vs "
        f"FP32 {s['curve_r_int8_vs_fp32_median']:.4f} (median), mean abs diff {s['curve_mean_abs_diff']:.4f}; r with the "
        f"true energy {s['true_r_fp32_median']:.3f} → {s['true_r_int8_median']:.3f} |",
        f"| unet_adapter | {u['seconds_fp32']:.3f} | {u['seconds_int8']:.3f} | {u['speedup']:.2f}× | log-mel distance to "
        f"FP32 (same seed) {u['logmel_dist_int8_vs_fp32']:.3f} vs {u['logmel_dist_other_seed']:.3f} between two FP32 "
        f"seeds; energy-control r {u['control_r_fp32_median']:.3f} → {u['control_r_int8_median']:.3f}{cls} |", ""])


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="int8_quality.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", type=Path, required=True, help="engine directory built with --int8 synchformer,unet_adapter")
    p.add_argument("--data", type=Path, required=True, help="manifest.jsonl of labelled clips (training.synthetic)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="first N clips only")
    p.add_argument("--steps", type=int, help="sampling steps (default: the manifest's recommendation)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    p.add_argument("--out", type=Path, help="write int8-quality.json and .md here")
    args = p.parse_args(argv)
    from rewas_rt.manifest import open_engine_dir

    if not (args.engines / "manifest.json").is_file():
        p.error(f"--engines {args.engines}: no manifest.json there")
    d = open_engine_dir(args.engines, checksums=False)
    missing = [g for g in ("synchformer", "unet_adapter") if d.graph(g).int8 is None]
    if missing:
        p.error(f"--engines {args.engines}: no INT8 variant of {', '.join(missing)} (build_engines --int8 ...)")
    if not args.data.is_file():
        p.error(f"--data {args.data}: not found")
    rep = evaluate(args, log=lambda m: print(m, file=sys.stderr, flush=True))
    publish(rep, markdown(rep), args.out, "int8-quality")
    return 0


if __name__ == "__main__":
    sys.exit(main())
