"""export/export_onnx.py: all seven graphs of the tiny preset, as the session's
build_engines.py run exported them, in ONNX Runtime against their PyTorch modules (random,
non-degenerate weights; dynamic batch and text length), plus the export options."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from export import export_onnx as E
from export.graph_table import GRAPH_EXPORTS
from rewas_rt import constants as C
from rewas_rt.atomic import default_file_mode
from rewas_rt.graphs import GRAPHS
from tests.reference import OBSERVED
from tests.tiny_engines import SEED, tiny_engine_dir


@pytest.fixture(scope="module")
def source():
    return E.ModelSource.from_preset("tiny", seed=SEED)


@pytest.fixture(scope="module")
def exported():
    """graph -> path of the seven graphs the session's build_engines.py run wrote (same seed,
    hence the same random weights as ``source``)."""
    out, _ = tiny_engine_dir()
    return {g: out / f"{g}.onnx" for g in GRAPHS}


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_parity_onnxruntime_vs_pytorch(exported, source, graph):
    spec = source.spec(graph)
    batch = GRAPH_EXPORTS[graph].parity_batch
    feeds = E.sample_inputs(spec, source.configs, batch, E.PARITY_TEXT_LEN, seed=SEED + 11)
    par = E.parity(source.graph_module(graph), spec, exported[graph], feeds)
    OBSERVED[f"export parity {graph} (batch {par['batch']})"] = (par["max_abs"], par["max_ref"])
    print(f"{graph}: {E.fmt_parity(par)}")
    assert par["ok"] and par["rel"] <= E.PARITY_RTOL, E.parity_failure(graph, par)
    assert par["max_ref"] > 1e-3, "degenerate (near-zero) output: the random weights do not exercise the graph"
    assert par["batch"] != E.TRACE_BATCH  # the dynamic batch axis is what is being tested


def test_every_graph_has_one_table_entry_covering_its_contract():
    assert list(GRAPH_EXPORTS) == list(GRAPHS)
    for g, entry in GRAPH_EXPORTS.items():
        assert set(entry.inputs) == {t.name for t in GRAPHS[g].inputs}, g
        assert set(entry.components) <= set(E.COMPONENT_NAMES), g


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_graph_io_follows_the_contract(exported, source, graph):
    model = onnx.load(str(exported[graph]), load_external_data=False)
    spec = source.spec(graph)
    assert [i.name for i in model.graph.input] == [t.name for t in spec.inputs]
    assert [o.name for o in model.graph.output] == [t.name for t in spec.outputs]
    assert model.opset_import[0].version == E.OPSET
    for vi, t in zip(list(model.graph.input) + list(model.graph.output), spec.inputs + spec.outputs):
        dims = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
        assert dims == list(t.shape), (vi.name, dims, t.shape)
        want = {"float32": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64}[t.dtype]
        assert vi.type.tensor_type.elem_type == want


def test_clap_text_dynamic_length_and_padding(exported, source):
    """Any text length runs; padding a prompt does not change its embedding."""
    path = exported["clap_text"]
    module = source.graph_module("clap_text")
    spec = source.spec("clap_text")
    short = E.sample_inputs(spec, source.configs, 1, text_len=5, seed=7)
    ref = E.torch_forward(module, spec, short)["text_embedding"]
    got = E.run_onnx(path, short)["text_embedding"]
    np.testing.assert_allclose(got, ref, atol=1e-5 * np.abs(ref).max())
    padded = {k: np.pad(v, ((0, 0), (0, 20)), constant_values=(1 if k == "input_ids" else 0)) for k, v in short.items()}
    np.testing.assert_allclose(E.run_onnx(path, padded)["text_embedding"], got, atol=1e-5)
    uncond = {"input_ids": np.array([C.UNCOND_TEXT_IDS], np.int64), "attention_mask": np.ones((1, 2), np.int64)}
    emb = E.run_onnx(path, uncond)["text_embedding"]
    assert emb.shape == (1, C.TEXT_EMBED_DIM) and abs(np.linalg.norm(emb) - 1) < 1e-5


def test_phi_batch_items_never_interact(exported, source):
    path = exported["phi"]
    feeds = E.sample_inputs(source.spec("phi"), source.configs, 3, seed=3)
    full = E.run_onnx(path, feeds)["energy"]
    for i in range(3):
        one = E.run_onnx(path, {"features": feeds["features"][i:i + 1]})["energy"]
        np.testing.assert_allclose(one[0], full[i], rtol=1e-5, atol=1e-6)


def test_unet_adapter_hint_path_is_live(exported, source):
    """Random weights must be non-degenerate: the zero-initialised ControlNet paths now matter."""
    path = exported["unet_adapter"]
    feeds = E.sample_inputs(source.spec("unet_adapter"), source.configs, 2, seed=5)
    eps = E.run_onnx(path, feeds)["eps"]
    eps0 = E.run_onnx(path, {**feeds, "hint": np.zeros_like(feeds["hint"])})["eps"]
    assert np.abs(eps - eps0).max() > 1e-3 * np.abs(eps).max()


def test_randomize_touches_every_parameter_deterministically(source):
    from training.checkpoints import COMPONENTS

    cfg = source.configs["adapter"]
    a, b = COMPONENTS["adapter"].model_cls(cfg), COMPONENTS["adapter"].model_cls(cfg)
    E.randomize_(a, 42)
    E.randomize_(b, 42)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
        assert p.abs().max() > 0, f"{name} is still zero"
    assert a.zero_convs[0][0].weight.abs().max() > 0


def test_token_ids_are_valid(source):
    cfg = source.configs["clap_text"]
    feeds = E.sample_inputs(source.spec("clap_text"), source.configs, 4, text_len=9, seed=1)
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert ids.max() < cfg.vocab_size and ids.dtype == np.int64
    for row, m in zip(ids, mask):
        n = int(m.sum())
        assert row[0] == cfg.bos_token_id and row[n - 1] == cfg.eos_token_id and (row[n:] == cfg.pad_token_id).all()
        assert (m[:n] == 1).all() and (m[n:] == 0).all()
    t = E.sample_inputs(source.spec("unet_adapter"), source.configs, 8, seed=1)["timesteps"]
    assert t.dtype == np.int64 and t.min() >= 0 and t.max() <= C.TRAIN_STEPS - 1


def test_external_data_is_one_file_and_runs(source, tmp_path):
    """The >2 GB layout (weights in <graph>.onnx.data), forced on a small graph."""
    res, par = E.export_and_check(source, "phi", tmp_path, external_data=True, seed=SEED)
    assert res.external_data == tmp_path / "phi.onnx.data" and res.external_data.stat().st_size > 0
    assert par["ok"], E.parity_failure("phi", par)
    model = onnx.load(str(res.onnx), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"phi.onnx.data"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phi.onnx", "phi.onnx.data"]
    assert {p.stat().st_mode & 0o777 for p in res.files} == {default_file_mode()}  # not onnx's 0600
    # Re-exported without external data: the stale .data file goes.
    res2 = E.export_graph(source.graph_module("phi"), source.spec("phi"), tmp_path,
                          E.sample_inputs(source.spec("phi"), source.configs, 2), external_data=False)
    assert res2.external_data is None and sorted(p.name for p in tmp_path.iterdir()) == ["phi.onnx"]


def test_inconsistent_configs_are_refused():
    from training.models import presets

    cfgs = presets.tiny()
    cfgs["phi"].width = 32
    cfgs["phi"].proj_dims[0] = 32
    with pytest.raises(E.ExportError, match="phi width 32 != synchformer embed_dim 64"):
        E.check_consistency(cfgs)


def test_missing_checkpoints_are_named(tmp_path):
    (tmp_path / "phi.json").write_text("{}")
    with pytest.raises(E.ExportError, match="missing canonical component.*unet.*training.import_checkpoints"):
        E.ModelSource.from_checkpoints(tmp_path)


def test_checkpoint_source_matches_random_source(tmp_path, source):
    """--checkpoints reads the canonical layout: save the random weights, export from them."""
    from training.checkpoints import save_component

    for c in E.COMPONENT_NAMES:
        save_component(tmp_path, c, source.component(c).state_dict(), source.configs[c])
    ck = E.ModelSource.from_checkpoints(tmp_path, name="tiny")
    x = E.sample_inputs(ck.spec("phi"), ck.configs, 2)
    np.testing.assert_array_equal(E.torch_forward(ck.graph_module("phi"), ck.spec("phi"), x)["energy"],
                                  E.torch_forward(source.graph_module("phi"), source.spec("phi"), x)["energy"])
    assert ck.weights_id("phi") != source.weights_id("phi") and len(ck.weights_id("phi")) == 64
    assert ck.fingerprint("phi") != source.fingerprint("phi")


def test_cli_reports_parity(tmp_path, capsys):
    rc = E.main(["--config", "tiny", "--random-weights", "--out", str(tmp_path), "--graphs", "phi,clap_text"])
    out = capsys.readouterr().out
    assert rc == 0 and "[1/2] phi: export" in out and "[2/2] clap_text" in out and "parity max abs" in out
