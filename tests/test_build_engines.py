"""export/build_engines.py: the no-TensorRT path end to end (a subprocess, as a user runs it),
rebuild skipping, argument errors, the tokenizer, and the TensorRT path where it exists."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import onnx
import pytest

from export import build_engines as B
from training import tokenizer as T
from rewas_rt import constants as C
from rewas_rt import manifest as M
from rewas_rt.graphs import GRAPHS
from tests.tiny_engines import run_cli, tiny_engine_dir

TRT = M.detect_tensorrt()
needs_tensorrt = pytest.mark.skipif(TRT is None, reason="TensorRT is not importable or no NVIDIA GPU is visible")


@pytest.fixture(scope="module")
def built():
    return tiny_engine_dir()


def test_no_tensorrt_path_gives_a_complete_verified_directory(built):
    out, proc = built
    notices = [line for line in proc.stdout.splitlines() if "TensorRT not available" in line]
    assert len(notices) == 1, proc.stdout
    for i, g in enumerate(GRAPHS, 1):
        assert f"[{i}/7] {g}: export" in proc.stdout and "parity max rel" in proc.stdout
    assert "Traceback" not in proc.stderr
    m = M.verify(out)  # the runtime's own check, checksums included
    assert m.tensorrt is None and all(g.engine is None for g in m.graphs.values())
    assert m.model.name == "tiny" and m.model.weights == "random"
    assert set(m.model.components) == {"unet", "adapter", "vae", "vocoder", "clap_text", "synchformer", "phi"}
    assert m.model.components["vae"].config["scale_factor"] == m.vae.scale_factor == 1.25
    assert m.build_command == f"python export/build_engines.py --config tiny --random-weights --out {out}"
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{g}.onnx" for g in GRAPHS] + [f"{g}.fp16.onnx" for g in GRAPHS]
                           + ["manifest.json", "tokenizer.json"]), names


def test_manifest_records_parity_and_fp16_analysis(built):
    """The figures the build wrote are recomputed here from the files, not read back."""
    from export import export_onnx as E
    from export import fp16_check
    from tests.tiny_engines import SEED

    m = M.read_manifest(built[0])
    for name, g in m.graphs.items():
        assert g.parity.batch != E.TRACE_BATCH, name  # parity ran at another batch than the trace
        assert g.fp16_check is not None and g.fp32_layers == sorted(g.fp16_check["reasons_by_node"]), name
        nodes = {n.name for n in onnx.load(str(built[0] / g.onnx.path), load_external_data=False).graph.node}
        assert set(g.fp32_layers) <= nodes, name
    # Parity recomputed: the written graph in ONNX Runtime vs a fresh PyTorch module of the same seeded weights.
    source = E.ModelSource.from_preset("tiny", seed=SEED)
    for name in ("phi", "vae_decoder"):
        spec = source.spec(name)
        feeds = E.sample_inputs(spec, source.configs, 3, E.PARITY_TEXT_LEN, seed=SEED + 7)
        par = E.parity(source.graph_module(name), spec, built[0] / f"{name}.onnx", feeds)
        assert par["ok"] and par["rel"] <= E.PARITY_RTOL, (name, par)
    # FP16 analysis recomputed on the written unet_adapter graph with the build's inputs.
    spec = source.spec("unet_adapter")
    feeds = E.sample_inputs(spec, source.configs, 1, E.PARITY_TEXT_LEN, seed=SEED + 3)
    rep = fp16_check.check_graph(built[0] / "unet_adapter.onnx", feeds, graph="unet_adapter")
    assert rep.fp32_layers == m.graphs["unet_adapter"].fp32_layers
    assert not rep.mitigated["nonfinite"]
    # The timestep embedding's sin/cos arguments (up to 999 rad) cannot be FP16.
    unet = rep.fp32_layers
    assert any(n.endswith("/Cos") for n in unet) and any(n.endswith("/Sin") for n in unet)


def test_manifest_records_the_checked_fp16_graphs(built):
    from export.fp16_graph import graph_types
    from export.tensorrt_build import ENGINE_RTOL

    out = built[0]
    m = M.verify(out)  # checksums of the FP16 graphs included
    assert set(m.files()) >= {f"{g}.fp16.onnx" for g in GRAPHS}
    for name, g in m.graphs.items():
        f = g.fp16_onnx
        assert f.onnx.path == f"{name}.fp16.onnx" and f.precision == "fp16", name
        assert f.parity_vs_fp32["ok"] and 0 < f.parity_vs_fp32["rel"] <= ENGINE_RTOL == f.parity_vs_fp32["tolerance"]
        assert f.fp32_nodes == len(g.fp32_layers), name
        io = onnx.load(str(out / f.onnx.path), load_external_data=False).graph
        assert {v.type.tensor_type.elem_type for v in list(io.input) + list(io.output)} <= {1, 7}  # float32/int64: the contract
    # The timestep embedding's Sin/Cos stay FP32 in the FP16 UNet; the rest is FP16.
    types = graph_types(out / "unet_adapter.fp16.onnx")
    unet = m.graphs["unet_adapter"].fp32_layers
    trig = [n for n in unet if n.endswith(("/Sin", "/Cos"))]
    assert trig and all(types[n] == 1 for n in trig)
    assert sum(t == 10 for t in types.values()) > 0.5 * len(types)


def test_pipeline_on_fp16_graphs_stays_close_to_fp32(built):
    """The whole tiny pipeline (ONNX Runtime, CPU) on the FP16 graphs vs the FP32 graphs: FP16 really
    runs (the outputs differ) and stays finite; benchmarks/fp16_deviation.py reports longer runs."""
    from benchmarks.fp16_deviation import measure

    res = measure(built[0], steps=(2,), requests=1, threads=1)
    assert res["precisions"] == {"fp32": ["fp32"], "fp16": ["fp16 graph with FP32 islands"]}
    assert 0 < res["energy"]["rel"] < 2e-2  # two graphs of 2e-2 each, then smoothing
    r = res["steps"]["2"]
    assert r["finite"] and 0 < r["wave_rel_l2"] < 0.5, r


def test_tokenizer_in_the_directory(built):
    from tokenizers import Tokenizer

    m = M.read_manifest(built[0])
    tok = Tokenizer.from_file(str(built[0] / "tokenizer.json"))
    assert tok.encode("").ids == list(C.UNCOND_TEXT_IDS) == m.tokenizer.unconditional_ids
    assert tok.get_vocab_size() == m.tokenizer.vocab_size == m.model.components["clap_text"].config["vocab_size"]
    assert M.sha256_file(built[0] / "tokenizer.json") == m.tokenizer.sha256
    ids = tok.encode("A dog barking loudly in the distance").ids
    assert ids[0] == 0 and ids[-1] == 2 and max(ids) < 512
    assert len(tok.encode("thunder " * 1000).ids) == C.TEXT_MAX_TOKENS


def test_directory_runs_in_onnxruntime(built):
    from export.export_onnx import run_onnx

    d = M.open_engine_dir(built[0])
    uncond = {"input_ids": np.array([d.unconditional_ids], np.int64), "attention_mask": np.ones((1, 2), np.int64)}
    emb = run_onnx(d.graph("clap_text").onnx, uncond)["text_embedding"]
    assert emb.shape == (1, C.TEXT_EMBED_DIM) and np.isfinite(emb).all()


def test_rerun_skips_unchanged_graphs(built, tmp_path, capsys):
    out = tmp_path / "engines"  # its own copy: the session's directory is shared with other tests
    shutil.copytree(built[0], out)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")}
    assert B.main(["--config", "tiny", "--random-weights", "--out", str(out), "--no-tensorrt"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("unchanged, skipped") == 7, stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")} == before
    M.verify(out)


def test_rerun_rebuilds_a_tampered_graph_only(built, tmp_path, capsys):
    out = tmp_path / "engines"  # its own copy: the session's directory is shared with other tests
    shutil.copytree(built[0], out)
    phi = out / "phi.onnx"
    phi.write_bytes(phi.read_bytes()[:-1] + b"\0")
    with pytest.raises(M.ManifestError, match="phi.onnx does not match its sha256"):
        M.verify(out)
    assert B.main(["--config", "tiny", "--random-weights", "--out", str(out), "--no-tensorrt"]) == 0
    stdout = capsys.readouterr().out
    assert "[2/7] phi: export" in stdout and stdout.count("unchanged, skipped") == 6, stdout
    M.verify(out)


def test_polygraphy_comparison_catches_a_mismatch(built, tmp_path):
    """The engine check's comparison path (Comparator.run + compare_accuracy), with two ONNX
    Runtime runners standing in for ONNX Runtime and TensorRT."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    from export.export_onnx import sample_inputs
    from export.tensorrt_build import compare_runners
    from training.models import presets

    src = built[0] / "phi.onnx"
    model = onnx.load(str(src))
    init = next(t for t in model.graph.initializer if t.name == "projection2.6.bias")  # the output's bias
    arr = onnx.numpy_helper.to_array(init).copy()
    arr += 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    bad = tmp_path / "phi_bad.onnx"
    onnx.save(model, str(bad))
    spec = GRAPHS["phi"].resolved(feature_dim=64)
    feeds = [sample_inputs(spec, presets.tiny(), b, seed=b) for b in (1, 2)]
    runner = lambda p, n: OnnxrtRunner(SessionFromOnnx(str(p), providers=["cpu"]), name=n)  # noqa: E731
    same = compare_runners(runner(src, "a"), runner(src, "b"), feeds, rtol=1e-6)
    assert same["ok"] and same["rel"] == 0.0 and same["iterations"] == 2
    diff = compare_runners(runner(src, "a"), runner(bad, "b"), feeds, rtol=2e-2)
    assert not diff["ok"] and diff["rel"] > 2e-2


