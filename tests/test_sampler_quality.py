"""benchmarks/sampler_quality.py end to end on the tiny engines and a 2-clip synthetic set: the
table's rows, and shards merged = one run (the same clips, seeds and numbers)."""
from __future__ import annotations

import json

import pytest

from benchmarks import sampler_quality as SQ
from training.synthetic import SynthConfig, generate_splits

pytest.importorskip("sklearn", reason="the class check needs scikit-learn (rewas-rt[bench])")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sq-data")
    return generate_splits(root, {"train": 2, "test": 1}, seed=5, cfg=SynthConfig(duration=5.44), log=lambda _: None,
                           classes=("impact", "hum"))


def run(tiny_engines, data, out, *extra):
    assert SQ.main(["--engines", str(tiny_engines[0]), "--data", str(data), "--threads", "1", "--no-noise-floor",
                    "--settings", "ddim:200", "dpmpp-2m:4", "dpmpp-2m-sde:4:gi", "--out", str(out), *extra]) == 0
    return json.loads((out / "sampler-quality.json").read_text())


def test_table_and_shards(tiny_engines, data, tmp_path, capsys):
    whole = run(tiny_engines, data, tmp_path / "whole")
    assert whole["clips"] == 2 and whole["model"] == "tiny" and whole["classes"] == ["hum", "impact"]
    ref, fast, gi = whole["results"]
    assert ref["logmel_dist_to_ddim200"] == 0.0 and ref["unet_rows_per_request"] == 400
    assert fast["model_steps"] == 4 and fast["logmel_dist_to_ddim200"] > 0
    assert gi["unet_rows_per_request"] < 8  # single-branch steps outside the interval
    for rec in whole["results"]:
        assert rec["finite"] and len(rec["per_clip"]["energy_r"]) == 2 and rec["class_acc"] in (0.0, 0.5, 1.0)
    md = (tmp_path / "whole" / "sampler-quality.md").read_text()
    assert "| dpmpp-2m 4 | 4 |" in md and "Command: `python benchmarks/sampler_quality.py" in md

    shards = [run(tiny_engines, data, tmp_path / f"s{k}", "--shard", str(k), "2") for k in (0, 1)]
    assert [s["clips"] for s in shards] == [1, 1]
    assert SQ.main(["--merge", str(tmp_path / "s0" / "sampler-quality.json"), str(tmp_path / "s1" / "sampler-quality.json"),
                    "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "sampler-quality.json").read_text())
    for a, b in zip(whole["results"], merged["results"]):
        assert sorted(a["per_clip"]["id"]) == sorted(b["per_clip"]["id"])
        order = [b["per_clip"]["id"].index(i) for i in a["per_clip"]["id"]]
        for key in ("energy_r", "control_r", "class_ok", "logmel_dist"):
            assert [b["per_clip"][key][j] for j in order] == pytest.approx(a["per_clip"][key], abs=1e-6), key
        assert b["energy_r"] == pytest.approx(a["energy_r"], abs=1e-6)
    with pytest.raises(SystemExit):
        SQ.main(["--engines", str(tiny_engines[0]), "--data", str(data), "--shard", "2", "2"])
