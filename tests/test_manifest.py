"""rewas_rt.manifest: schema, checksums and refusal of unusable engine directories.

Uses a synthetic directory (placeholder graph files, real manifest sections), so it runs in
milliseconds and without torch; tests/test_build_engines.py checks real directories.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rewas_rt import constants as C
from rewas_rt import manifest as M
from rewas_rt.atomic import atomic_write_text, default_file_mode
from rewas_rt.graphs import DYNAMIC_AXES, GRAPHS
from safetensors.numpy import load_file

from export import manifest_sections as S
from tests.reference import component_dir, load_config, load_io

FEATURE_DIM = 64
TRT = {"version": "10.9.0", "compute_capability": "9.0", "gpu": "NVIDIA H200"}


def make_dir(root: Path, engines: bool = False) -> M.Manifest:
    """A complete, valid engine directory with placeholder files (the build's own section builders)."""
    root.mkdir(parents=True, exist_ok=True)
    graphs = {}
    for name, spec in GRAPHS.items():
        spec = spec.resolved(feature_dim=FEATURE_DIM)
        (root / f"{name}.onnx").write_bytes(f"onnx graph {name}".encode())
        ext = None
        if name == "unet_adapter":
            (root / f"{name}.onnx.data").write_bytes(b"\0" * 1000)
            ext = S.file_entry(root, f"{name}.onnx.data")
        eng = None
        if engines:
            (root / f"{name}.plan").write_bytes(f"plan {name}".encode())
            eng = M.Engine(**vars(S.file_entry(root, f"{name}.plan")), precision="fp16", fp32_layers=[],
                           tensorrt_version=TRT["version"], compute_capability=TRT["compute_capability"],
                           gpu=TRT["gpu"], fingerprint="x")
        graphs[name] = M.Graph(
            doc=spec.doc, components=[name], opset=18, onnx=S.file_entry(root, f"{name}.onnx"),
            external_data=ext, precision="fp32", **S.graph_io(spec),
            parity=M.Parity(max_abs=1e-7, max_ref=1.0, rel=1e-7, tolerance=1e-4, ok=True, batch=3),
            fp16_check=None, fp32_layers=[], engine=eng, fingerprint="f" * 64,
        )
    (root / M.TOKENIZER_NAME).write_text('{"model": {}}\n')
    m = M.Manifest(
        format=M.FORMAT, format_version=M.FORMAT_VERSION, created=S.now_utc(),
        producer=M.Producer(rewas_rt="0", exporter="torchscript", export_version=1, torch="t", onnx="o",
                            onnxruntime="r"),
        build_command=f"python export/build_engines.py --config tiny --random-weights --out {root}",
        model=M.Model(name="tiny", weights="random", components={}, seed=0), graphs=graphs,
        dynamic_axes={k: list(v) for k, v in DYNAMIC_AXES.items()},
        scheduler=S.scheduler_section(), vae=S.vae_section(1.25), audio=S.audio_section(),
        video=S.video_section(FEATURE_DIM), energy=S.energy_section(),
        tokenizer=M.Tokenizer(**vars(S.file_entry(root, M.TOKENIZER_NAME)), unconditional_ids=[0, 2], pad_id=1,
                              bos_id=0, eos_id=2, max_tokens=512, vocab_size=512, source="test"),
        tensorrt=M.TensorRTTarget(**TRT) if engines else None,
    )
    M.write_manifest(root, m)
    return m


def edit_manifest(root: Path, fn) -> None:
    m = json.loads((root / M.MANIFEST_NAME).read_text())
    fn(m)
    (root / M.MANIFEST_NAME).write_text(json.dumps(m))


def refused(root: Path, *fragments: str, **kw) -> str:
    with pytest.raises(M.ManifestError) as e:
        M.verify(root, **kw)
    msg = str(e.value)
    for f in fragments:
        assert f in msg, msg
    assert "rebuild with: python export/build_engines.py" in msg or "Build one with" in msg, msg
    assert "\n" not in msg
    return msg


def test_valid_directory_verifies_and_exposes_paths(tmp_path):
    make_dir(tmp_path)
    d = M.open_engine_dir(tmp_path)
    assert d.graph("unet_adapter").external_data == tmp_path / "unet_adapter.onnx.data"
    assert d.graph("phi").onnx == tmp_path / "phi.onnx" and d.graph("phi").plan is None
    assert d.tokenizer_path == tmp_path / "tokenizer.json"
    assert d.unconditional_ids == list(C.UNCOND_TEXT_IDS)
    assert d.scale_factor == 1.25 and d.feature_dim == FEATURE_DIM and not d.has_engines
    assert set(d.manifest.files()) >= {"phi.onnx", "unet_adapter.onnx.data", "manifest.json", "tokenizer.json"}


def test_manifest_content_describes_the_pipeline(tmp_path):
    make_dir(tmp_path)
    m = json.loads((tmp_path / M.MANIFEST_NAME).read_text())  # what a service in another language reads
    s = m["scheduler"]
    assert (s["default_steps"], s["eta"], s["guidance"]) == (C.DDIM_STEPS, C.ETA, C.GUIDANCE)
    # Against the original's own schedule (tests/fixtures/reference/ddim), not against linear_schedule:
    # betas as float64 values, alphas_cumprod exactly the model's float32 buffer.
    golden = load_io("ddim", "schedules.npz")
    buffers = load_file(str(component_dir("ddim") / "schedule_buffers.safetensors"))
    np.testing.assert_allclose(s["betas"], golden["betas_float64"], rtol=1e-12, atol=0)
    np.testing.assert_array_equal(np.asarray(s["alphas_cumprod"], dtype=np.float32), buffers["alphas_cumprod"])
    np.testing.assert_array_equal(np.asarray(s["alphas_cumprod"]), golden["alphas_cumprod_float32"].astype(np.float64))
    ref_cfg = load_config("ddim")
    assert (s["linear_start"], s["linear_end"], s["train_steps"]) == (
        ref_cfg["linear_start"], ref_cfg["linear_end"], ref_cfg["timesteps"])
    unet = m["graphs"]["unet_adapter"]
    x_t = unet["inputs"][0]
    assert x_t["name"] == "x_t" and x_t["shape"] == ["cfg_batch", 8, 128, 16] and x_t["dynamic_axes"] == {"0": "cfg_batch"}
    assert x_t["profile"] == {"min": [1, 8, 128, 16], "opt": [2, 8, 128, 16], "max": [16, 8, 128, 16]}
    assert [t["name"] for t in unet["inputs"]] == ["x_t", "timesteps", "film", "hint"]
    assert unet["inputs"][1]["dtype"] == "int64"
    assert "profile" not in unet["outputs"][0]  # outputs have no optimization profile
    ids = m["graphs"]["clap_text"]["inputs"][0]
    assert ids["dynamic_axes"] == {"0": "batch", "1": "text_len"} and ids["profile"]["max"] == [8, 512]
    assert m["graphs"]["synchformer"]["outputs"][0]["shape"] == ["batch", 14, 8, FEATURE_DIM]
    assert m["audio"]["vocoder_samples"] == 81952 and m["video"]["segments"] == 14


def test_layout_errors_name_the_keys(tmp_path):
    good = make_dir(tmp_path).to_json()
    assert M.Manifest.from_json(json.loads(json.dumps(good))).to_json() == json.loads(json.dumps(good))
    bad = json.loads(json.dumps(good))
    del bad["graphs"]["phi"]["onnx"]["sha256"]
    bad["graphs"]["phi"]["onnx"]["sha265"] = "typo"
    bad["vae"]["scale_factor"] = "1"
    bad["video"]["fps"] = True
    bad["extra_section"] = {}
    with pytest.raises(M.ManifestError) as e:
        M.Manifest.from_json(bad)
    msg = str(e.value)
    for fragment in ("manifest.graphs.phi.onnx has unknown key 'sha265'", "manifest.graphs.phi.onnx has no 'sha256'",
                     "manifest.vae.scale_factor is not a number (str)", "manifest.video.fps is not an integer (bool)",
                     "manifest has unknown key 'extra_section'"):
        assert fragment in msg, msg
    with pytest.raises(M.ManifestError, match="refusing to write an invalid manifest"):
        M.write_manifest(tmp_path / "other", bad)
    assert not (tmp_path / "other" / M.MANIFEST_NAME).exists()
    short = json.loads(json.dumps(good))
    short["scheduler"]["betas"] = short["scheduler"]["betas"][:10]
    with pytest.raises(M.ManifestError, match="scheduler.betas has 10 values, expected 1000"):
        M.Manifest.from_json(short)
    del short["graphs"]["vocoder"]
    with pytest.raises(M.ManifestError, match="graphs missing: vocoder"):
        M.Manifest.from_json(dict(good, graphs={k: v for k, v in good["graphs"].items() if k != "vocoder"}))


def test_written_manifests_validate_against_the_published_schema(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    published = json.loads((Path(__file__).resolve().parents[1] / "engines" / M.SCHEMA_NAME).read_text())
    assert published == M.schema(), "engines/manifest.schema.json is stale: python -m rewas_rt.manifest > it"
    jsonschema.Draft202012Validator.check_schema(published)
    for engines, sub in ((False, "onnx"), (True, "trt")):
        make_dir(tmp_path / sub, engines=engines)
        jsonschema.validate(json.loads((tmp_path / sub / M.MANIFEST_NAME).read_text()), published)
    bad = json.loads((tmp_path / "onnx" / M.MANIFEST_NAME).read_text())
    bad["graphs"]["phi"]["onnx"]["sha265"] = "typo"
    with pytest.raises(jsonschema.ValidationError, match="sha265"):
        jsonschema.validate(bad, published)
    del bad["graphs"]["vocoder"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, published)


def test_sha256_of_a_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert M.sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_refuses_a_tampered_file_same_size(tmp_path):
    make_dir(tmp_path)
    p = tmp_path / "vae_decoder.onnx"
    data = bytearray(p.read_bytes())
    data[0] ^= 1
    p.write_bytes(bytes(data))
    refused(tmp_path, "vae_decoder.onnx does not match its sha256")
    M.verify(tmp_path, checksums=False)  # sizes only: not detected, by design


def test_refuses_a_truncated_external_data_file(tmp_path):
    make_dir(tmp_path)
    (tmp_path / "unet_adapter.onnx.data").write_bytes(b"\0" * 10)
    refused(tmp_path, "unet_adapter.onnx.data has 10 bytes", checksums=False)


def test_refuses_a_missing_file(tmp_path):
    make_dir(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    refused(tmp_path, "tokenizer: file tokenizer.json is missing")


def test_refuses_an_incomplete_directory(tmp_path):
    make_dir(tmp_path)
    edit_manifest(tmp_path, lambda m: m["graphs"].pop("clap_text"))
    msg = refused(tmp_path, "graphs missing: clap_text")
    assert "--config tiny --random-weights" in msg  # the recorded build command


def test_refuses_a_directory_without_manifest(tmp_path):
    make_dir(tmp_path)
    (tmp_path / "manifest.json").unlink()
    refused(tmp_path, "no manifest.json")
    refused(tmp_path / "nowhere", "no such engine directory")


def test_refuses_a_corrupt_manifest(tmp_path):
    make_dir(tmp_path)
    (tmp_path / "manifest.json").write_text("{ not json")
    refused(tmp_path, "not valid JSON")


def test_refuses_another_format_version(tmp_path):
    make_dir(tmp_path)
    edit_manifest(tmp_path, lambda m: m.update(format_version=M.FORMAT_VERSION + 1))
    refused(tmp_path, f"format version {M.FORMAT_VERSION + 1}, this runtime reads version {M.FORMAT_VERSION}")


def test_refuses_a_graph_contract_mismatch(tmp_path):
    make_dir(tmp_path)
    edit_manifest(tmp_path, lambda m: m["graphs"]["phi"]["outputs"][0].update(name="energy_curve"))
    refused(tmp_path, "graph phi outputs")


def test_refuses_paths_outside_the_directory(tmp_path):
    make_dir(tmp_path)
    edit_manifest(tmp_path, lambda m: m["graphs"]["phi"]["onnx"].update(path="../phi.onnx"))
    refused(tmp_path, "is not inside the directory")


def test_tensorrt_backend_needs_engines(tmp_path):
    make_dir(tmp_path)
    refused(tmp_path, "has no TensorRT engine", backend="tensorrt", tensorrt=TRT)


def test_tensorrt_backend_checks_version_and_gpu(tmp_path):
    make_dir(tmp_path, engines=True)
    d = M.open_engine_dir(tmp_path, backend="tensorrt", tensorrt=TRT)
    assert d.has_engines and d.graph("vocoder").plan == tmp_path / "vocoder.plan"
    other = {**TRT, "compute_capability": "8.9"}
    refused(tmp_path, "compute capability 9.0", "this machine has TensorRT 10.9.0 and compute capability 8.9",
            backend="tensorrt", tensorrt=other)
    refused(tmp_path, "engine built with TensorRT 10.9.0", backend="tensorrt", tensorrt={**TRT, "version": "10.12.0"})
    (tmp_path / "phi.plan").write_bytes(b"plan phi!")
    refused(tmp_path, "phi.plan has 9 bytes", backend="tensorrt", tensorrt=TRT)
    M.verify(tmp_path, backend="onnx")  # the ONNX side is untouched


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_text(tmp_path / "a.json", "{}")
    atomic_write_text(tmp_path / "a.json", "[]")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert (tmp_path / "a.json").read_text() == "[]"
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == default_file_mode()


def test_detect_tensorrt_never_raises():
    info = M.detect_tensorrt()
    assert info is None or set(info) == {"version", "compute_capability", "gpu"}


def test_manifest_module_does_not_import_torch():
    code = "import sys, rewas_rt.manifest; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_optional_fp16_graph_is_checked_when_listed(tmp_path):
    root = tmp_path / "e"
    m = make_dir(root)
    (root / "phi.fp16.onnx").write_bytes(b"fp16 graph")
    m.graphs["phi"].fp16_onnx = M.Fp16Onnx(onnx=S.file_entry(root, "phi.fp16.onnx"), external_data=None,
                                           precision="fp16", parity_vs_fp32={"rel": 1e-3, "ok": True}, fingerprint="x")
    M.write_manifest(root, m)
    d = M.open_engine_dir(root)
    assert d.graph("phi").onnx_fp16 == root / "phi.fp16.onnx" and d.graph("vae_decoder").onnx_fp16 is None
    assert d.graph("phi").files() == {"onnx": root / "phi.onnx", "onnx_fp16": root / "phi.fp16.onnx"}
    assert "phi.fp16.onnx" in set(m.files())
    (root / "phi.fp16.onnx").write_bytes(b"fp16 grapH")  # same size, other content
    with pytest.raises(M.ManifestError, match=r"graph phi FP16 onnx: phi\.fp16\.onnx does not match its sha256"):
        M.verify(root)
    data = m.to_json()
    data["graphs"]["phi"]["fp16_onnx"]["precision"] = 16
    with pytest.raises(M.ManifestError, match=r"graphs\.phi\.fp16_onnx\.precision"):
        M.Manifest.from_json(data)
