"""What the demo trainers (VAE, vocoder, CLAP, UNet, video encoder + φ) share besides ``trainlib``:
the command line (``trainlib``'s common arguments; ``--config demo`` reads
``training/configs/<trainer>_demo.json``) and the model sizes of the ``demo`` preset."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from training import trainlib
from training.models import presets


def model_config(cfg: dict, component: str):
    """The component's config from the preset named by ``cfg["model"]``."""
    return presets.preset(cfg["model"])[component]


def main(argv, trainer: str, doc: str, defaults: dict, run: Callable[..., dict], summary: Callable[[dict], str],
         extra_args: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m training.train_{trainer}", description=doc.split("\n\n")[0])
    trainlib.add_common_args(p)
    p.set_defaults(config="demo")
    if extra_args:
        extra_args(p)
    args = p.parse_args(argv)
    try:
        cfg = trainlib.resolve_config(args, trainer, defaults)
        result = run(cfg, Path(args.out), args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    losses = (f", loss {result['first_loss']:.4f} -> {result['final_loss']:.4f}"
              if result.get("first_loss") is not None else "")
    state = "done" if result.get("complete") else "stopped (time budget; --resume continues)"
    print(f"{state}: step {result['step']}{losses}; " + summary(result))
    return 0


def val_summary(result: dict) -> str:
    val = result.get("val") or {}
    return ", ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float))
