"""ONNX Runtime backends: the CPU, CUDA and TensorRT execution providers.

``onnxruntime`` is imported lazily: ``rewas_rt`` imports without it, and
``available()`` says how to install it. ``onnxruntime-gpu`` lists the CUDA and
TensorRT providers even on a machine with no GPU (or without the CUDA/TensorRT
libraries) and then silently runs on the CPU (docs/design.md §9), so every session
is checked: the provider asked for must come first in ``get_providers()``.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rewas_rt.backends.base import Backend, BackendError, Engine, check_model_io, rebuild_hint, require_file
from rewas_rt.graphs import GraphSpec

log = logging.getLogger("rewas_rt")

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

# A 71-byte ONNX model, y = Identity(x) on float[1] (IR 8, opset 13), made with
# onnx.helper. It lets `available()` open a real session with a provider
# without the `onnx` package, which the runtime does not depend on.
_PROBE_MODEL = (
    b'\x08\x08\x12\x00:;\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x05probeZ\x0f\n\x01x\x12\n\n\x08\x08\x01'
    b"\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\r"
)

# ONNX tensor type strings of session.get_inputs() -> numpy dtype names.
_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}


def physical_cores() -> int:
    """Physical cores this process may use: SMT siblings share one core's FPUs,
    so more threads than cores only adds contention for these GEMM-bound graphs."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        cores, block = set(), {}
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            if not line.strip():  # a blank line ends one logical CPU's block
                if "core id" in block:
                    cores.add((block.get("physical id"), block["core id"]))
                block = {}
            elif ":" in line:
                key, value = line.split(":", 1)
                block[key.strip()] = value.strip()
    except OSError:
        return usable
    return max(1, min(usable, len(cores) or usable))


