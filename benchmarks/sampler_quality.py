"""Quality against sampling cost: DDIM at the original's 200 steps and fewer, DPM-Solver++(2M)
(ODE and SDE) at 10–25 steps, with and without a guidance interval, on held-out clips.

    python benchmarks/sampler_quality.py --engines DEMO_ENGINES --data runs/demo/data/manifest.jsonl \\
        --out benchmarks/results/sampler-quality-demo
    python benchmarks/sampler_quality.py --engines engines/rewas-m --data my_clips.jsonl --limit 20   # released model
    python benchmarks/sampler_quality.py --quick --engines /tmp/tiny --data ...   # smoke run: 2 clips, 3 settings

``--data`` is a manifest.jsonl of clips (``training.synthetic`` writes one): one JSON object
a line with ``video`` (path relative to the manifest; its sound track is the true audio),
``caption``, optional ``label`` (sound class), ``split`` and ``start``. The ``--split``
(default ``test``: never trained on) is evaluated; the ``train`` split's real audio fits the
class classifier (when labels are given).

Every setting generates, for every clip with seed = its index, two requests through
``rewas_rt.pipeline.Pipeline`` (ONNX Runtime CPU): **video** (the caption, the energy curve φ
predicts from the video, computed once per clip and reused) and **control** (the caption and
the true audio's energy curve given directly). Metrics per setting:

* **energy-following r** (video): median Pearson r between the true audio's and the generated
  audio's 512-frame energy (``quality.energy_curve``);
* **energy-control r** (control): median r between the given curve and the generated audio's
  smoothed energy (``quality.energy_correlation``);
* **text-class accuracy** (video): share classified as the clip's class by a logistic
  regression on log-mel statistics (per-bin mean, std, mean |Δ|) fitted on the train split's
  real audio; chance is 1/number of classes;
* **log-mel distance to DDIM-200**: mean |log-mel(generated) − log-mel(DDIM 200, same seed)|
  (nats) over both requests. DDIM with η = 1 and the SDE sampler are stochastic, so this is not
  0 for an exact sampler either: the row "DDIM 200, other seed" (seed + 1000) gives the distance
  between two equally good samples, the scale to read the others against;
* **UNet rows per request**: CFG steps count 2 rows (one batched call), single-branch steps
  (outside a guidance interval) 1, i.e. the model work relative to each other.

Settings are ``SAMPLER:STEPS`` or ``SAMPLER:STEPS:gi`` (the latter with ``--guidance-interval``);
the first must be ``ddim:200`` (the reference). Guidance, η and the rest are the manifest's
recommendation unless given. Requires scikit-learn for the classifier (``rewas-rt[bench]``).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import quality as Q
from benchmarks.demo_quality import features
from benchmarks.demo_quality import fit_classifier as fit_waves
from benchmarks.report import publish
from rewas_rt.errors import cli_main
from rewas_rt import energy as E

DEFAULT_SETTINGS = ("ddim:200", "ddim:50", "ddim:25",
                    "dpmpp-2m:10", "dpmpp-2m:15", "dpmpp-2m:20", "dpmpp-2m:25",
                    "dpmpp-2m-sde:10", "dpmpp-2m-sde:15", "dpmpp-2m-sde:20", "dpmpp-2m-sde:25",
                    "ddim:25:gi", "dpmpp-2m:15:gi", "dpmpp-2m:20:gi", "dpmpp-2m-sde:20:gi")
QUICK_SETTINGS = ("ddim:200", "dpmpp-2m:10", "dpmpp-2m:10:gi")
REFERENCE = "ddim:200"
OTHER_SEED = 1000  # the noise-floor row: DDIM 200 with seed + OTHER_SEED
# Kynkäänniemi et al. 2024 guide SD-XL in σ ∈ (0.28, 5.42]; the default here is the same range.
DEFAULT_INTERVAL = (0.28, 5.42)


def parse_setting(text: str) -> tuple[str, int, bool]:
    from rewas_rt.samplers import SAMPLERS

    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] not in SAMPLERS or not parts[1].isdigit() or parts[2:] not in ([], ["gi"]):
        raise ValueError(f"setting {text!r}: expected SAMPLER:STEPS[:gi] with SAMPLER one of {', '.join(SAMPLERS)}")
    return parts[0], int(parts[1]), len(parts) == 3


# --------------------------------------------------------------------------- data and classifier


def read_clips(manifest: Path, split: str) -> list[dict]:
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("split", split) == split]


def true_wave(manifest: Path, row: dict) -> np.ndarray:
    """The clip's own sound in the 5.12 s window, normalised as the training data (``normalize_wav``)."""
    from rewas_rt.audio import load_audio

    wave = np.asarray(load_audio(manifest.parent / row["video"], start=float(row.get("start", 0.0))), np.float32)
    return E.normalize_wav(Q.fit_window(wave.reshape(-1)))


