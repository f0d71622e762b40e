"""CLI: import the released ReWaS checkpoint files into canonical safetensors.

    python -m training.import_checkpoints --src DIR --out checkpoints/

``--configs FILE.json`` ({component: config dict}) imports other sizes than
the released "rewas-m" ones (the reduced reference models, for instance).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rewas_rt.errors import ConfigError, InputError, cli_main
from training.checkpoints import COMPONENTS, CheckpointError, import_checkpoints
from training.models.presets import rewas_m


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.import_checkpoints", description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, required=True, help="folder holding the released checkpoint files")
    p.add_argument("--out", type=Path, required=True, help="output folder for <component>.safetensors/.json")
    p.add_argument("--configs", type=Path, help="JSON {component: config} overriding the rewas-m sizes")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling for files that are not plain tensor pickles (trusted sources only)")
    args = p.parse_args(argv)
    try:
        configs = rewas_m()
        if args.configs:
            for name, cfg in json.loads(args.configs.read_text()).items():
                if name not in COMPONENTS:
                    raise CheckpointError(f"{args.configs}: unknown component '{name}' (known: {', '.join(COMPONENTS)})")
                configs[name] = COMPONENTS[name].config_cls.from_dict(cfg)
        import_checkpoints(args.src, args.out, configs, trust_pickle=args.trust_pickle)
    except OSError as e:  # an unreadable --src/--configs file, a full disk
        raise InputError(str(e)) from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{args.configs}: not valid JSON ({e})") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