def default_cache_dir() -> Path:
    """Where the TensorRT provider keeps its engine and timing caches (per user;
    the engine directory may be read-only)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rewas-rt" / "onnxruntime-tensorrt"


PRECISIONS = ("auto", "fp32", "fp16")


class OnnxRuntimeBackend(Backend):
    """``onnxruntime-cpu``, ``onnxruntime-cuda`` or ``onnxruntime-tensorrt``.

    threads: intra-op threads (default: physical cores). device_id: the GPU.
    precision: which graph runs — "fp32" (``<graph>.onnx``), "fp16" (``<graph>.fp16.onnx``:
    FP16 with the FP32 islands the export found; an error where the directory has none),
    "auto" (default): FP16 on a GPU provider when the directory has the FP16 graph, else FP32.
    The precision lives in the graph: the TensorRT provider's ``trt_fp16_enable`` (FP16 for
    every layer, FP32 pins ignored) is set only for an FP32 graph whose manifest lists no
    FP32 nodes, and only under "auto".
    cache_dir: TensorRT provider only (engine + timing cache, keyed per graph content).
    io_binding: bind inputs/outputs explicitly (outputs allocated on the
    provider's device, then copied back) instead of ``session.run``.
    """

    def __init__(
        self,
        device: str = "cpu",
        *,
        threads: int | None = None,
        device_id: int = 0,
        precision: str = "auto",
        cache_dir: str | os.PathLike | None = None,
        io_binding: bool = False,
    ):
        if device not in PROVIDERS:
            raise ValueError(f"device must be one of {sorted(PROVIDERS)}, not {device!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self.device = device
        self.name = f"onnxruntime-{device}"
        self.provider = PROVIDERS[device]
        self.threads = threads or physical_cores()
        self.device_id = device_id
        self.precision = precision
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.io_binding = io_binding

    def available(self) -> tuple[bool, str]:
        return _probe(self.device, self.device_id)

    def graph_file(self, graph: str, files: Mapping[str, str | os.PathLike]) -> tuple[str, str]:
        """(path, "fp16" | "fp32") of the graph this backend runs."""
        want = self.precision
        if want == "auto":
            want = "fp16" if self.device != "cpu" and files.get("onnx_fp16") is not None else "fp32"
        if want == "fp16":
            if files.get("onnx_fp16") is None:
                raise BackendError(f"graph {graph}: the engine directory has no FP16 graph ({graph}.fp16.onnx); "
                                   f"{rebuild_hint(next(iter(files.values()), None))}")
            return require_file(files, "onnx_fp16", graph), "fp16"
        return require_file(files, "onnx", graph), "fp32"

    def open(self, graph: str, files: Mapping[str, str | os.PathLike], spec: GraphSpec,
             info: Mapping[str, Any] | None = None) -> Engine:
        path, precision = self.graph_file(graph, files)
        trt_fp16 = (self.device == "tensorrt" and self.precision == "auto" and precision == "fp32"
                    and info is not None and not info.get("fp32_layers"))
        ort = _import_ort()
        options = self._session_options(ort)
        providers = self._providers(spec, cache_key=_cache_key(graph, path, info), trt_fp16=trt_fp16)
        try:
            session = ort.InferenceSession(path, sess_options=options, providers=providers)
        except _ort_errors(ort) as e:
            if self.device != "tensorrt" or "profile" not in str(e).lower():
                raise BackendError(f"graph {graph}: onnxruntime cannot load {path}: {_first_line(e)}; "
                                   f"{rebuild_hint(path)}") from e
            # Explicit trt_profile_* shapes must name every dynamic input of every TensorRT subgraph;
            # when ORT splits the graph (a node TensorRT cannot run), session creation fails with
            # "User needs to provide all the dynamic shape inputs with associated profiles ..."
            # (onnxruntime PR #17007). Then let ORT build profiles from the shapes it sees.
            log.warning("graph %s: the TensorRT provider refused the explicit profiles (%s); falling back to "
                        "implicit profiles (an engine rebuild whenever a new input shape range appears)",
                        graph, _first_line(e))
            providers = self._providers(spec, cache_key=_cache_key(graph, path, info), trt_fp16=trt_fp16,
                                        explicit_profiles=False)
            try:
                session = ort.InferenceSession(path, sess_options=self._session_options(ort), providers=providers)
            except _ort_errors(ort) as e2:
                raise BackendError(f"graph {graph}: onnxruntime cannot load {path}: {_first_line(e2)}; "
                                   f"{rebuild_hint(path)}") from e2
        used = session.get_providers()
        if used[0] != self.provider:
            raise BackendError(
                f"graph {graph}: onnxruntime could not start {self.provider} and would run on {used[0]}; "
                f"choose another --backend (see `rewas-rt info`)"
            )
        check_model_io(spec, _io(session.get_inputs()), _io(session.get_outputs()), source=path)
        metadata = {
            "backend": self.name,
            "providers": used,
            "precision": "fp16 (whole graph, trt_fp16_enable)" if trt_fp16 else (
                "fp16 graph with FP32 islands" if precision == "fp16" else "fp32"),
            "graph": os.path.basename(path),
            "device": "cpu" if self.device == "cpu" else f"cuda:{self.device_id}",
            "threads": self.threads,
            "onnxruntime": ort.__version__,
        }
        binding_device = ("cpu" if self.device == "cpu" else "cuda", self.device_id) if self.io_binding else None
        return OrtEngine(spec, session, metadata, binding_device, _ort_errors(ort))

    def _session_options(self, ort):
        options = _quiet_options(ort)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        return options

    def _providers(self, spec: GraphSpec, *, cache_key: str = "default", trt_fp16: bool = False,
                   explicit_profiles: bool = True) -> list:
        cpu = ("CPUExecutionProvider", {})
        cuda = ("CUDAExecutionProvider", {"device_id": self.device_id})
        if self.device == "cpu":
            return [cpu]
        if self.device == "cuda":
            return [cuda, cpu]
        # ORT's engine cache key covers the graph's structure and the ORT/TensorRT versions, not
        # its weights (ORT TensorRT EP docs: clean the cache when the model changes): a
        # re-exported model with new weights would load the old engine. One folder per graph
        # content (cache_key) makes that impossible.
        cache = self.cache_dir / cache_key
        cache.mkdir(parents=True, exist_ok=True)
        trt = {
            "device_id": self.device_id,
            # ORT reads option values as strings; "true"/"false" is the spelling its own docs use.
            # trt_fp16_enable lets TensorRT run *every* layer in FP16 (weak typing, no pins): only
            # for graphs without FP32 nodes; an FP16 graph carries its own types.
            "trt_fp16_enable": "true" if trt_fp16 else "false",
            # Building engines for the full UNet takes minutes: cache them across runs.
            "trt_engine_cache_enable": "true",
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "true",
            "trt_timing_cache_path": str(self.cache_dir),  # valid across models (per GPU + TensorRT version)
        }
        if explicit_profiles:
            profile = [spec.profile(t) for t in spec.inputs]

            def shapes(k: int) -> str:  # "name:1x8x128x16,name2:..." for min (0) / opt (1) / max (2)
                return ",".join(f"{t.name}:{'x'.join(map(str, p[k]))}" for t, p in zip(spec.inputs, profile))

            # One engine for the whole contract range instead of a rebuild per new shape.
            trt.update(trt_profile_min_shapes=shapes(0), trt_profile_opt_shapes=shapes(1),
                       trt_profile_max_shapes=shapes(2))
        # CUDA then CPU run the nodes TensorRT does not support.
        return [("TensorrtExecutionProvider", trt), cuda, cpu]


def _cache_key(graph: str, path: str, info: Mapping[str, Any] | None) -> str:
    """A name for the content of a graph: the manifest's checksums of its files when known
    (no re-hashing of a 3 GB UNet at each start), else a hash of the .onnx file and the size
    and modification time of its external data."""
    h = hashlib.sha256(graph.encode())
    if info is not None:
        for key in ("onnx", "external_data"):
            if info.get(key):
                h.update(str(info[key]["sha256"]).encode())
        fp16 = info.get("fp16_onnx") or {}
        for key in ("onnx", "external_data"):
            if fp16.get(key):
                h.update(str(fp16[key]["sha256"]).encode())
        h.update(os.path.basename(path).encode())
    else:
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
        for data in Path(path).parent.glob(Path(path).name + ".data"):
            st = data.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return f"{graph}-{h.hexdigest()[:16]}"


class OrtEngine(Engine):
    def __init__(self, spec, session, metadata, binding_device: tuple[str, int] | None, errors: tuple):
        super().__init__(spec, metadata)
        self._session = session
        self._binding_device = binding_device
        self._errors = errors

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            if self._binding_device is None:
                outputs = self._session.run(list(self.output_names), feeds)
            else:
                binding = self._session.io_binding()
                for name, array in feeds.items():  # `feeds` keeps the arrays alive until the run ends
                    binding.bind_cpu_input(name, array)
                for name in self.output_names:
                    binding.bind_output(name, *self._binding_device)
                self._session.run_with_iobinding(binding)
                outputs = binding.copy_outputs_to_cpu()
        except self._errors as e:
            raise BackendError(f"graph {self.name}: onnxruntime failed: {_first_line(e)}") from e
        return dict(zip(self.output_names, outputs))

    def close(self) -> None:
        self._session = None


def _import_ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendError(
            "onnxruntime is not installed: pip install 'rewas-rt[cpu]' (or 'rewas-rt[gpu]', never both)"
        ) from e
    return onnxruntime


def _ort_errors(ort) -> tuple[type[BaseException], ...]:
    """The exceptions onnxruntime raises for bad models/inputs (its pybind11
    classes share no base class); our own bugs (TypeError, KeyError...) pass through."""
    state = ort.capi.onnxruntime_pybind11_state
    ours = [v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception)]
    return (*ours, RuntimeError, ValueError)


def _quiet_options(ort):
    options = ort.SessionOptions()
    # Provider fallback is detected and reported by us; ORT's own warnings would repeat it.
    options.log_severity_level = 3
    return options


def _io(args) -> dict[str, tuple[str, list[int | None]]]:
    return {
        a.name: (_ONNX_DTYPES.get(a.type, a.type), [d if isinstance(d, int) else None for d in a.shape]) for a in args
    }


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@functools.lru_cache(maxsize=None)
def _probe(device: str, device_id: int) -> tuple[bool, str]:
    """Whether a provider really works here: listed, a GPU build, and a session on it starts."""
    try:
        ort = _import_ort()
    except BackendError as e:
        return False, str(e)
    provider = PROVIDERS[device]
    if device == "cpu":
        return True, f"onnxruntime {ort.__version__} on {physical_cores()} CPU cores"
    if ort.get_device() != "GPU" or provider not in ort.get_available_providers():
        return False, (
            f"onnxruntime {ort.__version__} here is a CPU build without {provider}; "
            "install rewas-rt[gpu] instead of rewas-rt[cpu]"
        )
    providers = [(provider, {"device_id": device_id}), "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(_PROBE_MODEL, sess_options=_quiet_options(ort), providers=providers)
    except _ort_errors(ort) as e:
        return False, f"{provider} does not start: {_first_line(e)}"
    if session.get_providers()[0] != provider:
        return False, f"{provider} is listed but does not start (no GPU, or CUDA/TensorRT libraries missing)"
    return True, f"onnxruntime {ort.__version__} {provider} on GPU {device_id}"
