"""Measured quality of the built-in demo model on the held-out test split (the README table).

    python benchmarks/demo_quality.py --data runs/demo/data/manifest.jsonl --json benchmarks/results/demo-quality.json
    # or in two processes: --shard 0 2 --json a.json & --shard 1 2 --json b.json; then --merge a.json b.json --json ...

Runs the NumPy runtime (``rewas_rt.pipeline.Pipeline``, ONNX Runtime CPU) on every test clip
(fixed seeds: clip i uses seed i) and scores with ``benchmarks/quality.py``:

* **video**: prompt = the clip's caption, energy predicted from the video (φ). Pearson r
  between the true audio's energy curve and the generated audio's (``quality.energy_curve``:
  512 frames, unsmoothed), and AV-Align of the generated audio with the video, next to the
  true audio's AV-Align;
* **flat**: the same, with a constant curve (the predicted curve's mean: same loudness, no
  timing) instead of the video's — the no-video baseline;
* **control**: the true audio's smoothed energy curve given directly (``--energy-curve``);
  r between that curve and the generated audio's smoothed energy (``quality.energy_correlation``);
* **text**: a logistic-regression classifier on log-mel statistics (per-bin mean, standard
  deviation and mean absolute frame-to-frame change: 192 features) fitted on the *train*
  split's real audio; share of **video** generations classified as the prompted class, and of
  **swap** generations (same video, the bare word of class (k+3) mod 6) classified as the
  swapped class;
* **sanity**: every generated clip finite, peak ≤ 1 and not silent (RMS > 1e-3);
* **before the vocoder**: the same class, swap and energy-r scores on the log-mel the VAE
  decoder hands to the vocoder (the classifier's features are log-mel statistics, so it reads
  a log-mel as well as a waveform): what the diffusion part makes, apart from the vocoder;
* **reconstruction** (test audio, through the engine directory's own graphs): VAE
  (encode → posterior mean → decode) log-mel L1, vocoder (true log-mel → waveform) log-mel
  L1, and both through VAE + vocoder; the classifier's accuracy on the real test audio, and on
  it through the vocoder and through VAE + vocoder (the most the class score can reach with
  this decoder chain).

Requires scikit-learn (``pip install rewas-rt[bench]``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import quality as Q
from rewas_rt import constants as C
from rewas_rt import energy as E

CLASSES = ("impact", "beep", "rain", "whoosh", "knock", "hum")  # training.synthetic.CLASSES
TARGETS = {"energy_r_median": 0.6, "av_align_ratio": 0.8, "control_r_median": 0.8, "class_acc": 0.8,
           "swap_acc": 0.8}


def features(wave: np.ndarray) -> np.ndarray:
    """Log-mel statistics of a waveform: per-bin mean, std and mean |Δ| over frames (192,)."""
    return mel_features(E.log_mel(E.normalize_wav(Q.fit_window(wave))))


def mel_features(lm: np.ndarray) -> np.ndarray:
    """The same statistics of a log-mel (frames × 64 bins)."""
    lm = np.asarray(lm, np.float64)
    return np.concatenate([lm.mean(0), lm.std(0), np.abs(np.diff(lm, axis=0)).mean(0)])


class MelTap:
    """Keeps every log-mel the pipeline's VAE decoder hands to its vocoder (``Pipeline.decode_mel``)."""

    def __init__(self, pipe):
        self.mels: list[np.ndarray] = []
        inner = pipe.decode_mel

        def tap(latent: np.ndarray) -> np.ndarray:
            mel = inner(latent)
            self.mels.extend(mel)
            return mel

        pipe.decode_mel = tap


def fit_classifier(waves: np.ndarray, labels: np.ndarray):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    return clf.fit(np.stack([features(w) for w in waves]), labels)


def read_split(manifest: Path, split: str):
    """(items, waves (N, 81920) normalised, labels) of a split, from the clips' own audio (start 0 windows
    for val/test, every grid window for train), via training-free decoding."""
    from rewas_rt.audio import load_audio

    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("split", "train") == split]
    waves, labels = [], []
    for r in rows:
        full = np.asarray(load_audio(manifest.parent / r["video"], sr=C.SAMPLE_RATE), np.float32).reshape(-1)
        starts = [0.0] if split != "train" else [k * 0.32 for k in range(int((len(full) / C.SAMPLE_RATE
                                                                              - C.WINDOW_SECONDS) / 0.32 + 1e-6) + 1)]
        for s in starts:
            i0 = round(s * C.SAMPLE_RATE)
            waves.append(E.normalize_wav(Q.fit_window(full[i0:])))
            labels.append(CLASSES.index(r["label"]))
    return rows, np.stack(waves), np.asarray(labels)


