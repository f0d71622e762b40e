"""What the demo trainers (VAE, vocoder, CLAP, UNet, video encoder + φ) share besides ``trainlib``:
the command line (``trainlib``'s common arguments; ``--config demo`` reads
``training/configs/<trainer>_demo.json``) and the model sizes of the ``demo`` preset."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch

from training import trainlib
from training.demo_data import AudioArrays
from training.models import presets


def model_config(cfg: dict, component: str):
    """The component's config from the preset named by ``cfg["model"]``."""
    return presets.preset(cfg["model"])[component]


def start_run(cfg: dict, out: Path, log=print) -> tuple[torch.device, Path, AudioArrays, AudioArrays]:
    """Every demo trainer's start: the run folder with its ``config.json``, the device and
    threads of ``cfg["train"]``, and the train / validation windows' audio arrays of the
    data manifest. Returns (device, manifest path, train, val)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    device = trainlib.pick_device(cfg["train"]["device"])
    trainlib.setup_threads(cfg)
    manifest = Path(cfg["data"]["manifest"])
    return device, manifest, AudioArrays(manifest, "train", log), AudioArrays(manifest, "val", log)


def main(argv, trainer: str, doc: str, defaults: dict, run: Callable[..., dict], summary: Callable[[dict], str],
         extra_args: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    try:
        return trainlib.trainer_main(argv, trainer, doc, defaults, lambda cfg, args: run(cfg, Path(args.out), args),
                                     summary, extra_args, default_config="demo")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def val_summary(result: dict) -> str:
    val = result.get("val") or {}
    return ", ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float))
