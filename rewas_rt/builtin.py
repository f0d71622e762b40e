"""The built-in demo model: a small ReWaS trained end to end on synthetic data (``training.demo``),
installed with the package as an engine directory (ONNX graphs, ``tokenizer.json``,
``manifest.json``) in ``rewas_rt/demo_engines/``.

It makes the six synthetic sound classes of ``training.synthetic`` (impact, beep, rain, whoosh,
knock, hum) follow a video's visible events; it knows nothing else. Which engine directory a
command uses (``resolve_engines``), first match wins:

1. ``--engines DIR`` (``--engines demo``: the built-in model);
2. ``$REWAS_ENGINES`` (likewise ``demo``);
3. ``./engines`` when it holds a ``manifest.json``;
4. the built-in demo model.
"""
from __future__ import annotations

import os
from pathlib import Path

DEMO_NAME = "demo"
ENV = "REWAS_ENGINES"
LOCAL = Path("engines")


def demo_engine_dir() -> Path:
    """Where the package's demo engine directory is installed (it may be missing in a broken install)."""
    return Path(__file__).resolve().parent / "demo_engines"


def resolve_engines(arg: str | os.PathLike | None, environ=os.environ, cwd: Path | None = None) -> tuple[Path, str]:
    """(engine directory, why it was chosen) by the order above."""
    def named(value: str) -> Path:
        return demo_engine_dir() if str(value) == DEMO_NAME else Path(value)

    if arg not in (None, ""):
        return named(str(arg)), "--engines"
    if environ.get(ENV):
        return named(environ[ENV]), f"${ENV}"
    local = (cwd or Path.cwd()) / LOCAL
    if (local / "manifest.json").is_file():
        return LOCAL if cwd is None else local, "./engines"
    return demo_engine_dir(), "built-in"


BUILTIN_NOTE = ("using the built-in demo model (synthetic impacts, beeps, rain, whooshes, knocks and hums only; "
                "pass --engines DIR for the released model)")
