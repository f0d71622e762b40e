"""export/fp16_graph.py: FP16 graphs with the FP32 islands fp16_check finds, made by ONNX Runtime's
float16 converter and checked against FP32 in ONNX Runtime on the CPU."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export import fp16_check
from export import fp16_graph as F
from export.tensorrt_build import ENGINE_RTOL
from tests.test_fp16_check import Overflow, TimestepEmbedding, export

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16


def io_types(path) -> dict[str, int]:
    g = onnx.load(str(path), load_external_data=False).graph
    return {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.output)}


@pytest.fixture
def overflow(tmp_path):
    path = tmp_path / "overflow.onnx"
    feeds = export(Overflow(), torch.full((2, 8), 100.0) + torch.arange(8.0), path)
    return path, feeds


def test_fp32_islands_are_kept_and_the_graph_passes_the_engine_tolerance(overflow, tmp_path):
    path, feeds = overflow
    rep = fp16_check.check_graph(path, feeds)
    assert rep.fp32_layers  # the check found nodes that overflow in FP16
    dst = tmp_path / "overflow.fp16.onnx"
    info = F.convert(path, dst, rep.fp32_layers)
    assert info["fp32_nodes"] == len(rep.fp32_layers) and info["casts"] > 0
    types = F.graph_types(dst)
    for name in rep.fp32_layers:
        if name in types:  # a node with a float output: FP32
            assert types[name] == FLOAT, name
    assert any(t == FLOAT16 for n, t in types.items() if n not in rep.fp32_layers)  # the rest is FP16
    assert set(io_types(dst).values()) == {FLOAT}  # the contract's float32 I/O is kept
    cmp = F.check(path, dst, [feeds])
    assert cmp["ok"] and 0 < cmp["rel"] <= ENGINE_RTOL and cmp["tolerance"] == ENGINE_RTOL


def test_without_the_islands_the_same_graph_fails_the_check(overflow, tmp_path):
    path, feeds = overflow
    dst = tmp_path / "all_half.fp16.onnx"
    F.convert(path, dst, [])
    cmp = F.check(path, dst, [feeds])
    assert not cmp["ok"] and not cmp["rel"] <= ENGINE_RTOL  # inf/NaN or far off: the islands matter


def test_trig_islands(tmp_path):
    path = tmp_path / "temb.onnx"
    feeds = export(TimestepEmbedding(), torch.tensor([999, 500, 3]), path, name="t")
    rep = fp16_check.check_graph(path, feeds)
    kept = tmp_path / "kept.fp16.onnx"
    bare = tmp_path / "bare.fp16.onnx"
    F.convert(path, kept, rep.fp32_layers)
    F.convert(path, bare, [])
    good, bad = F.check(path, kept, [feeds]), F.check(path, bare, [feeds])
    assert good["ok"] and good["rel"] < 1e-3
    assert bad["rel"] > 10 * good["rel"]  # cos(999) with an FP16 argument is off by ~0.25


def unnamed_graph(path):
    """y = Sin(x * 300) + 1 with nodes that have no names (as some exporters write them)."""
    nodes = [helper.make_node("Mul", ["x", "k"], ["xk"]), helper.make_node("Sin", ["xk"], ["s"]),
             helper.make_node("Add", ["s", "one"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", FLOAT, ["batch", 4])],
                              [numpy_helper.from_array(np.array(300.0, np.float32), "k"),
                               numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))
    return {"x": np.linspace(0, 3, 8, dtype=np.float32).reshape(2, 4)}


def test_unnamed_nodes_get_the_tensorrt_parser_name(tmp_path):
    path = tmp_path / "g.onnx"
    feeds = unnamed_graph(path)
    rep = fp16_check.check_graph(path, feeds)
    # onnx-tensorrt names an unnamed node "node_of_<first output>": the check reports that name.
    assert {"node_of_xk", "node_of_s"} <= set(rep.fp32_layers), rep.fp32_layers
    dst = tmp_path / "g.fp16.onnx"
    info = F.convert(path, dst, rep.fp32_layers)
    assert info["renamed_unnamed_nodes"] == 3
    types = F.graph_types(dst)
    assert types["node_of_s"] == FLOAT and types["node_of_xk"] == FLOAT
    assert F.check(path, dst, [feeds])["ok"]


def test_fp32_nodes_of_another_graph_are_refused(tmp_path):
    path = tmp_path / "g.onnx"
    unnamed_graph(path)
    with pytest.raises(F.Fp16GraphError, match=r"1 FP32 node\(s\) are not in the graph \(e\.g\. '/unet/Cos'\)"):
        F.convert(path, tmp_path / "g.fp16.onnx", ["/unet/Cos"])
    assert not (tmp_path / "g.fp16.onnx").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx"]


def test_external_data_in_and_out(overflow, tmp_path):
    path, feeds = overflow
    ext = tmp_path / "ext"
    ext.mkdir()
    onnx.save_model(onnx.load(str(path)), str(ext / "g.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="g.onnx.data", size_threshold=0)
    rep = fp16_check.check_graph(path, feeds)
    info = F.convert(ext / "g.onnx", ext / "g.fp16.onnx", rep.fp32_layers, external_data=True)
    # The source's weights resolve from its data file; the tiny FP16 weights (< 1 KiB each) stay inline.
    assert not info["weights_in_data_file"]
    assert sorted(p.name for p in ext.iterdir()) == ["g.fp16.onnx", "g.onnx", "g.onnx.data"]
    assert F.check(ext / "g.onnx", ext / "g.fp16.onnx", [feeds])["ok"]


def test_large_weights_go_to_one_data_file(tmp_path):
    path = tmp_path / "mlp.onnx"
    feeds = export(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU()), torch.randn(2, 64), path)
    info = F.convert(path, tmp_path / "mlp.fp16.onnx", [], external_data=True)
    assert info["weights_in_data_file"] and (tmp_path / "mlp.fp16.onnx.data").stat().st_size >= 64 * 64 * 2
    assert F.check(path, tmp_path / "mlp.fp16.onnx", [feeds])["ok"]