def sane(w: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(w)) and np.max(np.abs(w)) <= 1.0 and np.sqrt(np.mean(w ** 2)) > 1e-3)


def evaluate(engines: str | Path, manifest: Path, steps: int | None = None, guidance: float | None = None,
             eta: float | None = None, limit: int | None = None, shard: tuple[int, int] = (0, 1), log=print) -> dict:
    from rewas_rt.pipeline import GenerationOptions, Pipeline, Request
    from rewas_rt.video import load_video

    t0 = time.perf_counter()
    pipe = Pipeline(engines, backend="onnxruntime-cpu", threads=1)
    tap = MelTap(pipe)
    rec = pipe.dir.recommended  # the manifest's sampling, as `rewas-rt infer` uses it
    opts = GenerationOptions(**{**rec, **{k: v for k, v in (("steps", steps), ("guidance", guidance), ("eta", eta))
                                          if v is not None}})
    _, train_w, train_y = read_split(manifest, "train")
    clf = fit_classifier(train_w, train_y)
    rows, test_w, test_y = read_split(manifest, "test")
    if limit:
        rows, test_w, test_y = rows[:limit], test_w[:limit], test_y[:limit]
    k, n = shard
    seeds = [i for i in range(len(rows)) if i % n == k]  # seed = the clip's index in the whole split
    rows, test_w, test_y = [rows[i] for i in seeds], test_w[seeds], test_y[seeds]
    log(f"{len(rows)} test clips; classifier fitted on {len(train_w)} train windows; "
        f"{opts.sampler} {opts.steps} steps, guidance {opts.guidance}, eta {opts.eta}")
    per_clip = []
    for i, r, wave, y in zip(seeds, rows, test_w, test_y):
        path = manifest.parent / r["video"]
        clip = load_video(path, 0.0)
        gray, fps = Q.read_video_frames(path)
        phi_curve = pipe.predict_energy([clip.frames])[0]
        true_curve = E.energy_target(wave)
        swap = CLASSES[(y + 3) % len(CLASSES)]
        reqs = [Request(r["caption"], i, frames=clip.frames),
                Request(r["caption"], i, energy=np.full(C.MEL_FRAMES, phi_curve.mean(), np.float32)),
                Request(r["caption"], i, energy=true_curve),
                Request(swap, i, frames=clip.frames)]
        tap.mels.clear()
        video, flat, control, swapped = (res.waveforms[0] for res in pipe.generate(reqs, opts))
        video_mel, swapped_mel = tap.mels[0], tap.mels[3]
        true_e = Q.energy_curve(wave)
        pred = clf.predict(np.stack([features(video), features(swapped),
                                     mel_features(video_mel), mel_features(swapped_mel)]))
        rec = {
            "id": r["id"], "label": r["label"], "caption": r["caption"], "swap_prompt": swap,
            "energy_r": Q.pearson(true_e, Q.energy_curve(video)),
            "energy_r_flat": Q.pearson(true_e, Q.energy_curve(flat)),
            "phi_r": Q.pearson(true_curve, phi_curve),
            "av_align": Q.av_align(gray, fps, video)["av_align"],
            "av_align_flat": Q.av_align(gray, fps, flat)["av_align"],
            "av_align_true": Q.av_align(gray, fps, wave)["av_align"],
            "control_r": Q.energy_correlation(true_curve, control)["energy_correlation"],
            "class_pred": CLASSES[int(pred[0])], "swap_pred": CLASSES[int(pred[1])],
            "energy_r_mel": Q.pearson(true_e, E.energy_from_log_mel(video_mel)),
            "class_pred_mel": CLASSES[int(pred[2])], "swap_pred_mel": CLASSES[int(pred[3])],
            "sane": all(sane(w) for w in (video, control, swapped)),  # the requests a user makes
            "flat_sane": sane(flat),  # the flat-curve probe (a constant curve): reported on its own
        }
        per_clip.append(rec)
        log(f"[clip {i}] {r['id']} {r['label']:7s} r {rec['energy_r']:+.2f} (flat {rec['energy_r_flat']:+.2f}) "
            f"control {rec['control_r']:+.2f} av {rec['av_align']:.2f}/{rec['av_align_true']:.2f} "
            f"class {rec['class_pred']} swap->{rec['swap_pred']} ({swap})")
    for rec, w, y, lab in zip(per_clip, test_w, test_y, reconstruction(pipe, test_w)):
        waves = lab.pop("waves")
        rec.update(lab)
        preds = clf.predict(np.stack([features(w), features(waves[0]), features(waves[1])]))
        rec["real_pred"], rec["vocoder_pred"], rec["vae_vocoder_pred"] = (CLASSES[int(p)] for p in preds)
    return finish({"engines": str(engines), "model": pipe.dir.manifest.model.name,
                   "sampling": {"sampler": opts.sampler, "steps": opts.steps, "guidance": opts.guidance, "eta": opts.eta,
                                "unconditional_hint": pipe.dir.manifest.scheduler.unconditional_hint},
                   "seconds": time.perf_counter() - t0, "clips": per_clip})


