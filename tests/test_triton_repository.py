"""export/triton_repository.py and rewas_rt/triton.py, as far as this machine allows (no Triton here).

- every config.pbtxt parses into Triton's ModelConfig protobuf (tritonclient's
  model_config_pb2) and matches the I/O read from its ONNX graph;
- the `rewas` Python-backend model runs in a fresh process under a stand-in of
  triton_python_backend_utils (tests/triton_standin) that checks each BLS call against the
  called model's config and answers it with ONNX Runtime; its output equals
  `rewas-rt infer`'s for the same seed, sample for sample;
- bad requests get one-line error responses; the CLI's errors are one line.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rewas_rt import constants as C
from rewas_rt.graphs import DYNAMIC_AXES, GRAPHS
from tests.media_files import write_video

mc = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                         reason="tritonclient[grpc] (the `test` extra) provides Triton's ModelConfig protobuf")
onnx = pytest.importorskip("onnx", reason="the `export` extra reads the ONNX graphs' I/O")
from google.protobuf import text_format  # noqa: E402  (comes with tritonclient)

from export.triton_repository import main as write_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "triton_standin"
# ONNX TensorProto element type -> Triton DataType
ONNX_TO_TRITON = {1: mc.TYPE_FP32, 10: mc.TYPE_FP16, 7: mc.TYPE_INT64, 6: mc.TYPE_INT32, 2: mc.TYPE_UINT8}


def file_entry(root, rel):
    from rewas_rt.manifest import sha256_file

    p = Path(root) / rel
    return {"path": rel, "bytes": p.stat().st_size, "sha256": sha256_file(p)}


def load_config(path):
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


def write(*argv):
    return write_main([str(a) for a in argv])


@pytest.fixture(scope="module")
def repo(tiny_engines, tmp_path_factory):
    """The default repository: GPU instances (FP16 ONNX graphs where the directory has them)."""
    out = tmp_path_factory.mktemp("triton") / "repo"
    assert write("--engines", tiny_engines[0], "--out", out) == 0
    return out


@pytest.fixture(scope="module")
def cpu_repo(tiny_engines, tmp_path_factory):
    """CPU instances: the FP32 graphs, as the runtime runs them on the CPU (what the stand-in runs)."""
    out = tmp_path_factory.mktemp("triton") / "cpu-repo"
    assert write("--engines", tiny_engines[0], "--out", out, "--cpu") == 0
    return out


def manifest_json(engines):
    return json.loads((Path(engines) / "manifest.json").read_text())


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=3.0)


def onnx_io(path):
    g = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in g.initializer}

    def one(v):
        t = v.type.tensor_type
        return v.name, t.elem_type, [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]

    return [one(v) for v in g.input if v.name not in inits], [one(v) for v in g.output]


@pytest.mark.parametrize("which, kind", [("repo", mc.ModelInstanceGroup.KIND_GPU),
                                         ("cpu_repo", mc.ModelInstanceGroup.KIND_CPU)])
def test_graph_configs_parse_and_match_their_onnx_graphs(which, kind, request, tiny_engines):
    repo = request.getfixturevalue(which)
    graphs = manifest_json(tiny_engines[0])["graphs"]
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted([*GRAPHS, "rewas"])
    for name in GRAPHS:
        cfg = load_config(repo / name / "config.pbtxt")
        assert cfg.name == name and cfg.platform == "onnxruntime_onnx"
        model = repo / name / "1" / "model.onnx"
        fp16 = graphs[name].get("fp16_onnx")  # GPU instances serve the FP16 graph where there is one
        served = fp16["onnx"]["path"] if fp16 and kind == mc.ModelInstanceGroup.KIND_GPU else graphs[name]["onnx"]["path"]
        assert model.read_bytes() == (tiny_engines[0] / served).read_bytes(), name
        onnx_in, onnx_out = onnx_io(model)
        axis = GRAPHS[name].inputs[0].shape[0]
        assert cfg.max_batch_size == DYNAMIC_AXES[axis][2]
        assert all(1 <= b <= cfg.max_batch_size for b in cfg.dynamic_batching.preferred_batch_size)
        assert cfg.dynamic_batching.preferred_batch_size  # dynamic batching is on
        assert [(g.kind, g.count) for g in cfg.instance_group] == [(kind, 1)]
        for declared, graph in ((cfg.input, onnx_in), (cfg.output, onnx_out)):
            assert [t.name for t in declared] == [n for n, _, _ in graph], name
            for t, (_, elem, shape) in zip(declared, graph):
                assert t.data_type == ONNX_TO_TRITON[elem], (name, t.name)
                assert shape[0] is None, f"{name}.{t.name}: the batch axis must be dynamic in the graph"
                rest = [-1 if d is None else d for d in shape[1:]]
                if t.HasField("reshape"):  # a batch-only tensor travels as (B, 1)
                    assert list(t.dims) == [1] and list(t.reshape.shape) == rest == [], (name, t.name)
                else:
                    assert list(t.dims) == rest, (name, t.name)


def test_pipeline_model_config_and_contents(repo, tiny_engines):
    cfg = load_config(repo / "rewas" / "config.pbtxt")
    assert cfg.backend == "python" and cfg.max_batch_size == 0
    assert [i.name for i in cfg.input if not i.optional] == ["PROMPT"]
    models = json.loads(cfg.parameters["graph_models"].string_value)
    assert set(models) == set(GRAPHS) and all((repo / m / "config.pbtxt").is_file() for m in models.values())
    version = repo / "rewas" / "1"
    assert (version / "manifest.json").read_bytes() == (tiny_engines[0] / "manifest.json").read_bytes()
    assert (version / "tokenizer.json").read_bytes() == (tiny_engines[0] / "tokenizer.json").read_bytes()
    assert (version / "rewas_rt" / "triton.py").read_bytes() == (ROOT / "rewas_rt" / "triton.py").read_bytes()
    assert not list(version.rglob("__pycache__"))
    assert "docker run" in (repo / "README.md").read_text()


def run_model(repo, requests, tmp_path):
    """The rewas model in a fresh process that sees only the stand-in and the repository."""
    spec = tmp_path / "requests.json"
    spec.write_text(json.dumps(requests))
    out = tmp_path / "out.npz"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(STANDIN)}
    proc = subprocess.run([sys.executable, str(STANDIN / "run_model.py"), str(repo), "rewas", str(spec), str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as d:
        return {k: d[k] for k in d.files}, proc.stderr


def test_rewas_model_equals_infer_and_rejects_bad_requests(cpu_repo, tiny_engines, clip, tmp_path, capsys):
    repo = cpu_repo
    from rewas_rt.cli import main as cli
    from rewas_rt.energy_control import EnergyEdit
    from rewas_rt.pipeline import GenerationOptions, Pipeline, Request

    curve = np.linspace(-6.0, -2.0, C.MEL_FRAMES, dtype=np.float32)
    np.save(tmp_path / "curve.npy", curve)
    (tmp_path / "junk.mp4").write_text("not a video")
    good_video = {"PROMPT": "rain on a roof", "VIDEO": f"@{clip}", "SEED": 7, "OPTIONS": {"steps": 2}}
    good_energy = {"PROMPT": "a dog barks", "ENERGY": {"npy": str(tmp_path / "curve.npy")}, "SEED": 3,
                   "OPTIONS": {"steps": 1, "candidates": 2, "energy_offset": 0.5, "guidance": 2.5}}
    bad = [
        ({"PROMPT": "rain", "VIDEO": f"@{clip}", "OPTIONS": "{steps"}, "OPTIONS is not valid JSON"),
        ({"PROMPT": "rain", "VIDEO": f"@{clip}", "OPTIONS": {"stepz": 3}}, "unknown option(s) stepz"),
        ({"PROMPT": "rain", "VIDEO": f"@{clip}", "OPTIONS": {"steps": 0}}, "steps must be an integer in 1..500"),
        ({"PROMPT": "rain", "VIDEO": f"@{clip}", "OPTIONS": {"guidance": "high"}}, "guidance must be a finite number"),
        ({"PROMPT": "rain", "VIDEO": f"@{clip}", "SEED": -1}, "seed must be an integer in 0.."),
        ({"PROMPT": "  ", "VIDEO": f"@{clip}"}, "the prompt is empty"),
        ({"PROMPT": "rain"}, "send VIDEO, FRAMES or ENERGY"),
        ({"PROMPT": "rain", "ENERGY": {"npy": str(tmp_path / "curve.npy")}, "START": 1.0},
         "START and DURATION apply to VIDEO only"),
        ({"PROMPT": "rain", "VIDEO": f"@{clip}", "DURATION": -1.0}, "duration must be"),
        ({"PROMPT": "rain", "VIDEO": f"@{tmp_path / 'junk.mp4'}"}, "VIDEO"),
    ]
    from rewas_rt.video import load_video

    with pytest.warns(UserWarning, match="only 3.00 s of video"):
        np.save(tmp_path / "frames.npy", load_video(clip).frames)
    good_frames = {"PROMPT": "rain on a roof", "FRAMES": {"npy": str(tmp_path / "frames.npy")}, "SEED": 11,
                   "OPTIONS": good_energy["OPTIONS"]}  # the same options: one generate call with the energy request
    long_clip = write_video(tmp_path / "long.mp4", seconds=7.0)  # two windows
    good_long = {"PROMPT": "footsteps", "VIDEO": f"@{long_clip}", "SEED": 4, "OPTIONS": {"steps": 1}}
    good_part = {"PROMPT": "footsteps", "VIDEO": f"@{long_clip}", "SEED": 4, "START": 1.0, "DURATION": 2.0,
                 "OPTIONS": {"steps": 1}}
    out, stderr = run_model(repo, [good_video, *(r for r, _ in bad), good_energy, good_frames, good_long, good_part],
                            tmp_path)
    assert out["rewas_rt"].item().startswith(str(repo / "rewas" / "1" / "rewas_rt")), "the repository's copy ran"
    assert "Traceback" not in stderr

    # 1. the same seed and options through `rewas-rt infer`: the same WAV, sample for sample
    wav = tmp_path / "infer.wav"
    assert cli(["infer", str(clip), "rain on a roof", "--engines", str(tiny_engines[0]), "--steps", "2",
                "--seed", "7", "--threads", "1", "-o", str(wav), "-q"]) == 0
    ref, sr = sf.read(wav, dtype="int16")
    wave = out["0.WAVEFORM"]
    assert wave.shape == (1, 3 * C.SAMPLE_RATE) == (1, ref.size)  # cut to the 3 s video, as infer does
    np.testing.assert_array_equal(np.clip(wave[0] * 32768.0, -32768, 32767).astype(np.int16), ref)
    assert out["0.SEED_USED"].tolist() == [7]

    # 2. an energy-only and a FRAMES request with other options, batched together: equal to the runtime's
    #    Pipeline on the engine directory given the same batch (FRAMES is not cut: no video length)
    last = len(bad) + 1
    pipe = Pipeline(tiny_engines[0], backend="onnxruntime-cpu", threads=1)
    options = GenerationOptions(steps=1, candidates=2, guidance=2.5, energy_edit=EnergyEdit(offset=0.5))
    want = pipe.generate([Request("a dog barks", 3, energy=curve),
                          Request("rain on a roof", 11, frames=np.load(tmp_path / "frames.npy"))], options)
    for k, w in zip((last, last + 1), want):
        assert out[f"{k}.WAVEFORM"].shape == (2, C.WAVE_SAMPLES)
        np.testing.assert_array_equal(out[f"{k}.WAVEFORM"], w.waveforms)
        np.testing.assert_array_equal(out[f"{k}.ENERGY_USED"], w.energy)

    # 3. each bad request: its own one-line error; the good ones around it were unaffected
    for k, (_, fragment) in enumerate(bad, start=1):
        message = out[f"{k}.error"].item()
        assert fragment in message and "\n" not in message, (k, message)
        assert not any(key.startswith(f"{k}.") and key != f"{k}.error" for key in out)

    # 4. a 7 s video runs in windows exactly as `rewas-rt infer` runs it; START/DURATION cut a part
    k = len(bad) + 3
    wav = tmp_path / "long.wav"
    assert cli(["infer", str(long_clip), "footsteps", "--engines", str(tiny_engines[0]), "--steps", "1",
                "--seed", "4", "--threads", "1", "-o", str(wav), "-q"]) == 0
    ref, _ = sf.read(wav, dtype="int16")
    assert out[f"{k}.WAVEFORM"].shape == (1, 7 * C.SAMPLE_RATE) == (1, ref.size)
    np.testing.assert_array_equal(np.clip(out[f"{k}.WAVEFORM"][0] * 32768.0, -32768, 32767).astype(np.int16), ref)
    assert out[f"{k + 1}.WAVEFORM"].shape == (1, 2 * C.SAMPLE_RATE)

    # 5. the loop ran through BLS: every graph model was called, the UNet once per DDIM step and window
    #    (video 2 steps; energy + frames batched, 1 step; 7 s clip 2 windows x 1 step; 2 s part 1 step)
    calls = json.loads(out["calls"].item())
    assert set(calls) == set(GRAPHS) and calls["unet_adapter"] == 2 + 1 + 2 + 1, calls


@pytest.mark.parametrize("text, fragment", [
    ("[1]", "OPTIONS must be a JSON object"),
    ('{"steps": 2.5}', "steps must be an integer in 1..500, got 2.5"),
    ('{"steps": true}', "steps must be an integer"),
    ('{"steps": 3}', "nearest valid step counts: 2 or 4"),
    ('{"eta": 1.5}', "eta must be a finite number in [0, 1]"),
    ('{"guidance": NaN}', "guidance must be a finite number"),
    ('{"candidates": 17}', "candidates must be an integer in 1..16"),
    ('{"hint_mean": 2}', "hint_mean must be true or false"),
    ('{"energy_clip_min": 2, "energy_clip_max": 1}', "energy clip: min 2 is above max 1"),
])
def test_options_json_is_validated(text, fragment):
    from rewas_rt.errors import InputError
    from rewas_rt.triton import parse_options

    with pytest.raises(InputError) as e:
        parse_options(text)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_options_json_sets_every_option():
    from rewas_rt.energy_control import EnergyEdit
    from rewas_rt.pipeline import GenerationOptions
    from rewas_rt.triton import OPTION_KEYS, parse_options

    d = {"steps": 4, "guidance": 2.0, "eta": 0.5, "candidates": 3, "hint_mean": True, "energy_scale": 0.5,
         "energy_offset": -1.0, "energy_clip_min": -8.0, "energy_clip_max": 1.0}
    assert set(d) == set(OPTION_KEYS)
    assert parse_options(json.dumps(d)) == GenerationOptions(4, 2.0, 0.5, 3, True, EnergyEdit(0.5, -1.0, -8.0, 1.0))
    assert parse_options(None) == parse_options("{}") == GenerationOptions()


def test_bls_engine_reports_what_triton_rejects(cpu_repo, tmp_path, monkeypatch):
    """A BLS call Triton would refuse (batch above max_batch_size) becomes a BackendError naming the model."""
    monkeypatch.syspath_prepend(str(STANDIN))
    import triton_python_backend_utils as pb

    from rewas_rt.backends.base import BackendError
    from rewas_rt.triton import BlsBackend

    repo = cpu_repo
    small = tmp_path / "repo"
    shutil.copytree(repo, small, ignore=shutil.ignore_patterns("rewas"))
    cfg = small / "phi" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("max_batch_size: 8", "max_batch_size: 2"))
    pb.serve(small)
    spec = GRAPHS["phi"].resolved(feature_dim=json.loads((repo / "rewas/1/manifest.json").read_text())["video"]
                                  ["feature_dim"])
    engine = BlsBackend(pb).open("phi", {}, spec)
    feats = np.random.default_rng(0).standard_normal((2, C.ENERGY_STEPS, spec.inputs[0].shape[-1]), np.float32)
    energy = engine.run({"features": feats})["energy"]
    import onnxruntime as ort

    direct = ort.InferenceSession(str(repo / "phi/1/model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(energy, direct.run(None, {"features": feats})[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(BackendError, match="Triton model phi failed: .*max_batch_size 2"):
        engine.run({"features": np.concatenate([feats, feats])})
    engine = BlsBackend(pb, {"phi": "phi_v2"}).open("phi", {}, spec)
    with pytest.raises(BackendError, match="Triton model phi_v2 failed: .*unknown model"):
        engine.run({"features": feats})


def test_tensorrt_plans_become_tensorrt_plan_models(tiny_engines, tmp_path):
    """A directory with engines for every graph gets tensorrt_plan models serving the .plan files
    (the engines here are stand-in bytes: TensorRT cannot be installed on this machine)."""
    from rewas_rt import manifest as M

    src = tmp_path / "engines"
    shutil.copytree(tiny_engines[0], src)
    m = json.loads((src / "manifest.json").read_text())
    for name, g in m["graphs"].items():
        (src / f"{name}.plan").write_bytes(f"plan of {name}".encode())
        g["engine"] = {**file_entry(src, f"{name}.plan"), "precision": "fp16", "fp32_layers": [],
                       "tensorrt_version": "10.9.0", "compute_capability": "9.0", "gpu": "NVIDIA H100",
                       "fingerprint": "x"}
    M.write_manifest(src, m)
    out = tmp_path / "repo"
    assert write("--engines", src, "--out", out) == 0
    for name in GRAPHS:
        assert load_config(out / name / "config.pbtxt").platform == "tensorrt_plan"
        assert (out / name / "1" / "model.plan").read_bytes() == f"plan of {name}".encode()
        assert not (out / name / "1" / "model.onnx").exists()
    readme = (out / "README.md").read_text()
    assert "TensorRT 10.9.0" in readme and "compute capability 9.0" in readme
    assert write("--engines", src, "--out", out, "--force", "--platform", "onnxruntime_onnx") == 0
    assert load_config(out / "vocoder" / "config.pbtxt").platform == "onnxruntime_onnx"


def test_external_weights_travel_with_the_onnx_model(tiny_engines, tmp_path):
    """A graph whose weights are in <graph>.onnx.data (the full-size UNet) keeps them beside model.onnx,
    under the name the graph refers to, and ONNX Runtime loads it from the repository."""
    import onnxruntime as ort

    from rewas_rt import manifest as M

    src = tmp_path / "engines"
    shutil.copytree(tiny_engines[0], src)
    model = onnx.load(str(src / "vae_decoder.onnx"))
    onnx.save_model(model, str(src / "vae_decoder.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="vae_decoder.onnx.data")
    m = json.loads((src / "manifest.json").read_text())
    g = m["graphs"]["vae_decoder"]
    g["onnx"], g["external_data"] = file_entry(src, "vae_decoder.onnx"), file_entry(src, "vae_decoder.onnx.data")
    M.write_manifest(src, m)
    out = tmp_path / "repo"
    assert write("--engines", src, "--out", out, "--precision", "fp32") == 0
    version = out / "vae_decoder" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "vae_decoder.onnx.data"]
    latent = np.random.default_rng(0).standard_normal((1, *C.LATENT_SHAPE), np.float32)
    got = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"latent": latent})[0]
    want = ort.InferenceSession(str(tiny_engines[0] / "vae_decoder.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"latent": latent})[0]
    np.testing.assert_array_equal(got, want)


def test_precision_choice(tiny_engines, tmp_path):
    graphs = manifest_json(tiny_engines[0])["graphs"]
    assert write("--engines", tiny_engines[0], "--out", tmp_path / "fp32", "--precision", "fp32") == 0
    for name in GRAPHS:
        assert (tmp_path / "fp32" / name / "1" / "model.onnx").read_bytes() == \
            (tiny_engines[0] / graphs[name]["onnx"]["path"]).read_bytes()
    with_fp16 = [n for n in GRAPHS if graphs[n].get("fp16_onnx")]
    code = write("--engines", tiny_engines[0], "--out", tmp_path / "fp16", "--precision", "fp16")
    assert code == (0 if len(with_fp16) == len(GRAPHS) else 1)


@pytest.mark.parametrize("case", ["exists", "no_plans", "no_engines", "bad_instances"])
def test_cli_errors_are_one_line(case, repo, tiny_engines, tmp_path, capsys):
    args = {
        "exists": ["--engines", tiny_engines[0], "--out", repo],
        "no_plans": ["--engines", tiny_engines[0], "--out", tmp_path / "r", "--platform", "tensorrt_plan"],
        "no_engines": ["--engines", tmp_path / "nowhere", "--out", tmp_path / "r"],
        "bad_instances": ["--engines", tiny_engines[0], "--out", tmp_path / "r", "--instances", "0"],
    }[case]
    try:
        code = write(*args)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code in (1, 2) and err.startswith("error: ") and err.count("\n") == 1, err
    fragment = {"exists": "already exists", "no_plans": "no TensorRT engines", "no_engines": "no such engine directory",
                "bad_instances": "--instances must be at least 1"}[case]
    assert fragment in err
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob(".r.*"))
