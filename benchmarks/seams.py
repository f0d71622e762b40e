"""Are the joins between generation windows audible? Loudness and spectral-flux jumps at the
joins against the same measures inside windows, for each way of joining (rewas_rt/windows.py).

    python benchmarks/seams.py --engines /tmp/tiny --seconds 20 --steps 10 --seeds 3
    python benchmarks/seams.py --engines engines/rewas-m --steps 50 --out benchmarks/results --name seams-rewas-m

The clip is synthetic with a known continuous sound: its energy curve (the curve drives the
sound's loudness, rewas_rt/energy_control.py) is a slow sine around a constant level, the
same for every method, so every jump in the result comes from the generation and its joins.
The windows are generated once per latent method ("repaint": the overlap continues the
previous window; "independent": each window on its own) and then joined by each waveform
fade; "hard cut" (a 1-sample fade of independent windows) shows what an unhidden seam scores.

Measures, at every position p on a 10 ms grid (``seam_profile``): the loudness jump
|L(before) − L(after)| in dB between the 25 ms just before and just after p, and the
spectral flux between the magnitude spectra of the 64 ms just before and after p
(‖|A|−|B|‖ / ‖(|A|+|B|)/2‖). "joins" = positions inside the overlaps of two windows,
"inside" = every other position. A join passes (``continuous``) when its 95th percentile and
its maximum are within ``tolerance`` × those inside.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import publish  # noqa: E402
from rewas_rt import constants as C  # noqa: E402
from rewas_rt.windows import FRAME_SAMPLES, WINDOW, WindowPlan  # noqa: E402

GRID = C.HOP  # 10 ms
LOUD_WIN = 400  # 25 ms
FLUX_WIN = 1024  # 64 ms


def _db(x: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(np.mean(np.square(x, dtype=np.float64), axis=-1) + 1e-10)


def seam_profile(wave: np.ndarray, sr: int = C.SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions, loudness jump dB, spectral flux) on a 10 ms grid of a mono waveform."""
    wave = np.asarray(wave, dtype=np.float64)
    pos = np.arange(FLUX_WIN, wave.size - FLUX_WIN + 1, GRID)
    view = np.lib.stride_tricks.sliding_window_view
    before = view(wave, LOUD_WIN)[pos - LOUD_WIN]
    after = view(wave, LOUD_WIN)[pos]
    loud = np.abs(_db(before) - _db(after))
    hann = np.hanning(FLUX_WIN)
    a = np.abs(np.fft.rfft(view(wave, FLUX_WIN)[pos - FLUX_WIN] * hann, axis=-1))
    b = np.abs(np.fft.rfft(view(wave, FLUX_WIN)[pos] * hann, axis=-1))
    flux = np.linalg.norm(a - b, axis=-1) / (np.linalg.norm((a + b) / 2, axis=-1) + 1e-12)
    return pos, loud, flux