def one_line_error(proc: subprocess.CompletedProcess, code: int, fragment: str) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_argument_errors_are_one_line(tmp_path):
    one_line_error(run_cli("--out", str(tmp_path)), 2, "give --checkpoints DIR, or --config NAME --random-weights")
    one_line_error(run_cli("--checkpoints", str(tmp_path / "nope"), "--out", str(tmp_path)), 2, "no such folder")
    one_line_error(run_cli("--checkpoints", str(tmp_path), "--random-weights", "--out", str(tmp_path)), 2, "not both")


def in_process_error(capsys, argv: list[str], code: int, fragment: str) -> None:
    """main() as the script runs it, without paying for another interpreter and torch import."""
    try:
        rc = B.main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert rc == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err


def test_unknown_config_is_a_one_line_error(tmp_path, capsys):
    in_process_error(capsys, ["--config", "huge", "--random-weights", "--out", str(tmp_path)], 2,
                     "unknown --config 'huge'")


def test_missing_checkpoints_are_a_one_line_error(tmp_path, capsys):
    ck = tmp_path / "ck"
    ck.mkdir()
    in_process_error(capsys, ["--checkpoints", str(ck), "--tokenizer", str(ck), "--out", str(tmp_path / "out")], 1,
                     "missing canonical component(s) unet, adapter, vae, vocoder, clap_text, synchformer, phi")


