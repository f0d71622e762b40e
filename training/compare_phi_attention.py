"""Train φ twice on the same data — attention over the batch axis (the released model's B=1
behaviour: no temporal context) and over time — and compare their validation energy MAE.

    python -m training.compare_phi_attention --config tiny --random-weights --data DIR/manifest.jsonl --out runs/cmp

Same config, seeds, data order and feature cache for both; only ``phi.attention`` differs.
``--seeds 0 1 2`` repeats the pair per seed and reports the mean. Writes ``<out>/compare.json``
and prints a table; each run's folder is ``<out>/<attention>_seed<k>``.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np

from rewas_rt.atomic import atomic_write_text
from rewas_rt.errors import cli_main
from training import trainlib
from training.components import open_source
from training.data import FeatureStore
from training.train_phi import DEFAULTS, run

LAYOUTS = ("batch", "time")


def compare(cfg: dict, out: Path, source, seeds: list[int], log=print) -> dict:
    trainlib.setup_threads(cfg)
    store = FeatureStore(source, Path(cfg["data"]["cache_dir"]), trainlib.pick_device(cfg["train"]["device"]),
                         cfg["data"]["memory_items"], log=log)
    rows = []
    for seed in seeds:
        for attention in LAYOUTS:
            c = copy.deepcopy(cfg)
            c["seed"] = seed
            c["phi"]["attention"] = attention
            log(f"--- phi attention={attention} seed={seed}")
            r = run(c, out / f"{attention}_seed{seed}", source, store=store, log=log)
            val = r["val"] or {}
            rows.append({"attention": attention, "seed": seed, "first_loss": r["first_loss"],
                         "final_loss": r["final_loss"], "val_energy_mae": val.get("val_energy_mae"),
                         "val_loss": val.get("val_loss"),
                         "val_mae_constant_baseline": val.get("val_mae_constant_baseline"),
                         "train_seconds": r["seconds"]})
    summary = {}
    for attention in LAYOUTS:
        maes = [r["val_energy_mae"] for r in rows if r["attention"] == attention and r["val_energy_mae"] is not None]
        losses = [r["final_loss"] for r in rows if r["attention"] == attention]
        summary[attention] = {"val_energy_mae_mean": float(np.mean(maes)) if maes else None,
                              "val_energy_mae_std": float(np.std(maes)) if maes else None,
                              "final_train_loss_mean": float(np.mean(losses))}
    result = {"steps": cfg["train"]["steps"], "seeds": seeds, "runs": rows, "summary": summary,
              "val_mae_constant_baseline": rows[0]["val_mae_constant_baseline"] if rows else None,
              "metric": "training.data.energy_mae: mean |energy_from_phi(phi(features)) - energy_target(audio)| "
                        "over 512 frames and the validation windows (log-mel units)"}
    atomic_write_text(out / "compare.json", json.dumps(result, indent=1) + "\n")
    return result


def format_table(result: dict) -> str:
    lines = ["attention | seed | train loss first -> last | val energy MAE", "---|---|---|---"]
    for r in result["runs"]:
        mae = f"{r['val_energy_mae']:.4f}" if r["val_energy_mae"] is not None else "-"
        lines.append(f"{r['attention']} | {r['seed']} | {r['first_loss']:.4f} -> {r['final_loss']:.4f} | {mae}")
    for attention, s in result["summary"].items():
        if s["val_energy_mae_mean"] is not None:
            lines.append(f"**{attention}** | mean | | **{s['val_energy_mae_mean']:.4f}** ± {s['val_energy_mae_std']:.4f}")
    if result["val_mae_constant_baseline"] is not None:
        lines.append(f"(constant mean curve) | | | {result['val_mae_constant_baseline']:.4f}")
    return "\n".join(lines)


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.compare_phi_attention", description=__doc__.split("\n\n")[0])
    trainlib.add_common_args(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args(argv)
    if args.resume or args.export_dir:
        p.error("--resume/--export-dir do not apply to a comparison")
    cfg = trainlib.resolve_config(args, "phi", DEFAULTS)
    source = open_source(args.checkpoints, cfg["model"], args.random_weights, cfg["random_weights_seed"],
                         args.tokenizer)
    args.out.mkdir(parents=True, exist_ok=True)
    result = compare(cfg, args.out, source, args.seeds)
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