def fit_classifier(manifest: Path, log=print):
    """The demo's classifier (``demo_quality.fit_classifier``: logistic regression on log-mel statistics)
    fitted on the train split's real audio, one window per clip; None when the clips have no labels."""
    rows = [r for r in read_clips(manifest, "train") if r.get("label")]
    if len({r["label"] for r in rows}) < 2:
        log("no labelled train split: text-class accuracy is not measured")
        return None
    clf = fit_waves(np.stack([true_wave(manifest, r) for r in rows]), [r["label"] for r in rows])
    log(f"classifier: {len(rows)} train clips, {len(clf.classes_)} classes")
    return clf


# --------------------------------------------------------------------------- generation


def generate_setting(pipe, clips: list[dict], sampler: str, steps: int, interval, base: dict, seed_offset: int = 0):
    """(video waves, control waves, seconds, UNet rows per request) of one setting over every clip."""
    from rewas_rt.pipeline import GenerationOptions, Request

    opts = GenerationOptions(steps=steps, sampler=sampler, guidance=base["guidance"], eta=base["eta"],
                             guidance_interval=interval)
    rows: list[int] = []
    denoise = pipe.denoise
    pipe.denoise = lambda x, t, c: rows.append(len(x)) or denoise(x, t, c)
    video, control = [], []
    t0 = time.perf_counter()
    try:
        for c in clips:  # seed = the clip's index in the split (the same in every shard)
            reqs = [Request(c["caption"], c["index"] + seed_offset, energy=c["phi_curve"]),
                    Request(c["caption"], c["index"] + seed_offset, energy=c["true_curve"])]
            v, k = pipe.generate(reqs, opts)
            video.append(v.waveforms[0])
            control.append(k.waveforms[0])
    finally:
        pipe.denoise = denoise
    return np.stack(video), np.stack(control), time.perf_counter() - t0, sum(rows) / (2 * len(clips))


def logmel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |log-mel(a) − log-mel(b)| (nats) over clips, both normalised as the training data."""
    return float(np.mean([np.mean(np.abs(E.log_mel(E.normalize_wav(x)) - E.log_mel(E.normalize_wav(y))))
                          for x, y in zip(a, b)]))


def per_clip(clips, video, control, clf, ref) -> dict:
    """Every metric per clip (lists in clip order): what shards write and the summary reads."""
    out = {"energy_r": [Q.pearson(Q.energy_curve(c["wave"]), Q.energy_curve(v)) for c, v in zip(clips, video)],
           "control_r": [Q.energy_correlation(c["true_curve"], k)["energy_correlation"]
                         for c, k in zip(clips, control)],
           "class_ok": None, "logmel_dist": None,
           "finite": [bool(np.isfinite(v).all() and np.isfinite(k).all()) for v, k in zip(video, control)]}
    if clf is not None:
        pred = clf.predict(np.stack([features(v) for v in video]))
        out["class_ok"] = [bool(p == c.get("label")) for p, c in zip(pred, clips)]
    if ref is not None:
        out["logmel_dist"] = [0.5 * (logmel_distance(v[None], rv[None]) + logmel_distance(k[None], rk[None]))
                              for v, k, rv, rk in zip(video, control, ref[0], ref[1])]
    return out


def summarise(clip: dict) -> dict:
    """The table's numbers from the per-clip lists: medians of r, share of right classes, mean distance."""
    return {"energy_r": float(np.nanmedian(clip["energy_r"])), "control_r": float(np.nanmedian(clip["control_r"])),
            "class_acc": None if clip["class_ok"] is None else float(np.mean(clip["class_ok"])),
            "logmel_dist_to_ddim200": None if clip["logmel_dist"] is None else float(np.mean(clip["logmel_dist"])),
            "finite": all(clip["finite"])}


