"""Engine backends (docs/design.md §6) and the choice between them.

Automatic choice, fastest first: native TensorRT when the engine directory has
``.plan`` engines built for this TensorRT version and GPU and TensorRT and a GPU are
here (plans for another TensorRT/GPU are skipped, with the reason, not chosen and then
failed on); else ONNX Runtime with the
TensorRT, then the CUDA execution provider when they really work here (not
merely listed: see ``onnxruntime.py``); else ONNX Runtime on the CPU.
``--backend NAME`` overrides it. The choice is logged on the ``rewas_rt`` logger.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from rewas_rt.backends.base import Backend, BackendError, Engine, rebuild_hint
from rewas_rt.backends.onnxruntime import OnnxRuntimeBackend
from rewas_rt.backends.tensorrt import TensorRTBackend

__all__ = ["BACKEND_NAMES", "Backend", "BackendError", "Engine", "backend_status", "create_backend", "select_backend"]

log = logging.getLogger("rewas_rt")

# In the order the automatic choice prefers them.
BACKEND_NAMES = ("tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda", "onnxruntime-cpu")


def create_backend(name: str, *, threads: int | None = None) -> Backend:
    """The backend called ``name`` (not yet checked to be available). threads: ONNX Runtime's intra-op threads."""
    if name == "tensorrt":
        return TensorRTBackend()
    if name in BACKEND_NAMES:
        return OnnxRuntimeBackend(name.removeprefix("onnxruntime-"), threads=threads)
    raise BackendError(f"unknown backend '{name}'; choose auto or one of: {', '.join(BACKEND_NAMES)}{_available_note()}")


def backend_status() -> dict[str, tuple[bool, str]]:
    """Every backend's (available here, reason), e.g. for ``rewas-rt info``."""
    return {name: create_backend(name).available() for name in BACKEND_NAMES}


def select_backend(requested: str | None, has_plans: bool, *, threads: int | None = None,
                   plans_for: Callable[[Mapping[str, str]], str | None] | None = None) -> Backend:
    """The backend to run with: ``requested`` by name, or the automatic choice for None / "auto".

    has_plans: the engine directory holds TensorRT ``.plan`` engines. plans_for: given the
    TensorRT backend's target ({"version", "compute_capability", "gpu"}), why those engines
    cannot run there, or None when they can (``manifest.plan_mismatch``); without it, plans
    are assumed to match.
    Raises BackendError for an unknown or unavailable backend, with the reason.
    """
    if requested not in (None, "auto"):
        backend = create_backend(requested, threads=threads)
        ok, reason = backend.available()
        if not ok:
            raise BackendError(f"backend {requested} is not available here: {reason}{_available_note()}")
        if requested == "tensorrt" and not has_plans:
            raise BackendError(
                f"backend tensorrt needs TensorRT engines (.plan) in the engine directory; {rebuild_hint(None)}"
            )
        log.info("backend: %s (requested; %s)", requested, reason)
        return backend

    skipped = []
    for name in BACKEND_NAMES:
        if name == "tensorrt" and not has_plans:
            skipped.append("tensorrt: the engine directory has no .plan engines")
            continue
        backend = create_backend(name, threads=threads)
        ok, reason = backend.available()
        if ok and name == "tensorrt" and plans_for is not None:
            mismatch = plans_for(backend.target())
            if mismatch is not None:
                ok, reason = False, f"{mismatch} (rebuild the engines on this machine to use them)"
        if ok:
            log.info("backend: %s (automatic; %s)", name, reason)
            for line in skipped:
                log.info("backend not chosen: %s", line)
            return backend
        skipped.append(f"{name}: {reason}")
    raise BackendError("no backend is available: " + "; ".join(skipped))


def _available_note() -> str:
    usable = [name for name, (ok, _) in backend_status().items() if ok]
    return f" (available here: {', '.join(usable) or 'none'})"
