"""A trained checkpoint goes through export into the runtime: train φ and the adapter for a
few steps, build the engine directory from the canonical folder they write, generate."""
import numpy as np

from export.build_engines import main as build_main
from rewas_rt.pipeline import GenerationOptions, Pipeline, Request
from rewas_rt.video import load_video, normalize, segments
from tests.training_helpers import restore_torch_threads, synthetic_set  # noqa: F401 (fixture)
from training import train_adapter, train_phi
from training.data import read_manifest
from training.pipeline import TorchPipeline


def test_trained_checkpoint_exports_and_generates(tmp_path):
    manifest = synthetic_set()
    model, engines = tmp_path / "model", tmp_path / "engines"
    common = ["--data", str(manifest), "--cache-dir", str(manifest.parent / "cache"), "--steps", "2",
              "--set", "train.threads=1", "--export-dir", str(model)]
    assert train_phi.main(["--config", "tiny", "--random-weights", "--out", str(tmp_path / "phi"), *common]) == 0
    assert train_adapter.main(["--config", "tiny", "--checkpoints", str(model), "--out", str(tmp_path / "ad"),
                               *common]) == 0
    assert build_main(["--checkpoints", str(model), "--out", str(engines),
                       "--no-fp16-check"]) == 0

    clip = load_video(read_manifest(manifest)[0].video)
    pipe = Pipeline(engines, backend="onnxruntime-cpu")
    (res,) = pipe.generate([Request("a ball bouncing", 0, frames=clip.frames)], GenerationOptions(steps=2))
    assert res.waveforms.shape == (1, 81920) and np.isfinite(res.waveforms).all()
    # The engines carry the trained φ (its time attention included), not random weights.
    want = TorchPipeline.from_checkpoints(model).energy(normalize(segments(clip.frames)))
    np.testing.assert_allclose(res.energy, want[0], rtol=1e-4, atol=1e-4 * np.abs(want).max())