def evaluate(args, log=print) -> dict:
    from rewas_rt.pipeline import Pipeline
    from rewas_rt.samplers import model_calls
    from rewas_rt.video import load_video

    settings = [parse_setting(s) for s in args.settings]
    if args.settings[0] != REFERENCE:
        raise SystemExit(f"error: the first setting must be {REFERENCE} (the reference of the log-mel distance)")
    pipe = Pipeline(args.engines, backend="onnxruntime-cpu", threads=args.threads)
    base = pipe.dir.recommended
    if args.guidance is not None:
        base["guidance"] = args.guidance
    if args.eta is not None:
        base["eta"] = args.eta
    clf = fit_classifier(args.data, log) if not args.no_classifier else None
    rows = [{**r, "index": i} for i, r in enumerate(read_clips(args.data, args.split)[: args.limit or None])]
    k, n = args.shard
    rows = rows[k::n]  # this shard's clips (every n-th from the k-th): --merge joins the shards
    if not rows:
        raise SystemExit(f"error: {args.data}: no clips in split {args.split!r}")
    clips = []
    t0 = time.perf_counter()
    for r in rows:  # φ's curve once per clip: every setting reuses it (it does not depend on the sampler)
        wave = true_wave(args.data, r)
        frames = load_video(args.data.parent / r["video"], float(r.get("start", 0.0))).frames
        clips.append({**r, "wave": wave, "true_curve": E.energy_target(wave),
                      "phi_curve": pipe.predict_energy([frames])[0]})
    log(f"{len(clips)} {args.split} clips, energy from video in {time.perf_counter() - t0:.0f}s; "
        f"guidance {base['guidance']:g}, eta {base['eta']:g} (DDIM), guidance interval σ ∈ {tuple(args.guidance_interval)}")
    results, ref = [], None
    plan = [(s, n, gi, 0) for s, n, gi in settings]
    if not args.no_noise_floor:
        plan.insert(1, ("ddim", 200, False, OTHER_SEED))
    for sampler, steps, gi, offset in plan:
        interval = tuple(args.guidance_interval) if gi else None
        video, control, secs, unet_rows = generate_setting(pipe, clips, sampler, steps, interval, base, offset)
        if ref is None:
            ref = (video, control)
        name = f"{sampler} {steps}" + (f", guidance σ∈({interval[0]:g}, {interval[1]:g}]" if gi else "") + \
            (f", other seed (+{offset})" if offset else "")
        clip = per_clip(clips, video, control, clf, ref)
        rec = {"setting": name, "sampler": sampler, "steps": steps, "model_steps": model_calls(sampler, steps),
               "guidance_interval": list(interval) if interval else None, "seed_offset": offset,
               "unet_rows_per_request": unet_rows, "seconds_per_request": secs / (2 * len(clips)),
               **summarise(clip), "per_clip": {"id": [c.get("id", str(i)) for i, c in enumerate(clips)], **clip}}
        results.append(rec)
        log(f"{name:48s} r {rec['energy_r']:+.3f} control {rec['control_r']:+.3f} "
            f"class {_pct(rec['class_acc'])} dist {_num(rec['logmel_dist_to_ddim200'])} "
            f"rows {unet_rows:.0f} {rec['seconds_per_request']:.2f}s/request")
    m = pipe.dir.manifest
    return {"engines": str(args.engines), "model": m.model.name,
            "weights": m.model.weights, "data": str(args.data), "split": args.split, "shard": list(args.shard),
            "clips": len(clips), "guidance": base["guidance"], "eta": base["eta"],
            "classes": None if clf is None else [str(c) for c in clf.classes_],
            "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": shlex.join(["python", "benchmarks/sampler_quality.py", *args.argv]), "results": results}


def merge(reports: list[dict]) -> dict:
    """One report from shard reports of the same settings: per-clip lists joined, then summarised;
    seconds per request averaged over the shards (each timed its own clips)."""
    first = reports[0]
    names = [[r["setting"] for r in rep["results"]] for rep in reports]
    if any(n != names[0] for n in names):
        raise SystemExit("error: --merge: the shards ran different settings")
    results = []
    for i, rec in enumerate(first["results"]):
        recs = [rep["results"][i] for rep in reports]
        clip = {key: None if recs[0]["per_clip"][key] is None else [v for r in recs for v in r["per_clip"][key]]
                for key in recs[0]["per_clip"]}
        secs = float(np.average([r["seconds_per_request"] for r in recs], weights=[len(r["per_clip"]["id"]) for r in recs]))
        results.append({**rec, "seconds_per_request": secs, **summarise(clip), "per_clip": clip})
    return {**first, "clips": sum(rep["clips"] for rep in reports), "shard": None,
            "merged": [rep.get("command") for rep in reports], "results": results}


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


