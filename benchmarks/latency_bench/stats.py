"""Medians, extrapolation of step counts that were not run in full, ratios between backends."""
from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from benchmarks.latency_bench import EAGER, STAGES
from benchmarks.latency_bench.runners import actual_steps


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
        actual = actual_steps(s)
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
