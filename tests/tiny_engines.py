"""One tiny engine directory per test session, built the way a user builds it:
``python export/build_engines.py --config tiny --random-weights --out DIR`` in a subprocess.

Shared by test_build_engines.py (the CLI, the manifest) and test_export_onnx.py (parity of
the graphs it wrote against in-process PyTorch modules: the random weights are seeded, so
``ModelSource.from_preset("tiny", seed=0)`` here has exactly the weights of the build).
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rewas_rt.manifest import detect_tensorrt

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "export" / "build_engines.py"
SEED = 0


def run_cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script must find the repo itself
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


@functools.lru_cache(maxsize=None)
def tiny_engine_dir() -> tuple[Path, subprocess.CompletedProcess]:
    out = Path(tempfile.mkdtemp(prefix="rewas-tiny-engines-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    args = ["--config", "tiny", "--random-weights", "--out", str(out)]
    if detect_tensorrt() is not None:
        args.append("--no-tensorrt")  # this directory is the no-TensorRT path; TensorRT tests copy it
    proc = run_cli(*args)
    if proc.returncode != 0:
        raise RuntimeError(f"build_engines.py failed:\n{proc.stdout}\n{proc.stderr}")
    return out, proc
