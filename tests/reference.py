"""Access to the golden reference sets under tests/fixtures/reference/.

Tests read everything (configs, array names, shapes) from the fixture files, so
any other reference set with the same layout runs through the same tests:
point REWAS_REFERENCE_DIR at it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

REFERENCE_DIR = Path(os.environ.get("REWAS_REFERENCE_DIR", Path(__file__).parent / "fixtures" / "reference"))

# Tolerances of the issue: per array, relative to the reference's max |value|.
FORWARD_RTOL = 1e-4
TRAJECTORY_RTOL = 1e-3

# name -> (max abs error, max |ref|); printed at the end of the session.
OBSERVED: dict[str, tuple[float, float]] = {}


def component_dir(component: str) -> Path:
    return REFERENCE_DIR / component


def load_config(component: str) -> dict:
    return json.loads((component_dir(component) / "config.json").read_text())


def load_io(component: str, name: str = "io.npz") -> dict[str, np.ndarray]:
    with np.load(component_dir(component) / name) as z:
        return {k: z[k] for k in z.files}


def load_weights(component: str, file: str = "weights.safetensors") -> dict:
    """Reference weights as float32 torch tensors, keyed exactly as in the released file."""
    import torch
    from safetensors.torch import load_file

    sd = load_file(str(component_dir(component) / file))
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def load_manifest(checkpoint_file: str) -> dict:
    return json.loads((REFERENCE_DIR / "manifests" / f"{checkpoint_file}.json").read_text())


def assert_close(name: str, actual, expected, rtol: float = FORWARD_RTOL) -> float:
    """max|actual - expected| <= rtol * max|expected|; records the error for the summary."""
    a = np.asarray(actual.detach().cpu().numpy() if hasattr(actual, "detach") else actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{name}: shape {a.shape} != reference {e.shape}"
    assert np.isfinite(a).all(), f"{name}: non-finite values"
    err = float(np.max(np.abs(a - e))) if e.size else 0.0
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    OBSERVED[name] = (err, scale)
    assert err <= rtol * scale, f"{name}: max abs err {err:.3e} > {rtol:g} x max|ref| {scale:.3e}"
    return err
