"""The built-in demo model: which engine directory a command uses, in order, and the package
data a non-editable install carries."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rewas_rt import builtin
from rewas_rt.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _local(tmp_path: Path) -> Path:
    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / "manifest.json").write_text("{}")
    return tmp_path


def test_resolution_order(tmp_path):
    demo = builtin.demo_engine_dir()
    cwd = _local(tmp_path)
    env = {"REWAS_ENGINES": "/srv/env-engines"}
    # 1. --engines wins over everything; "demo" names the built-in model
    assert builtin.resolve_engines("/x/y", env, cwd) == (Path("/x/y"), "--engines")
    assert builtin.resolve_engines("demo", env, cwd) == (demo, "--engines")
    # 2. then $REWAS_ENGINES (also "demo")
    assert builtin.resolve_engines(None, env, cwd) == (Path("/srv/env-engines"), "$REWAS_ENGINES")
    assert builtin.resolve_engines(None, {"REWAS_ENGINES": "demo"}, cwd) == (demo, "$REWAS_ENGINES")
    # 3. then ./engines, only when it has a manifest
    assert builtin.resolve_engines(None, {}, cwd) == (cwd / "engines", "./engines")
    (cwd / "engines" / "manifest.json").unlink()
    # 4. else the built-in model
    assert builtin.resolve_engines(None, {}, cwd) == (demo, "built-in")
    assert builtin.resolve_engines("", {"REWAS_ENGINES": ""}, cwd) == (demo, "built-in")


def test_shipped_engine_dir_verifies_and_recommends_sampling():
    from rewas_rt.manifest import open_engine_dir

    d = open_engine_dir(builtin.demo_engine_dir(), checksums=True)
    assert d.manifest.model.name == "demo"
    s = d.sampling_defaults
    assert 1 <= s["steps"] < 200 and s["guidance"] > 1 and 0 <= s["eta"] <= 1
    size = sum(f.stat().st_size for f in builtin.demo_engine_dir().iterdir() if f.is_file())
    assert size <= 40 * 2**20


def test_info_lists_the_builtin_model(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("REWAS_ENGINES", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "built-in: demo model in" in out and "[built-in]" in out and "model demo" in out


def test_missing_builtin_model_is_one_error_line(capsys, monkeypatch, tmp_path):
    from tests.media_files import write_video

    clip = write_video(tmp_path / "clip.mp4", seconds=5.0)
    monkeypatch.setattr(builtin, "demo_engine_dir", lambda: tmp_path / "gone")
    code = main(["infer", str(clip), "rain", "--engines", "demo", "-o", str(tmp_path / "o.wav")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: the built-in demo model is missing") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.wav").exists()


def test_wheel_and_install_carry_the_demo_model(tmp_path):
    """`pip install .` (non-editable) builds a wheel: it must hold every file of the demo engine
    directory, and the installed package must find and verify it."""
    manifest = json.loads((builtin.demo_engine_dir() / "manifest.json").read_text())
    files = {"manifest.json", manifest["tokenizer"]["path"], *(g["onnx"]["path"] for g in manifest["graphs"].values())}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(ROOT)],
                   check=True, timeout=300, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("rewas_rt-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {f"rewas_rt/demo_engines/{f}" for f in files} <= names
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300,
                   capture_output=True)
    code = ("import rewas_rt.builtin as b, rewas_rt.manifest as m; d = b.demo_engine_dir(); "
            "m.open_engine_dir(d, checksums=True); print(d)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(site)