def agreement(per_clip: list[dict], predicted: str, truth: str) -> float:
    """Share of clips whose ``predicted`` class is their ``truth`` (a label or the swapped prompt)."""
    return float(np.mean([c[predicted] == c[truth] for c in per_clip]))


def finish(result: dict) -> dict:
    """Add the summary over ``result["clips"]`` (also after merging shards)."""
    per_clip = sorted(result["clips"], key=lambda c: c["id"])
    summary = summarize(per_clip)
    for k in ("vae_recon_logmel_l1", "vocoder_recon_logmel_l1", "vae_vocoder_recon_logmel_l1"):
        summary[k] = float(np.mean([c[k] for c in per_clip]))
    for k, key in (("real_audio", "real_pred"), ("vocoder", "vocoder_pred"), ("vae_vocoder", "vae_vocoder_pred")):
        if all(key in c for c in per_clip):  # results from before a metric existed lack it
            summary[f"classifier_test_acc_{k}"] = agreement(per_clip, key, "label")
    return {**result, "clips": per_clip, "test_clips": len(per_clip), "summary": summary, "targets": TARGETS}


def summarize(per_clip: list[dict]) -> dict:
    def med(k):
        return float(np.nanmedian([c[k] for c in per_clip]))

    def mean(k):
        return float(np.nanmean([c[k] for c in per_clip]))

    s = {"energy_r_median": med("energy_r"), "energy_r_flat_median": med("energy_r_flat"),
         "phi_r_median": med("phi_r"), "av_align_mean": mean("av_align"), "av_align_flat_mean": mean("av_align_flat"),
         "av_align_true_mean": mean("av_align_true"), "control_r_median": med("control_r"),
         "class_acc": agreement(per_clip, "class_pred", "label"),
         "swap_acc": agreement(per_clip, "swap_pred", "swap_prompt"),
         "sane": float(np.mean([c["sane"] for c in per_clip])),
         "flat_sane": float(np.mean([c.get("flat_sane", True) for c in per_clip]))}
    if all("class_pred_mel" in c for c in per_clip):
        s.update(energy_r_mel_median=med("energy_r_mel"),
                 class_acc_mel=agreement(per_clip, "class_pred_mel", "label"),
                 swap_acc_mel=agreement(per_clip, "swap_pred_mel", "swap_prompt"))
    s["av_align_ratio"] = s["av_align_mean"] / s["av_align_true_mean"] if s["av_align_true_mean"] else float("nan")
    s["av_align_flat_ratio"] = (s["av_align_flat_mean"] / s["av_align_true_mean"]
                                if s["av_align_true_mean"] else float("nan"))
    return s


def reconstruction(pipe, waves: np.ndarray) -> list[dict]:
    """Per test clip: the three reconstruction errors, and ``waves`` = (vocoder(true log-mel),
    vocoder(VAE(true log-mel)))."""
    out = []
    for w in waves:
        lm = E.log_mel(w).astype(np.float32)  # w is normalised already
        moments = pipe._run("vae_encoder", mel=lm[None, None])
        rec = pipe.decode_mel(pipe.dir.scale_factor * moments[:, :C.LATENT_SHAPE[0]])[0]
        voc, both = pipe.vocode(np.stack([lm, rec]))
        out.append({"vae_recon_logmel_l1": float(np.mean(np.abs(rec - lm))),
                    "vocoder_recon_logmel_l1": float(np.mean(np.abs(E.log_mel(E.normalize_wav(voc)) - lm))),
                    "vae_vocoder_recon_logmel_l1": float(np.mean(np.abs(E.log_mel(E.normalize_wav(both)) - lm))),
                    "waves": (voc, both)})
    return out


