"""Per-stage and end-to-end latency of one ReWaS request, every available backend side by side.

    python benchmarks/latency.py                          # rewas-m random weights, 200 and 25 steps (5 measured)
    python benchmarks/latency.py --quick --engines /tmp/tiny   # CI smoke run: tiny model, 2 steps, 1 repeat

The code lives in ``benchmarks/latency_bench/`` (runners, worker protocol, statistics,
report, CLI); ``--help`` and ``benchmarks/latency_bench/cli.py`` describe the options.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.latency_bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
