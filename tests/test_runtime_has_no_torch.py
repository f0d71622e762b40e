"""rewas_rt must import and run without torch (docs/design.md §2)."""
import pkgutil
import subprocess
import sys

import rewas_rt
from rewas_rt import constants


def test_no_rewas_rt_module_imports_torch():
    modules = [f"rewas_rt.{m.name}" for m in pkgutil.iter_modules(rewas_rt.__path__)]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_info_runs():
    out = subprocess.run([sys.executable, "-m", "rewas_rt.cli", "info"], check=True, capture_output=True, text=True)
    assert f"{constants.SAMPLE_RATE} Hz" in out.stdout
