"""export/fp16_check.py: the FP16 emulation and the rules that pick FP32 layers, on small
synthetic graphs built to overflow (random tiny weights never do)."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from export import fp16_check as F


def export(module: nn.Module, x: torch.Tensor, path, name: str = "x") -> dict[str, np.ndarray]:
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter notice, tracer warnings
        torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=18, input_names=[name],
                          output_names=["y"])
    return {name: x.numpy()}


class Overflow(nn.Module):
    """Linear whose output reaches ~4e5 (> 65504), then LayerNorm and a Linear: finite in
    FP32, inf/NaN when activations are stored in FP16."""

    def __init__(self):
        super().__init__()
        self.big = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 4)
        with torch.no_grad():
            self.big.weight.fill_(500.0)
            self.big.bias.zero_()

    def forward(self, x):
        return self.head(self.norm(self.big(x)))


@pytest.fixture
def overflow(tmp_path):
    path = tmp_path / "overflow.onnx"
    feeds = export(Overflow(), torch.full((2, 8), 100.0) + torch.arange(8.0), path)
    return path, feeds


def node_names(path) -> dict[str, str]:
    return {n.name: n.op_type for n in onnx.load(str(path)).graph.node}


def test_overflow_is_found_and_fixed_by_the_rules(overflow):
    path, feeds = overflow
    rep = F.check_graph(path, feeds)
    assert rep.all_fp16["nonfinite"], "every node in FP16 must overflow here"
    assert not rep.mitigated["nonfinite"] and rep.mitigated["rel"] < 1e-2
    ops = node_names(path)
    kept = {ops[n] for n in rep.fp32_layers}
    assert set(rep.fp32_layers) <= set(ops)  # ONNX node names, what TensorRT layers are named after
    assert "LayerNormalization" in kept and ({"Gemm"} & kept or {"MatMul", "Add"} <= kept)
    assert any(r.startswith("overflow") for r in rep.reasons.values())
    assert rep.max_activation > 65504


def test_overflow_is_found_by_the_emulation_when_the_rules_miss_it(overflow):
    """With the thresholds disabled, the first node making inf/NaN is found from the FP16 run."""
    path, feeds = overflow
    rep = F.check_graph(path, feeds, headroom=1e-9)
    assert rep.all_fp16["nonfinite"] and not rep.mitigated["nonfinite"]
    assert rep.fp32_layers and all(r.startswith("nonfinite_fp16") for r in rep.reasons.values())


class NormOnLargeInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.GroupNorm(2, 4)

    def forward(self, x):
        return self.norm(x * 300.0)


def test_norm_whose_variance_would_overflow_is_kept_fp32(tmp_path):
    path = tmp_path / "norm.onnx"
    feeds = export(NormOnLargeInputs(), torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), path)
    rep = F.check_graph(path, feeds)
    ops = node_names(path)
    assert [ops[n] for n in rep.fp32_layers if ops[n] != "Constant"] == ["InstanceNormalization"]
    assert {r.split(":")[0] for r in rep.reasons.values()} <= {"norm", "constant"}
    assert not rep.all_fp16["nonfinite"]  # storage alone survives: it is the kernel's sum of squares


class TimestepEmbedding(nn.Module):
    def forward(self, t):
        args = t[:, None].float() * torch.exp(-torch.arange(4.0) * 2.0)[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def test_large_trig_arguments_are_kept_fp32(tmp_path):
    path = tmp_path / "temb.onnx"
    feeds = export(TimestepEmbedding(), torch.tensor([999, 500, 3]), path, name="t")
    rep = F.check_graph(path, feeds)
    ops = node_names(path)
    assert {ops[n] for n in rep.fp32_layers} - {"Constant"} == {"Mul", "Cos", "Sin"}
    assert rep.all_fp16["rel"] > 1e-2 > rep.mitigated["rel"]  # cos(999) in FP16 is off by ~0.25


def test_a_benign_graph_needs_no_fp32_layers(tmp_path):
    path = tmp_path / "mlp.onnx"
    m = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 4))
    feeds = export(m, torch.randn(3, 16, generator=torch.Generator().manual_seed(0)), path)
    rep = F.check_graph(path, feeds)
    assert rep.fp32_layers == [] and not rep.all_fp16["nonfinite"]
    assert 0 < rep.all_fp16["rel"] < 1e-2  # FP16 rounding is visible but small
    d = rep.to_dict()
    assert d["fp32_layers"] == 0 and d["all_fp16"] == d["with_fp32_layers"]


def test_external_data_graph(tmp_path, overflow):
    """The rewritten graph is saved beside the original, so an external-data file resolves."""
    path, feeds = overflow
    model = onnx.load(str(path))
    ext = tmp_path / "ext"
    ext.mkdir()
    onnx.save_model(model, str(ext / "g.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="g.onnx.data", size_threshold=0)
    rep = F.check_graph(ext / "g.onnx", feeds)
    assert rep.fp32_layers == F.check_graph(path, feeds).fp32_layers
    assert sorted(p.name for p in ext.iterdir()) == ["g.onnx", "g.onnx.data"]  # no temporary files left


def test_cli_on_a_graph_file(tmp_path, capsys):
    m = nn.Sequential(nn.Linear(64, 64))
    path = tmp_path / "phi.onnx"  # the CLI infers inputs from the graph name
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(1, 112, 64),), str(path), dynamo=False, opset_version=18,
                          input_names=["features"], output_names=["energy"],
                          dynamic_axes={"features": {0: "batch"}, "energy": {0: "batch"}})
    out = tmp_path / "r.json"
    assert F.main([str(path), "--json", str(out)]) == 0
    r = json.loads(out.read_text())["phi"]
    assert r["fp32_layers"] == [] and math.isfinite(r["all_fp16"]["rel"])
    capsys.readouterr()
    assert F.main([str(tmp_path / "nope.onnx")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.onnx'} does not exist\n"
    assert F.main([str(out)]) == 1  # r.json
    assert "r.json: not an ONNX model" in capsys.readouterr().err
    renamed = tmp_path / "sub" / "model.onnx"  # recognised by its inputs/outputs, not its file name
    renamed.parent.mkdir()
    path.rename(renamed)
    assert F.main([str(renamed.parent), "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())) == {"phi"}