def table(result: dict) -> str:
    s, t = result["summary"], TARGETS

    def ok(v, target):
        return "yes" if v >= target else "**no**"

    lines = [
        "| metric (test split, %d clips; %s %d, guidance %g, eta %g) | demo model | flat-curve baseline | target | met |"
        % (result["test_clips"], result["sampling"].get("sampler", "ddim").upper().replace("PP", "++"),
           result["sampling"]["steps"], result["sampling"]["guidance"], result["sampling"]["eta"]),
        "|---|---|---|---|---|",
        f"| energy r, true vs generated (median) | {s['energy_r_median']:.3f} | {s['energy_r_flat_median']:.3f} | "
        f"≥ {t['energy_r_median']} | {ok(s['energy_r_median'], t['energy_r_median'])} |",
        f"| AV-Align (mean; true audio {s['av_align_true_mean']:.3f}) | {s['av_align_mean']:.3f} "
        f"({s['av_align_ratio']:.2f}×) | {s['av_align_flat_mean']:.3f} ({s['av_align_flat_ratio']:.2f}×) | "
        f"≥ {t['av_align_ratio']}× true | {ok(s['av_align_ratio'], t['av_align_ratio'])} |",
        f"| energy control r, given curve (median) | {s['control_r_median']:.3f} | – | ≥ {t['control_r_median']} | "
        f"{ok(s['control_r_median'], t['control_r_median'])} |",
        f"| prompted class recognised | {100 * s['class_acc']:.0f} % | – | ≥ {100 * t['class_acc']:.0f} % | "
        f"{ok(s['class_acc'], t['class_acc'])} |",
        f"| prompt swap → swapped class | {100 * s['swap_acc']:.0f} % | – | ≥ {100 * t['swap_acc']:.0f} % | "
        f"{ok(s['swap_acc'], t['swap_acc'])} |",
        f"| audio sane (finite, peak ≤ 1, RMS > 1e-3; video, given-curve and swapped-prompt requests) | "
        f"{100 * s['sane']:.0f} % | {100 * s['flat_sane']:.0f} % | 100 % | {ok(s['sane'], 1.0)} |",
        f"| φ energy r (predicted vs true curve, median) | {s['phi_r_median']:.3f} | – | – | – |",
        f"| VAE reconstruction, log-mel L1 (nats) | {s['vae_recon_logmel_l1']:.3f} | – | – | – |",
        f"| vocoder reconstruction, log-mel L1 (nats) | {s['vocoder_recon_logmel_l1']:.3f} | – | – | – |",
        f"| VAE + vocoder reconstruction, log-mel L1 (nats) | {s['vae_vocoder_recon_logmel_l1']:.3f} | – | – | – |",
        f"| classifier on the real test audio | {100 * s['classifier_test_acc_real_audio']:.0f} % | – | – | – |",
    ]
    if "class_acc_mel" in s:
        lines += [
            f"| *before the vocoder:* energy r of the generated log-mel (median) | {s['energy_r_mel_median']:.3f} "
            "| – | – | – |",
            f"| *before the vocoder:* prompted class of the generated log-mel | {100 * s['class_acc_mel']:.0f} % "
            "| – | – | – |",
            f"| *before the vocoder:* prompt swap → swapped class | {100 * s['swap_acc_mel']:.0f} % | – | – | – |",
        ]
    for k, what in (("vocoder", "through the vocoder"), ("vae_vocoder", "through VAE + vocoder")):
        if f"classifier_test_acc_{k}" in s:
            lines.append(f"| classifier on the real test audio {what} | {100 * s[f'classifier_test_acc_{k}']:.0f} % "
                         "| – | – | – |")
    return "\n".join(lines)


from rewas_rt.errors import cli_main  # noqa: E402


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/demo_quality.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default="demo", help="engine directory (default: the built-in demo model)")
    p.add_argument("--data", type=Path, required=True, help="the synthetic set's manifest.jsonl (python -m training.demo)")
    p.add_argument("--steps", type=int, help="DDIM steps (default: the manifest's)")
    p.add_argument("--guidance", type=float)
    p.add_argument("--eta", type=float)
    p.add_argument("--limit", type=int, help="first N test clips only")
    p.add_argument("--shard", type=int, nargs=2, metavar=("K", "N"), default=(0, 1),
                   help="only clips with index %% N == K (run N processes, then --merge their JSONs)")
    p.add_argument("--merge", type=Path, nargs="+", metavar="JSON", help="merge shard results instead of running")
    p.add_argument("--json", type=Path, help="write all results here")
    args = p.parse_args(argv)
    if args.merge:
        parts = [json.loads(f.read_text()) for f in args.merge]
        result = finish({**parts[0], "clips": [c for part in parts for c in part["clips"]],
                         "seconds": sum(part["seconds"] for part in parts)})
    else:
        engines = args.engines
        if engines == "demo":
            from rewas_rt.builtin import demo_engine_dir

            engines = demo_engine_dir()
        result = evaluate(engines, args.data, args.steps, args.guidance, args.eta, args.limit, tuple(args.shard))
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
