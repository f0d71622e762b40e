"""Opt-in INT8 variants (export/quantize.py): built by build_engines --int8, recorded and verified in
the manifest, used by the runtime only when asked, refused with one line otherwise."""
import json
import shutil

import numpy as np
import pytest

from rewas_rt import constants as C
from rewas_rt import manifest as M
from rewas_rt.errors import InputError
from rewas_rt.pipeline import Pipeline
from tests.tiny_engines import run_cli


@pytest.fixture(scope="module")
def int8_engines(tiny_engines, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "engines"
    shutil.copytree(tiny_engines[0], out)
    proc = run_cli("--config", "tiny", "--random-weights", "--out", str(out), "--int8", "synchformer")
    assert proc.returncode == 0, proc.stderr
    assert "INT8 dynamic" in proc.stdout
    return out


def test_manifest_records_and_verifies_the_variant(int8_engines):
    m = M.verify(int8_engines)
    q = m.graphs["synchformer"].int8
    assert isinstance(q, M.Int8Onnx)
    assert q.mode == "dynamic" and (int8_engines / q.path).is_file()
    assert q.source_sha256 == m.graphs["synchformer"].onnx.sha256
    dev = q.check["deviation"]["features"]
    assert 0 < dev["rel_mean"] < 1 and q.check["seconds_int8"] > 0  # measured, not bit-exact
    assert all(m.graphs[g].int8 is None for g in m.graphs if g != "synchformer")
    assert "--int8 synchformer" in m.build_command
    assert q.path in set(m.files())
    # The written manifest validates against the published schema, int8 entry included.
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(json.loads((int8_engines / M.MANIFEST_NAME).read_text()), M.schema())
    # A damaged variant makes the directory unusable, like any other listed file.
    bad = int8_engines.parent / "damaged"
    shutil.copytree(int8_engines, bad)
    (bad / q.path).write_bytes(b"x" * q.bytes)
    with pytest.raises(M.ManifestError, match="INT8"):
        M.verify(bad)


def test_runtime_uses_it_only_when_asked(int8_engines):
    frames = np.random.default_rng(0).integers(0, 256, (C.FRAMES, C.CROP, C.CROP, 3), dtype=np.uint8)
    fp32 = Pipeline(int8_engines, backend="onnxruntime-cpu")
    int8 = Pipeline(int8_engines, backend="onnxruntime-cpu", int8=["synchformer"])
    assert fp32.engine("synchformer").spec == int8.engine("synchformer").spec
    a, b = fp32.predict_energy([frames]), int8.predict_energy([frames])
    assert np.isfinite(b).all() and not np.array_equal(a, b)
    assert np.corrcoef(a[0], b[0])[0, 1] > 0.5  # the same curve, roughly (tiny random weights)
    with pytest.raises(InputError, match="no INT8 variant"):
        Pipeline(int8_engines, backend="onnxruntime-cpu", int8=["unet_adapter"])


def test_bad_int8_flag(tmp_path):
    proc = run_cli("--config", "tiny", "--random-weights", "--out", str(tmp_path / "e"), "--int8", "vocoder")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --int8: vocoder")
    assert not (tmp_path / "e").exists()
