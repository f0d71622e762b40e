"""export/tensorrt_build.py on the TensorRT stand-in (tests/fake_tensorrt.py), for the 10.x and 11.x
API surfaces: network typing chosen by version, FP32 pins and their name matching, timing caches."""
from __future__ import annotations

import json
import logging
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export import fp16_check
from export import fp16_graph as F
from export import tensorrt_build as TB
from rewas_rt.graphs import GraphSpec, TensorSpec
from tests import fake_tensorrt as fake
from tests.test_fp16_check import TimestepEmbedding, export

SPEC = GraphSpec("temb", (TensorSpec("t", "int64", ("batch",)),), (TensorSpec("y", "float32", ("batch", 8)),), "")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The timestep embedding (Sin/Cos of up to 999 rad: FP32 islands) in FP32 and FP16."""
    d = tmp_path_factory.mktemp("temb")
    feeds = export(TimestepEmbedding(), torch.tensor([999, 500, 3]), d / "temb.onnx", name="t")
    rep = fp16_check.check_graph(d / "temb.onnx", feeds)
    F.convert(d / "temb.onnx", d / "temb.fp16.onnx", rep.fp32_layers)
    return d, rep.fp32_layers


def use_trt(monkeypatch, version: str, cc: str = "9.0"):
    trt = fake.make_trt(version, compute_capability=cc)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def plan_of(path) -> dict:
    prefix, version, desc = path.read_bytes().split(b":", 2)
    assert prefix == b"fake-plan"
    return {"version": version.decode(), **json.loads(desc)}


def test_typing_modes_by_version():
    assert TB.typing_modes("10.3.0") == ("strong", "weak")
    assert TB.typing_modes("11.0.1.5") == ("strong",)  # weak typing was removed in 11
    assert TB.typing_modes("8.6.1") == ()


def test_timing_cache_is_named_by_version_and_gpu():
    assert TB.timing_cache_name("10.3.0", "8.6") == "tensorrt-10.3.0-sm86.timing.cache"
    assert TB.timing_cache_name("11.1.0", "12.0") != TB.timing_cache_name("10.3.0", "12.0")


@pytest.mark.parametrize("version", ["10.12.0", "11.3.0"])
def test_strongly_typed_build_from_the_fp16_graph(graphs, tmp_path, monkeypatch, version):
    d, fp32 = graphs
    trt = use_trt(monkeypatch, version)
    plan = tmp_path / "temb.plan"
    info = TB.build_engine(d / "temb.fp16.onnx", SPEC, plan, typing="strong", graph_precision="fp16", fp32_layers=fp32,
                           timing_cache=tmp_path / TB.timing_cache_name(version, "9.0"))
    built = plan_of(plan)
    assert built["version"] == version and built["strongly_typed"]
    assert built["flags"] == [] and built["pinned"] == []  # precision comes from the graph, not from flags
    assert built["fp16_tensors"] > 0  # the FP16 graph's types reached the network
    assert built["profiles"] == [{"t": [[1], [1], [8]]}]
    assert info["precision"] == "fp16" and info["typing"] == "strong" and info["source_onnx"] == "temb.fp16.onnx"
    assert info["fp32_layers"] == list(fp32)
    if trt.MAJOR == 10:
        assert hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    else:  # the 11.x surface has no weak-typing names at all; the build never touched them
        assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS")


def test_weak_typing_is_refused_on_tensorrt_11(graphs, tmp_path, monkeypatch):
    d, fp32 = graphs
    use_trt(monkeypatch, "11.3.0")
    with pytest.raises(TB.EngineBuildError, match=r"TensorRT 11\.3\.0 cannot build weakly typed networks "
                                                  r"\(supported: strong\)"):
        TB.build_engine(d / "temb.onnx", SPEC, tmp_path / "temb.plan", typing="weak", fp32_layers=fp32)
    assert not (tmp_path / "temb.plan").exists()


def test_weak_typing_on_tensorrt_10_pins_the_fp32_nodes(graphs, tmp_path, monkeypatch, capsys):
    d, fp32 = graphs
    use_trt(monkeypatch, "10.12.0")
    info = TB.build_engine(d / "temb.onnx", SPEC, tmp_path / "temb.plan", typing="weak", fp32_layers=fp32)
    built = plan_of(tmp_path / "temb.plan")
    assert not built["strongly_typed"] and {"BuilderFlag.FP16", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS"} == set(built["flags"])
    ops = {n.name: n.op_type for n in onnx.load(str(d / "temb.onnx")).graph.node}
    layers = [n for n in fp32 if ops[n] != "Constant"]
    assert set(layers) <= set(built["pinned"]) and {"Sin", "Cos"} <= {ops[n] for n in layers}
    # Constant nodes become weights, not layers: never reported as unmatched.
    assert info["fp32_unmatched"] == [] and "match no TensorRT layer" not in capsys.readouterr().err
    assert info["precision"] == "fp16" and info["typing"] == "weak" and info["obey_precision_constraints"]


def test_pins_match_parser_metadata_names(monkeypatch):
    trt = use_trt(monkeypatch, "10.12.0")
    out = lambda n: fake.FakeTensor(n, fake.FLOAT)  # noqa: E731
    layers = [
        fake.FakeLayer(trt, "(Unnamed Layer* 3) [ElementWise]", "ELEMENTWISE",
                       "[ONNX Layer: /unet/time/Mul | Local Function: TimestepEmbedding]", [], [out("a")]),
        fake.FakeLayer(trt, "fused", "ELEMENTWISE", "[ONNX Layer: /unet/Cos]\x1f[ONNX Layer: /unet/Sin]", [], [out("b")]),
        fake.FakeLayer(trt, "node_of_xk", "ELEMENTWISE", "[ONNX Layer: node_of_xk]", [], [out("c")]),
        fake.FakeLayer(trt, "/other/Add", "ELEMENTWISE", "[ONNX Layer: /other/Add]", [], [out("d")]),
    ]
    assert TB.onnx_layer_names(layers[0]) == {"(Unnamed Layer* 3) [ElementWise]", "/unet/time/Mul"}
    net = fake.FakeNetwork(trt, 0)
    net.layers = layers
    pins = TB.pin_fp32(net, ["/unet/time/Mul", "/unet/Cos", "/unet/Sin", "node_of_xk", "/unet/Constant_3", "/gone/Relu"],
                       constant_nodes=["/unet/Constant_3"])
    assert pins["pinned_layers"] == 3 and pins["matched_nodes"] == 4
    assert pins["unmatched_nodes"] == ["/gone/Relu"]  # the Constant is not a layer, not "unmatched"
    assert layers[0].precision is trt.float32 and layers[0].output_types == {0: trt.float32}
    assert layers[3].precision is None


def test_layers_of_tensorrt_11_have_no_precision_api(monkeypatch):
    trt = use_trt(monkeypatch, "11.3.0")
    layer = fake.FakeLayer11(trt, "l", "ELEMENTWISE", "", [], [])
    with pytest.raises(AttributeError):
        layer.precision = trt.float32
    with pytest.raises(AttributeError):
        layer.set_output_type(0, trt.float32)


def test_timing_cache_of_another_version_falls_back_to_an_empty_one(graphs, tmp_path, monkeypatch, caplog):
    d, fp32 = graphs
    use_trt(monkeypatch, "10.12.0")
    cache = tmp_path / "cache.bin"
    cache.write_bytes(b"TC:10.3.0:90:41")  # written by TensorRT 10.3: this TensorRT rejects it
    with caplog.at_level(logging.WARNING, logger="rewas_rt"):
        TB.build_engine(d / "temb.fp16.onnx", SPEC, tmp_path / "a.plan", timing_cache=cache)
    assert "was rejected (another TensorRT version or GPU?); starting an empty one" in caplog.text
    first = cache.read_bytes().decode()
    assert first.startswith("TC:10.12.0:90:") and int(first.split(":")[3]) > 0  # rewritten for this version
    TB.build_engine(d / "temb.fp16.onnx", SPEC, tmp_path / "b.plan", timing_cache=cache)
    assert int(cache.read_bytes().decode().split(":")[3]) > int(first.split(":")[3])  # reused and grown


def test_unparseable_graph_is_one_clear_error(tmp_path, monkeypatch):
    use_trt(monkeypatch, "11.3.0")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(TB.EngineBuildError, match=r"temb: TensorRT cannot parse .*junk\.onnx: cannot read"):
        TB.build_engine(tmp_path / "junk.onnx", SPEC, tmp_path / "j.plan")


def unnamed(path):
    nodes = [helper.make_node("Mul", ["t", "k"], ["tk"]), helper.make_node("Cos", ["tk"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
                          [numpy_helper.from_array(np.array(3.0, np.float32), "k")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))


def test_parser_names_unnamed_nodes_like_fp16_check(tmp_path, monkeypatch):
    trt = use_trt(monkeypatch, "10.12.0")
    unnamed(tmp_path / "u.onnx")
    net = trt.Builder(None).create_network(0)
    assert trt.OnnxParser(net, None).parse_from_file(str(tmp_path / "u.onnx"))
    names = {layer.name for layer in net.layers}
    assert {"node_of_tk", "node_of_y"} <= names
    pins = TB.pin_fp32(net, ["node_of_tk", "node_of_y"])
    assert pins["unmatched_nodes"] == [] and pins["pinned_layers"] >= 2
