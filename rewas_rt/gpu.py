"""The one TensorRT/GPU probe: is TensorRT usable here, and which GPU would engines be built for?

Used by ``rewas_rt.manifest.detect_tensorrt`` (which engines fit this machine; what
``export/build_engines.py`` builds for) and by the TensorRT backend. ``tensorrt`` and
the CUDA bindings are imported lazily, here only.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess

from rewas_rt.errors import BackendError

MIN_TENSORRT = 10


def cuda_imports():
    """(tensorrt, cuda.bindings.runtime), or BackendError saying which is missing."""
    try:
        import tensorrt
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install
        raise BackendError("TensorRT is not installed (the `tensorrt` Python package comes from NVIDIA's install)") from e
    if int(tensorrt.__version__.split(".")[0]) < MIN_TENSORRT:
        raise BackendError(f"TensorRT {tensorrt.__version__} is too old: TensorRT {MIN_TENSORRT} or newer is needed")
    try:
        from cuda.bindings import runtime
    except ImportError as e:
        raise BackendError("cuda-python 12.8+ is not installed (cuda.bindings): pip install 'rewas-rt[gpu]'") from e
    return tensorrt, runtime


def cuda_call(cudart, what: str, result):
    """Unpack a cuda-python result ``(error, *values)``; raise on a CUDA error."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(err)
        raise BackendError(f"CUDA {what} failed: {text.decode(errors='replace')}")
    return values[0] if len(values) == 1 else None


def _visible_gpu(device_id: int) -> str | None:
    """The GPU CUDA calls ``device_id``, as ``nvidia-smi --id`` names it: the index itself without
    ``CUDA_VISIBLE_DEVICES``, else that entry of the list (an index, ``GPU-<uuid>`` or ``MIG-<uuid>``);
    None when the variable hides it (empty, too short, or an entry CUDA rejects, e.g. -1).
    An index counts in CUDA's order, nvidia-smi's is the PCI bus order; they agree with
    CUDA_DEVICE_ORDER=PCI_BUS_ID (and on machines whose GPUs are all of one kind)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return str(device_id)
    entries = [e.strip() for e in value.split(",")]
    if device_id >= len(entries):
        return None
    entry = entries[device_id]
    return entry if entry.isdigit() or entry.startswith(("GPU-", "MIG-")) else None


def _smi(device_id: int) -> tuple[str, str] | None:
    """(compute capability, name) of a GPU from nvidia-smi, where cuda-python is missing
    (honours ``CUDA_VISIBLE_DEVICES``)."""
    exe = shutil.which("nvidia-smi")
    gpu = _visible_gpu(device_id)
    if exe is None or gpu is None:
        return None
    try:
        out = subprocess.run([exe, f"--id={gpu}", "--query-gpu=compute_cap,name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    first = out.strip().splitlines()[0] if out.strip() else ""
    if "," not in first:
        return None
    cc, name = (s.strip() for s in first.split(",", 1))
    return cc, name


@functools.lru_cache(maxsize=None)
def probe(device_id: int = 0) -> tuple[bool, str, dict[str, str]]:
    """(usable, reason, target): target ``{"version", "compute_capability", "gpu"}`` is what a
    TensorRT plan must have been built for to load on GPU ``device_id``. Never raises."""
    try:
        trt, cudart = cuda_imports()
    except BackendError as e:
        if "cuda-python" not in str(e):
            return False, str(e), {}
        import tensorrt as trt  # TensorRT is there, the CUDA bindings are not: ask nvidia-smi (building only)

        gpu = _smi(device_id)
        if gpu is None:
            return False, str(e), {}
        target = {"version": str(trt.__version__), "compute_capability": gpu[0], "gpu": gpu[1]}
        return False, str(e), target
    try:
        err, count = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess:
            return False, f"no usable CUDA GPU ({cudart.cudaGetErrorString(err)[1].decode(errors='replace')})", {}
        if device_id >= count:
            return False, f"no CUDA GPU {device_id} ({count} found)", {}
        prop = cuda_call(cudart, "cudaGetDeviceProperties", cudart.cudaGetDeviceProperties(device_id))
    except BackendError as e:
        return False, str(e), {}
    except Exception as e:  # noqa: BLE001 - no driver, a broken install: simply no GPU
        first = str(e).splitlines()[0] if str(e) else ""
        return False, f"CUDA is not usable here (no NVIDIA driver? {type(e).__name__}: {first})", {}
    gpu = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    target = {"version": str(trt.__version__), "compute_capability": f"{prop.major}.{prop.minor}", "gpu": gpu}
    return True, f"TensorRT {trt.__version__} on {gpu} (compute capability {prop.major}.{prop.minor})", target
