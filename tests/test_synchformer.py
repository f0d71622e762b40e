"""Synchformer video encoder (MotionFormer vfeat_extractor) against the golden reference."""
import numpy as np
import pytest
import torch

from tests.reference import assert_close, load_config, load_io, load_manifest, load_weights
from training.models.synchformer import SynchformerConfig, SynchformerVideoEncoder, normalize_uint8_lut

COMPONENT = "synchformer_video"
PREFIX = "vfeat_extractor."


@pytest.fixture(scope="module")
def io():
    return load_io(COMPONENT)


@pytest.fixture(scope="module")
def model():
    m = SynchformerVideoEncoder(SynchformerConfig.from_reference(load_config(COMPONENT))).eval()
    m.load_state_dict({k.removeprefix(PREFIX): v for k, v in load_weights(COMPONENT).items()}, strict=True)
    return m


@pytest.fixture(scope="module")
def video(io):
    """Normalised input in the encoder layout: uint8 (B,S,T,C,H,W) → LUT → (B,S,C,T,H,W),
    the pipeline's permute(0, 1, 3, 2, 4, 5)."""
    x = normalize_uint8_lut()[io["video_uint8_BSTCHW"]]
    return torch.from_numpy(x).permute(0, 1, 3, 2, 4, 5)


def test_lut_is_the_float16_transform(io):
    np.testing.assert_array_equal(normalize_uint8_lut(), io["uint8_to_normalized_lut"])


def test_normalized_input_checksum(video, io):
    x = video.double()
    ref = io["normalized_input_checksum"]  # float32 reductions: approximate
    np.testing.assert_allclose([x.sum().item(), x.abs().sum().item()], ref, rtol=1e-4)


@torch.no_grad()
def test_features(model, video, io):
    assert_close("synchformer_video/features", model(video), io["features"])


@torch.no_grad()
def test_segments_are_independent(model, video, io):
    """Segments never interact: one segment per call (S=1) gives the same features."""
    out = torch.cat([model(video[:, s:s + 1]) for s in range(video.shape[1])], dim=1)
    assert_close("synchformer_video/features (one segment per call)", out, io["features"])


def test_full_size_keys_and_count():
    with torch.device("meta"):
        m = SynchformerVideoEncoder(SynchformerConfig.rewas_m())
    manifest = load_manifest("24-01-04T16-39-21.pt")
    ours = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in m.state_dict().items()}
    assert ours == {k.removeprefix(PREFIX): v for k, v in manifest["keys"].items() if k.startswith(PREFIX)}
    assert sum(p.numel() for p in m.parameters()) == manifest["param_counts"]["vfeat_extractor"]


def test_reference_param_count():
    cfg = load_config(COMPONENT)
    m = SynchformerVideoEncoder(SynchformerConfig.from_reference(cfg))
    assert sum(p.numel() for p in m.parameters()) == cfg["param_count"]
