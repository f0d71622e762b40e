"""The `rewas-rt` command line."""
from __future__ import annotations

import argparse
import sys

from rewas_rt import __version__


def _info(_: argparse.Namespace) -> int:
    from rewas_rt import constants as C

    print(f"rewas-rt {__version__}")
    print(f"audio: {C.SAMPLE_RATE} Hz, {C.N_MELS} mel bins, hop {C.HOP}, window {C.WINDOW_SECONDS} s")
    print(f"video: {C.FPS} fps, {C.FRAMES} frames, {C.SEGMENTS} segments of {C.SEGMENT_LEN} frames")
    print(f"sampler defaults: DDIM {C.DDIM_STEPS} steps, guidance {C.GUIDANCE}, eta {C.ETA}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rewas-rt", description="ReWaS: sound for a silent video from a text prompt.")
    parser.add_argument("--version", action="version", version=f"rewas-rt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="show the runtime's model constants").set_defaults(func=_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