def _num(v, fmt="{:.3f}") -> str:
    return "–" if v is None else fmt.format(v)


def markdown(report: dict) -> str:
    chance = f"; chance {100 / len(report['classes']):.0f} %" if report["classes"] else ""
    lines = [f"Model {report['model']} ({report['weights']}), {report['clips']} {report['split']} clips of "
             f"{report['data']}, seed = clip index, guidance {report['guidance']:g}, DDIM η {report['eta']:g}"
             f"{chance}. {report['created']}.", "",
             "| setting | model steps | UNet rows / request | energy-following r | energy-control r | text-class acc "
             "| log-mel dist to DDIM 200 | s / request |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['setting']} | {r['model_steps']} | {r['unet_rows_per_request']:.0f} | {r['energy_r']:.3f} | "
                     f"{r['control_r']:.3f} | {_pct(r['class_acc'])} | {_num(r['logmel_dist_to_ddim200'])} | "
                     f"{r['seconds_per_request']:.2f} |")
    commands = report.get("merged") or [report["command"]]
    lines += [""] + [f"Command: `{c}`" for c in commands] + [""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="sampler_quality.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", type=Path, help="engine directory (required unless --merge)")
    p.add_argument("--data", type=Path, help="manifest.jsonl of the clips (see the module doc; required unless --merge)")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--limit", type=int, help="first N clips of the split only")
    p.add_argument("--settings", nargs="+", help=f"SAMPLER:STEPS[:gi] (default: {' '.join(DEFAULT_SETTINGS)})")
    p.add_argument("--guidance-interval", type=float, nargs=2, default=DEFAULT_INTERVAL, metavar=("LO", "HI"),
                   help=f"σ range of the ':gi' settings (default {DEFAULT_INTERVAL[0]} {DEFAULT_INTERVAL[1]})")
    p.add_argument("--guidance", type=float, help="CFG scale (default: the manifest's)")
    p.add_argument("--eta", type=float, help="DDIM η (default: the manifest's)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: physical cores)")
    p.add_argument("--no-noise-floor", action="store_true", help="skip the 'DDIM 200, other seed' row")
    p.add_argument("--no-classifier", action="store_true", help="skip text-class accuracy")
    p.add_argument("--quick", action="store_true", help=f"smoke run: 2 clips, {' '.join(QUICK_SETTINGS)}")
    p.add_argument("--shard", type=int, nargs=2, default=(0, 1), metavar=("K", "N"),
                   help="run every N-th clip from the K-th only (N processes in parallel, then --merge)")
    p.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                   help="join shard results (their sampler-quality.json) instead of running; with --out")
    p.add_argument("--out", type=Path, help="write sampler-quality.json and .md here")
    args = p.parse_args(argv)
    if not 0 <= args.shard[0] < args.shard[1]:
        p.error("--shard K N needs 0 <= K < N")
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.quick:
        args.limit = args.limit or 2
        args.settings = args.settings or list(QUICK_SETTINGS)
        args.no_noise_floor = True
    args.settings = args.settings or list(DEFAULT_SETTINGS)
    try:
        [parse_setting(s) for s in args.settings]
        from rewas_rt.guidance import check_interval

        check_interval(args.guidance_interval)
    except ValueError as e:
        p.error(str(e))
    if args.merge:
        missing = [str(f) for f in args.merge if not f.is_file()]
        if missing:
            p.error(f"--merge: not found: {', '.join(missing)}")
        return args
    if args.engines is None or args.data is None:
        p.error("--engines and --data are required (unless --merge)")
    if not (args.engines / "manifest.json").is_file():
        p.error(f"--engines {args.engines}: no manifest.json there")
    if not args.data.is_file():
        p.error(f"--data {args.data}: not found")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    return args


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        report = merge([json.loads(Path(f).read_text()) for f in args.merge])
    else:
        report = evaluate(args, log=lambda m: print(m, file=sys.stderr, flush=True))
    publish(report, markdown(report), args.out, "sampler-quality")
    return 0


if __name__ == "__main__":
    sys.exit(main())
