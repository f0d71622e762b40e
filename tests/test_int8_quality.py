"""benchmarks/int8_quality.py end to end on tiny engines with both INT8 variants and a 2-clip
synthetic set: the INT8 runs differ from FP32 (measured, not bit-exact) and the report says by how much."""
from __future__ import annotations

import json
import shutil

import pytest

from benchmarks import int8_quality
from tests.tiny_engines import run_cli
from training.synthetic import SynthConfig, generate_splits

pytest.importorskip("sklearn", reason="the class check needs scikit-learn (rewas-rt[bench])")


def test_report(tiny_engines, tmp_path):
    engines = tmp_path / "engines"
    shutil.copytree(tiny_engines[0], engines)
    proc = run_cli("--config", "tiny", "--random-weights", "--out", str(engines), "--int8", "synchformer,unet_adapter")
    assert proc.returncode == 0, proc.stderr
    data = generate_splits(tmp_path / "data", {"train": 1, "test": 1}, seed=7, cfg=SynthConfig(duration=5.44),
                           log=lambda _: None, classes=("impact", "hum"))
    assert int8_quality.main(["--engines", str(engines), "--data", str(data), "--steps", "2",
                              "--out", str(tmp_path / "out")]) == 0
    rep = json.loads((tmp_path / "out" / "int8-quality.json").read_text())
    s, u = rep["summary"]["synchformer"], rep["summary"]["unet_adapter"]
    assert rep["clips"] == 2 and rep["int8"] == {"synchformer": {"mode": "dynamic"}, "unet_adapter": {"mode": "dynamic"}}
    assert 0 < s["curve_mean_abs_diff"] and -1 <= s["curve_r_int8_vs_fp32_median"] <= 1
    assert u["logmel_dist_int8_vs_fp32"] > 0 and u["logmel_dist_other_seed"] > 0
    assert s["seconds_int8"] > 0 and u["seconds_int8"] > 0 and u["class_acc_int8"] in (0.0, 0.5, 1.0)
    assert "| synchformer |" in (tmp_path / "out" / "int8-quality.md").read_text()
    with pytest.raises(SystemExit):  # no variants: refused before any work
        int8_quality.main(["--engines", str(tiny_engines[0]), "--data", str(data)])