def test_checkpoints_need_a_tokenizer(tmp_path, capsys):
    in_process_error(capsys, ["--checkpoints", str(tmp_path), "--out", str(tmp_path / "out")], 2,
                     "--tokenizer DIR is required with --checkpoints")


def test_full_size_random_weights_need_a_tokenizer(tmp_path, capsys):
    in_process_error(capsys, ["--config", "rewas-m", "--random-weights", "--out", str(tmp_path)], 1,
                     "pass --tokenizer DIR")
    assert not (tmp_path / "manifest.json").exists()


# --------------------------------------------------------------------------- tokenizer


def test_tiny_tokenizer_is_deterministic_with_roberta_ids():
    a, b = T.train_tiny(512), T.train_tiny(512)
    assert T.to_json(a) == T.to_json(b)
    assert a.get_vocab_size() == 512
    assert [a.token_to_id(t) for t in ("<s>", "<pad>", "</s>")] == [0, 1, 2]
    assert a.encode("").ids == [0, 2]


def test_vocab_and_merges_become_the_same_tokenizer(tmp_path):
    tok = T.train_tiny(512)
    tok.model.save(str(tmp_path))  # vocab.json + merges.txt, as in a RoBERTa folder
    conv = T.from_folder(tmp_path)
    for text in ("", "A cat meowing softly.", "rain, thunder & wind — 3 times!"):
        assert conv.encode(text).ids == tok.encode(text).ids
    assert T.to_json(conv) == T.to_json(tok)
    (tmp_path / "tokenizer.json").write_text(T.to_json(tok))
    assert T.to_json(T.from_folder(tmp_path)) == T.to_json(tok)


def test_a_non_roberta_tokenizer_is_refused(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(T.TokenizerError, match="not a RoBERTa vocabulary"):
        T.from_folder(tmp_path)
    with pytest.raises(T.TokenizerError, match="only 100"):
        T.check(T.train_tiny(512), vocab_size=100)


# --------------------------------------------------------------------------- TensorRT


@needs_tensorrt
def test_tensorrt_engines_match_onnxruntime(built, tmp_path):
    out = tmp_path / "trt"
    shutil.copytree(built[0], out)
    assert B.main(["--config", "tiny", "--random-weights", "--out", str(out)]) == 0
    m = M.verify(out, backend="tensorrt", tensorrt=TRT)
    for name, g in m.graphs.items():
        e = g.engine
        assert e.precision == "fp16" and e.typing == "strong" and e.parity_vs_onnxruntime["ok"], name
        assert e.source_onnx == f"{name}.fp16.onnx", name
        assert (e.tensorrt_version, e.compute_capability) == (TRT["version"], TRT["compute_capability"])
        assert e.fp32_layers == g.fp32_layers and not e.fp32_unmatched, name
    from export.tensorrt_build import timing_cache_name

    assert (out / timing_cache_name(TRT["version"], TRT["compute_capability"])).stat().st_size > 0


@needs_tensorrt
def test_fp32_pins_reach_tensorrt_layers(built):
    import tensorrt as trt

    from export.tensorrt_build import pin_fp32, typing_modes

    if "weak" not in typing_modes(trt.__version__):
        pytest.skip(f"TensorRT {trt.__version__} has no layer precisions (strongly typed only)")

    m = M.read_manifest(built[0])
    wanted = m.graphs["unet_adapter"].fp32_layers
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(built[0] / "unet_adapter.onnx"))
    pins = pin_fp32(network, wanted)
    assert pins["pinned_layers"] >= 3 and not pins["unmatched_nodes"]