def join_mask(pos: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """True at positions inside an overlap of two windows."""
    mask = np.zeros(pos.shape, bool)
    for k in range(1, len(plan)):
        lo = plan.starts[k] * FRAME_SAMPLES
        hi = (plan.starts[k - 1] + WINDOW) * FRAME_SAMPLES
        mask |= (pos >= lo) & (pos < hi)
    return mask


def seam_report(wave: np.ndarray, plan: WindowPlan, tolerance: float = 1.5) -> dict:
    """Loudness/flux jump statistics at joins vs inside windows, and whether the joins pass."""
    pos, loud, flux = seam_profile(wave)
    at = join_mask(pos, plan)
    out: dict = {}
    for name, v in (("loudness_db", loud), ("flux", flux)):
        j, i = v[at], v[~at]
        out[name] = {
            "joins": {"median": float(np.median(j)), "p95": float(np.percentile(j, 95)), "max": float(j.max())},
            "inside": {"median": float(np.median(i)), "p95": float(np.percentile(i, 95)), "max": float(i.max())},
        }
        out[name]["p95_ratio"] = out[name]["joins"]["p95"] / out[name]["inside"]["p95"]
        out[name]["max_ratio"] = out[name]["joins"]["max"] / out[name]["inside"]["max"]
    out["continuous"] = all(out[n][r] <= tolerance for n in ("loudness_db", "flux") for r in ("p95_ratio", "max_ratio"))
    return out


# Latent methods (each generated once): WindowOptions fields besides the overlap.
GROUPS = {
    "repaint": {"join": "repaint"},  # the default: constraint fading out over the overlap's second half
    "repaint, hard edge": {"join": "repaint", "crossfade": "overlap"},  # ramp 0: replaced up to the edge
    "independent": {"join": "crossfade"},
}
# Joins compared: name -> (latent method, WindowOptions fields for the waveform fade).
METHODS = {
    "repaint + linear (default)": ("repaint", {}),
    "repaint + equal-power": ("repaint", {"fade": "equal-power"}),
    "repaint, hard edge + linear over the overlap": ("repaint, hard edge", {}),
    "crossfade + equal-power": ("independent", {"fade": "equal-power"}),
    "crossfade + linear": ("independent", {"fade": "linear"}),
    "crossfade over the whole overlap + equal-power": ("independent", {"fade": "equal-power", "crossfade": "overlap"}),
    "hard cut (independent, no fade)": ("independent", {"crossfade": 1 / C.SAMPLE_RATE}),
}


def _options(overlap: float, *fields: dict):
    from rewas_rt.windows import WindowOptions

    kw = {"overlap": overlap}
    for f in fields:
        kw.update({k: overlap if v == "overlap" else v for k, v in f.items()})
    return WindowOptions(**kw)


def synthetic_curve(frames: int) -> np.ndarray:
    """Energy (mean log-mel) of a steady sound with a slow, smooth swell: −6 ± 1 over 7 s."""
    t = np.arange(frames * 4) / 100.0
    return (-6.0 + np.sin(2 * np.pi * t / 7.0)).astype(np.float32)


def compare(engines: str, seconds: float, steps: int, seeds: int, overlap: float, threads: int | None) -> dict:
    from rewas_rt.pipeline import GenerationOptions, Pipeline, VideoRequest
    from rewas_rt.windows import plan_windows

    pipe = Pipeline(engines, backend="onnxruntime-cpu", threads=threads)
    plan = plan_windows(round(seconds * C.FPS), _options(overlap).overlap_frames)
    curve = synthetic_curve(plan.frames)
    if True:  # the energy is given, so the clip needs no video
        results: dict = {"plan": {"frames": plan.frames, "starts": list(plan.starts)}, "methods": {}}
        waves: dict = {}
        for group, fields in GROUPS.items():
            opts = GenerationOptions(steps=steps, candidates=seeds, windows=_options(overlap, fields))
            request = VideoRequest("steady rain", 1, "<synthetic>", energy=curve)
            t0 = time.perf_counter()
            waves[group] = [w for _, w in pipe.window_waves(request, opts, plan, curve)]
            results[f"seconds {group}"] = time.perf_counter() - t0
        _score(results, waves, plan, overlap, seeds)
    return results


# ---- a generator whose right answer is known ----------------------------------------------------


class GaussianProcessModel:
    """The exact DDIM noise predictor for latents whose frames follow a known smooth random
    process: every channel's time series is a Gaussian process with a squared-exponential
    kernel (``length`` frames), so E[ε | x_t] = √(1−ᾱ)·(ᾱΣ + (1−ᾱ)I)⁻¹·x_t along time. Sampling
    it draws smooth curves; continuing one across windows is exactly what the joins must do."""

    def __init__(self, length: float = 8.0, frames: int = WINDOW):
        from rewas_rt.ddim import linear_schedule

        t = np.arange(frames)
        cov = np.exp(-0.5 * ((t[:, None] - t[None, :]) / length) ** 2) + 1e-4 * np.eye(frames)
        self.lam, self.u = np.linalg.eigh(cov)
        self.acp = linear_schedule()[1]

    def __call__(self, x: np.ndarray, t: np.ndarray, conditions) -> np.ndarray:
        a = self.acp[int(t[0])]
        coef = np.sqrt(1 - a) / (a * self.lam + 1 - a)
        z = np.einsum("tk,bckf->bctf", self.u, np.einsum("tk,bctf->bckf", self.u, x) * coef[:, None])
        return z.astype(np.float32)


PARTIALS = 220.0 * np.arange(1, 9)  # one partial per latent channel


def synth(latent: np.ndarray, start_frame: int) -> np.ndarray:
    """A deterministic "decoder" (batch, 8, 128, 1) -> (batch, 81920): channel m sets the
    amplitude envelope of partial m, phases on the clip's clock, so equal latents give equal sound
    (as a vocoder does from equal mels) and smooth latents give continuous sound."""
    frames = latent.shape[2]
    env = 0.03 * np.exp(0.5 * latent[..., 0])  # (b, 8, frames)
    pos = (np.arange(frames * FRAME_SAMPLES) + 0.5) / FRAME_SAMPLES - 0.5
    env = np.stack([[np.interp(pos, np.arange(frames), e) for e in b] for b in env])
    t = (start_frame * FRAME_SAMPLES + np.arange(frames * FRAME_SAMPLES)) / C.SAMPLE_RATE
    tones = np.sin(2 * np.pi * PARTIALS[:, None] * t[None, :])
    return np.einsum("bms,ms->bs", env, tones).astype(np.float32)


def oracle_windows(plan: WindowPlan, options, steps: int, seeds: int, seed: int = 0) -> list[np.ndarray]:
    """Latents (seeds, 8, 128, 1) of every window from the Gaussian-process model, joined in latent
    space as ``options`` say (the same constraint code as the pipeline)."""
    from rewas_rt.ddim import make_schedule, sample
    from rewas_rt.windows import overlap_constraint

    model, schedule = GaussianProcessModel(), make_schedule(steps, 1.0)
    rng = np.random.default_rng(seed)
    empty = {"c": np.zeros((seeds, 1), np.float32)}
    latents: list[np.ndarray] = []
    for k in range(len(plan)):
        constrain = None
        if k and options.join == "repaint":
            ov = plan.overlap(k)
            constrain = overlap_constraint(latents[-1][:, :, WINDOW - ov:],
                                           lambda sh: rng.standard_normal(sh, dtype=np.float32),
                                           options.ramp_frames(ov))
        latents.append(sample(model, rng.standard_normal((seeds, 8, WINDOW, 1), dtype=np.float32), empty, empty,
                              schedule, 1.0, lambda i, sh: rng.standard_normal(sh, dtype=np.float32),
                              constrain=constrain))
    return latents


def oracle_compare(seconds: float, steps: int, seeds: int, overlap: float) -> dict:
    """The METHODS on the Gaussian-process model + partials decoder."""
    from rewas_rt.windows import plan_windows

    plan = plan_windows(round(seconds * C.FPS), _options(overlap).overlap_frames)
    results: dict = {"plan": {"frames": plan.frames, "starts": list(plan.starts)}, "methods": {}, "latent_steps": {}}
    waves = {}
    for group, fields in GROUPS.items():
        options = _options(overlap, fields)
        latents = oracle_windows(plan, options, steps, seeds)
        waves[group] = [synth(lat, s) for lat, s in zip(latents, plan.starts)]
        results["latent_steps"][group] = latent_steps(latents, plan, options)
    _score(results, waves, plan, overlap, seeds)
    return results


def latent_steps(latents: list[np.ndarray], plan: WindowPlan, options) -> dict:
    """Frame-to-frame steps |Δz| of the latent track as the joins use it (window k−1 up to the end
    of the crossfade, window k after it): largest in the overlaps vs inside (99th percentile, max)."""
    joins, inside = [], []
    for k in range(1, len(plan)):
        shift, ov = plan.starts[k] - plan.starts[k - 1], plan.overlap(k)
        cut = ov - options.ramp_frames(ov) if options.join == "repaint" else ov // 2
        track = np.concatenate([latents[k - 1][:, :, :shift + cut], latents[k][:, :, cut:]], axis=2)
        d = np.abs(np.diff(track[..., 0], axis=2))
        joins.append(d[:, :, shift - 1:shift + ov + 1].ravel())
        first = plan.overlap(k - 1) + 1 if k > 1 else 0  # window k−1 outside its own first overlap
        inside.append(d[:, :, first:shift - 1].ravel())
    j, i = np.concatenate(joins), np.concatenate(inside)
    return {"joins_max": float(j.max()), "joins_p99": float(np.percentile(j, 99)),
            "inside_max": float(i.max()), "inside_p99": float(np.percentile(i, 99))}


def _score(results: dict, waves: dict, plan: WindowPlan, overlap: float, seeds: int) -> None:
    for name, (group, fields) in METHODS.items():
        joiner = _options(overlap, GROUPS[group], fields).joiner(plan, seeds)
        for k, w in enumerate(waves[group]):
            joiner.add(k, w)
        reports = [seam_report(wave, plan) for wave in joiner.result()]
        results["methods"][name] = {
            "per_seed": reports,
            "loudness_p95_ratio": float(np.median([r["loudness_db"]["p95_ratio"] for r in reports])),
            "loudness_max_ratio": float(np.median([r["loudness_db"]["max_ratio"] for r in reports])),
            "flux_p95_ratio": float(np.median([r["flux"]["p95_ratio"] for r in reports])),
            "flux_max_ratio": float(np.median([r["flux"]["max_ratio"] for r in reports])),
            "continuous": sum(r["continuous"] for r in reports),
        }
    # How alike the two windows' sounds are in their overlap, before any fade (why the fade matters).
    for group in GROUPS:
        corr = []
        for k in range(1, len(plan)):
            a0 = (plan.starts[k] - plan.starts[k - 1]) * FRAME_SAMPLES
            prev, cur = waves[group][k - 1][:, a0:], waves[group][k][:, :C.WAVE_SAMPLES - a0]
            corr += [float(np.corrcoef(p, c)[0, 1]) for p, c in zip(prev, cur)]
        results["overlap_correlation"] = {**results.get("overlap_correlation", {}), group: float(np.median(corr))}


def table(results: dict) -> str:
    rows = ["| method | loudness jump p95 joins/inside | max | flux p95 joins/inside | max | seeds continuous |",
            "|---|---|---|---|---|---|"]
    for name, r in results["methods"].items():
        n = len(r["per_seed"])
        rows.append(f"| {name} | {r['loudness_p95_ratio']:.2f} | {r['loudness_max_ratio']:.2f} | "
                    f"{r['flux_p95_ratio']:.2f} | {r['flux_max_ratio']:.2f} | {r['continuous']}/{n} |")
    rows.append("")
    corr = ", ".join(f"{g} {c:.3f}" for g, c in results["overlap_correlation"].items())
    rows.append(f"correlation of two windows' waveforms in their overlap, before fading (median): {corr}")
    return "\n".join(rows)


from rewas_rt.errors import cli_main  # noqa: E402


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", help="engine directory (the real pipeline); without it only the oracle runs")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3, help="candidates (each its own seed stream), batched")
    p.add_argument("--overlap", type=float, default=1.28)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, help="write NAME.json (raw results) and NAME.md (the tables) here")
    p.add_argument("--name", default="seams-run", help="file name stem of the results (default seams-run)")
    args = p.parse_args(argv)
    results = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    results["oracle"] = oracle_compare(args.seconds, args.steps, args.seeds, args.overlap)
    md = ["Gaussian-process model + partials decoder (known continuous sound):", "", table(results["oracle"]), "",
          "latent |Δz| per frame, joins vs inside (max; p99):", ""]
    for g, r in results["oracle"]["latent_steps"].items():
        md.append(f"    {g:20s} joins {r['joins_max']:.3f}; {r['joins_p99']:.3f}   inside {r['inside_max']:.3f}; "
                  f"{r['inside_p99']:.3f}")
    if args.engines:
        results["pipeline"] = compare(args.engines, args.seconds, args.steps, args.seeds, args.overlap, args.threads)
        md += ["", f"rewas_rt pipeline on {args.engines}:", "", table(results["pipeline"])]
    publish(results, "\n".join(md) + "\n", args.out, args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
