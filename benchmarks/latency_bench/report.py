"""The Markdown table of a latency report."""
from __future__ import annotations

from benchmarks.latency_bench import BACKENDS, EAGER, STAGES
from benchmarks.latency_bench.runners import actual_steps, sampler_for


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
        sampler = sampler_for(meta, st)
        if sampler != "ddim":  # the runtime columns; eager always runs the original's DDIM loop
            mark += f" (runtime: {sampler}; eager: DDIM)"
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
        k = actual_steps(ms)
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
