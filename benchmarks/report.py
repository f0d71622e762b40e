"""Writing a benchmark's results: the markdown table to stdout, and with ``--out`` the raw JSON and
the table as ``<name>.json`` / ``<name>.md`` in that folder (what benchmarks/results/ keeps)."""
from __future__ import annotations

import json
from pathlib import Path

from rewas_rt.atomic import atomic_write_text


def publish(report: dict, md: str, out: Path | None, name: str) -> None:
    print(md)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / f"{name}.json", json.dumps(report, indent=1) + "\n")
        atomic_write_text(out / f"{name}.md", md)
