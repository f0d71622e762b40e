"""The engine directory's ``manifest.json`` (DESIGN.md §3): schema, writing, verification.

An engine directory holds one ONNX graph per stage (``<graph>.onnx``, plus
``<graph>.onnx.data`` when the weights live in an external-data file),
optionally a TensorRT engine per stage (``<graph>.plan``), the tokenizer
(``tokenizer.json``) and ``manifest.json``, which describes everything a
non-Python service needs to run the pipeline: file checksums, graph I/O
(names, dtypes, shapes, dynamic axes and TensorRT profile ranges), the model
configuration, the scheduler/VAE/audio/video constants and the tokenizer.

``export/build_engines.py`` writes it; the runtime opens a directory with
``open_engine_dir`` (which calls ``verify``) and refuses one whose manifest,
files or TensorRT/GPU do not match, with a message that says how to rebuild.

Standard library + NumPy only (the runtime never imports torch); ``tensorrt``
and the CUDA bindings are imported lazily by ``detect_tensorrt`` and only there.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping

from rewas_rt import constants as C
from rewas_rt.atomic import atomic_path
from rewas_rt.errors import RewasError
from rewas_rt.graphs import GRAPHS, GraphSpec

FORMAT = "rewas-rt-engines"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
# Shown when a manifest is too broken to say how it was built.
GENERIC_REBUILD = "python export/build_engines.py --checkpoints CHECKPOINT_DIR --tokenizer TOKENIZER_DIR --out {dir}"
BACKENDS = ("onnx", "tensorrt")


class ManifestError(RewasError, ValueError):
    """An engine directory that cannot be used; the message says what is wrong and how to rebuild."""


# --------------------------------------------------------------------------- files


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 23) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(root: str | os.PathLike, rel: str) -> dict[str, Any]:
    """``{"path", "bytes", "sha256"}`` of a file inside the directory (``rel`` is relative to it)."""
    p = Path(root) / rel
    return {"path": rel, "bytes": p.stat().st_size, "sha256": sha256_file(p)}


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """No half-written files: ``rewas_rt.atomic.atomic_path`` (temporary file, fsync, rename)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------- sections


def tensor_entry(spec: GraphSpec, t, with_profile: bool) -> dict[str, Any]:
    """One input/output: name, dtype, shape (ints and dynamic-axis names), the dynamic axes
    by index and, for inputs, the TensorRT optimization-profile shapes."""
    d = t.to_dict()
    d["dynamic_axes"] = {str(i): a for i, a in enumerate(t.shape) if isinstance(a, str)}
    if with_profile:
        lo, opt, hi = spec.profile(t)
        d["profile"] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
    return d


def graph_io(spec: GraphSpec) -> dict[str, list[dict[str, Any]]]:
    """The manifest's ``inputs``/``outputs`` of a *resolved* graph spec (no model-dim names left)."""
    return {
        "inputs": [tensor_entry(spec, t, True) for t in spec.inputs],
        "outputs": [tensor_entry(spec, t, False) for t in spec.outputs],
    }


def scheduler_section(
    default_steps: int = C.DDIM_STEPS, eta: float = C.ETA, guidance: float = C.GUIDANCE,
    sampler: str = "ddim", guidance_interval: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The noise schedule and the recommended sampling (``default_steps``, ``guidance``, ``eta`` and,
    optional keys absent from older manifests, ``sampler`` and ``guidance_interval``)."""
    from rewas_rt.ddim import linear_schedule

    betas, alphas_cumprod = linear_schedule()
    return {
        "type": "ddim",
        "beta_schedule": "linear",  # betas = linspace(sqrt(start), sqrt(end), train_steps) ** 2
        "linear_start": C.LINEAR_START,
        "linear_end": C.LINEAR_END,
        "train_steps": C.TRAIN_STEPS,
        "timestep_spacing": "uniform: arange(0, train_steps, train_steps // steps) + 1",
        "prediction": "eps",
        "betas": [float(b) for b in betas],
        # The model's float32 buffer, each value written exactly.
        "alphas_cumprod": [float(a) for a in alphas_cumprod.astype("float32")],
        "default_steps": default_steps,
        "eta": eta,
        "guidance": guidance,
        "unconditional_hint": "zeros",
        "sampler": sampler,  # rewas_rt.samplers.SAMPLERS
        "guidance_interval": list(guidance_interval) if guidance_interval else None,
    }


def audio_section() -> dict[str, Any]:
    return {
        "sample_rate": C.SAMPLE_RATE, "n_fft": C.N_FFT, "hop": C.HOP, "win": C.WIN, "n_mels": C.N_MELS,
        "fmin": C.FMIN, "fmax": C.FMAX, "window_seconds": C.WINDOW_SECONDS, "mel_frames": C.MEL_FRAMES,
        "wave_samples": C.WAVE_SAMPLES, "log_mel_clamp": C.LOG_MEL_CLAMP,
        "vocoder_hop": C.VOCODER_HOP, "vocoder_samples": C.VOCODER_HOP * C.MEL_FRAMES + C.VOCODER_EXTRA_SAMPLES,
    }


def video_section(feature_dim: int) -> dict[str, Any]:
    return {
        "fps": C.FPS, "seconds": C.VIDEO_SECONDS, "frames": C.FRAMES, "short_side": C.SHORT_SIDE, "crop": C.CROP,
        "mean": C.VIDEO_MEAN, "std": C.VIDEO_STD, "segments": C.SEGMENTS, "segment_len": C.SEGMENT_LEN,
        "segment_stride": C.SEGMENT_STRIDE, "segment_start": C.SEGMENT_START,
        "tokens_per_segment": C.TOKENS_PER_SEGMENT, "feature_dim": feature_dim,
    }


def energy_section() -> dict[str, Any]:
    return {"steps": C.ENERGY_STEPS, "savgol_window": C.SAVGOL_WINDOW, "savgol_order": C.SAVGOL_ORDER}


def vae_section(scale_factor: float) -> dict[str, Any]:
    return {"scale_factor": float(scale_factor), "latent_shape": list(C.LATENT_SHAPE),
            "logvar_clamp": list(C.LOGVAR_CLAMP)}


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- schema

# key -> type(s) of the top level and of every graph entry; nested details are checked in code.
_TOP = {
    "format": str, "format_version": int, "created": str, "producer": dict, "build_command": str,
    "model": dict, "graphs": dict, "dynamic_axes": dict, "scheduler": dict, "vae": dict, "audio": dict,
    "video": dict, "energy": dict, "tokenizer": dict, "tensorrt": (dict, type(None)),
}
_GRAPH = {
    "doc": str, "components": list, "opset": int, "onnx": dict, "external_data": (dict, type(None)),
    "precision": str, "inputs": list, "outputs": list, "parity": dict, "fp16_check": (dict, type(None)),
    "fp32_layers": list, "engine": (dict, type(None)), "fingerprint": str,
}
_FILE = {"path": str, "bytes": int, "sha256": str}
_ENGINE = {**_FILE, "precision": str, "fp32_layers": list, "tensorrt_version": str, "compute_capability": str,
           "gpu": str, "fingerprint": str}
# Optional graph key "fp16_onnx" (absent or null in directories built without it): <graph>.fp16.onnx,
# the graph in FP16 with its fp32_layers kept FP32, checked against the FP32 graph on the CPU.
_FP16_ONNX = {"onnx": dict, "external_data": (dict, type(None)), "precision": str, "parity_vs_fp32": dict}
_TOKENIZER = {**_FILE, "unconditional_ids": list, "pad_id": int, "max_tokens": int, "vocab_size": int}
_SCHEDULER = {"betas": list, "alphas_cumprod": list, "default_steps": int, "eta": (int, float),
              "guidance": (int, float)}


def _check_keys(where: str, d: Any, spec: Mapping[str, Any], problems: list[str]) -> bool:
    if not isinstance(d, dict):
        problems.append(f"{where} is not an object")
        return False
    for k, typ in spec.items():
        if k not in d:
            problems.append(f"{where} has no '{k}'")
        elif not isinstance(d[k], typ) or (typ is int and isinstance(d[k], bool)):
            problems.append(f"{where}.{k} has the wrong type ({type(d[k]).__name__})")
    return True


def schema_problems(m: Any) -> list[str]:
    """Everything structurally wrong with a manifest (empty list: well-formed).

    The format and version are checked first and alone: another version's layout is not
    reported key by key.
    """
    if not isinstance(m, dict):
        return ["the manifest is not a JSON object"]
    if m.get("format") != FORMAT:
        return [f"not a {FORMAT} manifest (format {m.get('format')!r})"]
    if m.get("format_version") != FORMAT_VERSION:
        return [f"manifest format version {m.get('format_version')!r}, this runtime reads version {FORMAT_VERSION}"]
    problems: list[str] = []
    _check_keys("manifest", m, _TOP, problems)
    graphs = m.get("graphs")
    if isinstance(graphs, dict):
        missing = [g for g in GRAPHS if g not in graphs]
        extra = [g for g in graphs if g not in GRAPHS]
        if missing:
            problems.append(f"graphs missing: {', '.join(missing)}")
        if extra:
            problems.append(f"unknown graphs: {', '.join(extra)}")
        for name, g in graphs.items():
            if not _check_keys(f"graphs.{name}", g, _GRAPH, problems):
                continue
            _check_keys(f"graphs.{name}.onnx", g.get("onnx"), _FILE, problems)
            if isinstance(g.get("external_data"), dict):
                _check_keys(f"graphs.{name}.external_data", g["external_data"], _FILE, problems)
            if isinstance(g.get("engine"), dict):
                _check_keys(f"graphs.{name}.engine", g["engine"], _ENGINE, problems)
            if g.get("fp16_onnx") is not None:  # optional: the FP16 graph with FP32 islands
                if _check_keys(f"graphs.{name}.fp16_onnx", g["fp16_onnx"], _FP16_ONNX, problems):
                    _check_keys(f"graphs.{name}.fp16_onnx.onnx", g["fp16_onnx"].get("onnx"), _FILE, problems)
                    if isinstance(g["fp16_onnx"].get("external_data"), dict):
                        _check_keys(f"graphs.{name}.fp16_onnx.external_data", g["fp16_onnx"]["external_data"], _FILE,
                                    problems)
            if g.get("int8") is not None:  # optional: an INT8 variant for the CPU (build_engines --int8)
                _check_keys(f"graphs.{name}.int8", g["int8"], {**_FILE, "mode": str}, problems)
    if isinstance(m.get("tokenizer"), dict):
        _check_keys("tokenizer", m["tokenizer"], _TOKENIZER, problems)
    if isinstance(m.get("scheduler"), dict):
        _check_keys("scheduler", m["scheduler"], _SCHEDULER, problems)
        from rewas_rt.samplers import SAMPLERS

        if m["scheduler"].get("sampler", "ddim") not in SAMPLERS:
            problems.append(f"scheduler.sampler {m['scheduler']['sampler']!r} is not one of {', '.join(SAMPLERS)}")
        interval = m["scheduler"].get("guidance_interval")
        if interval is not None and not (isinstance(interval, list) and len(interval) == 2
                                         and all(isinstance(v, (int, float)) for v in interval)):
            problems.append("scheduler.guidance_interval must be null or [sigma_lo, sigma_hi]")
        for k in ("betas", "alphas_cumprod"):
            if isinstance(m["scheduler"].get(k), list) and len(m["scheduler"][k]) != C.TRAIN_STEPS:
                problems.append(f"scheduler.{k} has {len(m['scheduler'][k])} values, expected {C.TRAIN_STEPS}")
    if isinstance(m.get("vae"), dict) and not isinstance(m["vae"].get("scale_factor"), (int, float)):
        problems.append("vae.scale_factor missing or not a number")
    return problems


def contract_problems(m: Mapping[str, Any]) -> list[str]:
    """Graph I/O in the manifest that differs from the contract in ``rewas_rt.graphs``."""
    problems = []
    feature_dim = m.get("video", {}).get("feature_dim", C.VIDEO_FEATURE_DIM)
    for name, spec in GRAPHS.items():
        entry = m["graphs"].get(name)
        if entry is None:
            continue
        want = graph_io(spec.resolved(feature_dim=feature_dim))
        for side in ("inputs", "outputs"):
            have = [(t.get("name"), t.get("dtype"), t.get("shape")) for t in entry.get(side, [])]
            exp = [(t["name"], t["dtype"], t["shape"]) for t in want[side]]
            if have != exp:
                problems.append(f"graph {name} {side} {have} differ from the runtime's contract {exp}")
    return problems


# --------------------------------------------------------------------------- read / write


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise ManifestError(f"{root}: no such engine directory. Build one with: {GENERIC_REBUILD.format(dir=root)}")
    if not path.is_file():
        raise ManifestError(f"{root}: no {MANIFEST_NAME} (not an engine directory, or its build did not finish). "
                            f"Build one with: {GENERIC_REBUILD.format(dir=root)}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e}). Rebuild with: {GENERIC_REBUILD.format(dir=root)}") from None


def write_manifest(root: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    """Check the schema, then write ``manifest.json`` atomically."""
    problems = schema_problems(manifest)
    if problems:
        raise ManifestError("refusing to write an invalid manifest: " + "; ".join(problems))
    path = Path(root) / MANIFEST_NAME
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")
    return path


def rebuild_hint(root: str | os.PathLike, m: Mapping[str, Any] | None) -> str:
    cmd = m.get("build_command") if isinstance(m, Mapping) else None
    if not isinstance(cmd, str) or not cmd:
        cmd = GENERIC_REBUILD.format(dir=root)
    return f"Rebuild with: {cmd}"


def _file_problems(root: Path, what: str, entry: Mapping[str, Any], checksums: bool) -> list[str]:
    p = root / entry["path"]
    if Path(entry["path"]).is_absolute() or ".." in Path(entry["path"]).parts:
        return [f"{what}: path {entry['path']!r} is not inside the directory"]
    if not p.is_file():
        return [f"{what}: file {entry['path']} is missing"]
    size = p.stat().st_size
    if size != entry["bytes"]:
        return [f"{what}: {entry['path']} has {size} bytes, the manifest says {entry['bytes']} (modified or truncated)"]
    if checksums and sha256_file(p) != entry["sha256"]:
        return [f"{what}: {entry['path']} does not match its sha256 (modified or corrupted)"]
    return []


def verify(
    root: str | os.PathLike,
    *,
    backend: str = "onnx",
    checksums: bool = True,
    tensorrt: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Check an engine directory and return its manifest; raise ``ManifestError`` otherwise.

    Checked: format and version, schema, all seven graphs present with the runtime's I/O
    contract, every listed file present with its size and (``checksums``) sha256, the
    tokenizer. ``backend="tensorrt"`` also requires a ``.plan`` for every graph, built by the
    TensorRT version and for the GPU compute capability in ``tensorrt`` (``{"version",
    "compute_capability"}``; default: ``detect_tensorrt()``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    root = Path(root)
    m = read_manifest(root)
    problems = schema_problems(m)
    if not problems:
        problems = contract_problems(m)
    if not problems:
        for name, g in m["graphs"].items():
            problems += _file_problems(root, f"graph {name}", g["onnx"], checksums)
            if g["external_data"] is not None:
                problems += _file_problems(root, f"graph {name} external data", g["external_data"], checksums)
            for key, entry in _fp16_files(g):
                problems += _file_problems(root, f"graph {name} FP16 {key}", entry, checksums)
            if g.get("int8") is not None:
                problems += _file_problems(root, f"graph {name} INT8 variant", g["int8"], checksums)
                if g["int8"].get("external_data"):
                    problems += _file_problems(root, f"graph {name} INT8 external data", g["int8"]["external_data"],
                                               checksums)
        problems += _file_problems(root, "tokenizer", m["tokenizer"], checksums)
    if not problems and backend == "tensorrt":
        target = dict(tensorrt) if tensorrt is not None else detect_tensorrt()
        if target is None:
            raise ManifestError(f"{root}: TensorRT engines requested, but TensorRT or an NVIDIA GPU is not available "
                                "on this machine (use the ONNX Runtime backend instead)")
        for name, g in m["graphs"].items():
            e = g["engine"]
            if e is None:
                problems.append(f"graph {name} has no TensorRT engine (the directory was built without TensorRT)")
                continue
            if (e["tensorrt_version"], e["compute_capability"]) != (target["version"], target["compute_capability"]):
                problems.append(
                    f"graph {name}: engine built with TensorRT {e['tensorrt_version']} for compute capability "
                    f"{e['compute_capability']} ({e['gpu']}), this machine has TensorRT {target['version']} "
                    f"and compute capability {target['compute_capability']}")
                continue
            problems += _file_problems(root, f"graph {name} engine", e, checksums)
    if problems:
        shown = "; ".join(problems[:6]) + (f"; … and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise ManifestError(f"{root}: unusable engine directory: {shown}. {rebuild_hint(root, m)}")
    return m


def _fp16_files(g: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(kind, file entry) of a graph's optional FP16 variant."""
    f = g.get("fp16_onnx")
    if not f:
        return []
    return [("onnx", f["onnx"])] + ([("external data", f["external_data"])] if f.get("external_data") else [])


# --------------------------------------------------------------------------- runtime view


@dataclasses.dataclass(frozen=True)
class GraphFiles:
    name: str
    onnx: Path
    external_data: Path | None
    plan: Path | None
    entry: Mapping[str, Any]  # the manifest's graph entry (inputs, outputs, fp32_layers, ...)
    onnx_fp16: Path | None = None  # <graph>.fp16.onnx: FP16 with FP32 islands (directories built since issue 15)
    int8: Path | None = None  # the opt-in INT8 variant for the CPU backend, when built

    def files(self) -> dict[str, Path]:
        """What ``Backend.open`` takes: {"onnx", and "onnx_fp16" / "plan" when the directory has them}."""
        out = {"onnx": self.onnx}
        if self.onnx_fp16 is not None:
            out["onnx_fp16"] = self.onnx_fp16
        if self.plan is not None:
            out["plan"] = self.plan
        return out


@dataclasses.dataclass(frozen=True)
class EngineDirectory:
    """A verified engine directory: paths and constants the runtime needs."""

    root: Path
    manifest: Mapping[str, Any]
    backend: str

    def graph(self, name: str) -> GraphFiles:
        g = self.manifest["graphs"][name]
        ext = g["external_data"]
        eng = g["engine"]
        fp16 = g.get("fp16_onnx")
        q = g.get("int8")
        return GraphFiles(name, self.root / g["onnx"]["path"], self.root / ext["path"] if ext else None,
                          self.root / eng["path"] if eng else None, g,
                          onnx_fp16=self.root / fp16["onnx"]["path"] if fp16 else None,
                          int8=self.root / q["path"] if q else None)

    @property
    def tokenizer_path(self) -> Path:
        return self.root / self.manifest["tokenizer"]["path"]

    @property
    def unconditional_ids(self) -> list[int]:
        return list(self.manifest["tokenizer"]["unconditional_ids"])

    @property
    def scale_factor(self) -> float:
        return float(self.manifest["vae"]["scale_factor"])

    @property
    def feature_dim(self) -> int:
        return int(self.manifest["video"]["feature_dim"])

    @property
    def recommended(self) -> dict[str, Any]:
        """The model's recommended sampling: {"sampler", "steps", "guidance", "eta", "guidance_interval"}
        from the scheduler section (a manifest without ``sampler`` recommends DDIM, the original's)."""
        s = self.manifest["scheduler"]
        interval = s.get("guidance_interval")
        return {"sampler": s.get("sampler", "ddim"), "steps": int(s["default_steps"]), "guidance": float(s["guidance"]),
                "eta": float(s["eta"]), "guidance_interval": tuple(interval) if interval else None}

    @property
    def has_engines(self) -> bool:
        return all(g["engine"] is not None for g in self.manifest["graphs"].values())


def open_engine_dir(root: str | os.PathLike, backend: str = "onnx", checksums: bool = True,
                    tensorrt: Mapping[str, str] | None = None) -> EngineDirectory:
    """``verify`` and wrap. ``checksums=False`` checks sizes only (hashing a full-size directory
    reads ~3 GB; do it once at deployment, not at every start)."""
    m = verify(root, backend=backend, checksums=checksums, tensorrt=tensorrt)
    return EngineDirectory(Path(root), m, backend)


# --------------------------------------------------------------------------- TensorRT / GPU


def _compute_capability_cuda() -> tuple[str, str] | None:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.x
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    try:
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count < 1:
            return None
        err, prop = cudart.cudaGetDeviceProperties(0)
        if int(err) != 0:
            return None
        name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
        return f"{prop.major}.{prop.minor}", name
    except Exception:  # noqa: BLE001 - no driver, no device: simply no GPU
        return None


def _visible_gpu() -> str | None:
    """The device CUDA calls 0, as ``nvidia-smi --id`` names it: "0" without
    ``CUDA_VISIBLE_DEVICES``, else its first entry (an index, ``GPU-<uuid>`` or ``MIG-<uuid>``);
    None when the variable hides every GPU (empty, or a first entry CUDA rejects, e.g. -1)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return "0"
    first = value.split(",")[0].strip()
    if first.isdigit() or first.startswith(("GPU-", "MIG-")):
        # An index counts in CUDA's order, nvidia-smi's is the PCI bus order; they agree with
        # CUDA_DEVICE_ORDER=PCI_BUS_ID (and on machines whose GPUs are all of one kind).
        return first
    return None


def _compute_capability_smi() -> tuple[str, str] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    gpu = _visible_gpu()
    if gpu is None:
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


def detect_tensorrt() -> dict[str, str] | None:
    """``{"version", "compute_capability", "gpu"}`` when ``tensorrt`` imports and a GPU (device 0)
    is visible, else None. Never raises."""
    try:
        import tensorrt  # noqa: PLC0415 - optional, lazily imported
    except Exception:  # noqa: BLE001 - ImportError, or a broken install
        return None
    gpu = _compute_capability_cuda() or _compute_capability_smi()
    if gpu is None:
        return None
    return {"version": str(tensorrt.__version__), "compute_capability": gpu[0], "gpu": gpu[1]}


def plan_mismatch(m: Mapping[str, Any], target: Mapping[str, str]) -> str | None:
    """Why the directory's TensorRT engines cannot run on ``target`` ({"version", "compute_capability"}),
    or None when every graph has an engine built for it."""
    for name, g in m.get("graphs", {}).items():
        e = g.get("engine") if isinstance(g, Mapping) else None
        if not e:
            return f"graph {name} has no TensorRT engine"
        if (e.get("tensorrt_version"), e.get("compute_capability")) != (target.get("version"),
                                                                        target.get("compute_capability")):
            return (f"the engines were built with TensorRT {e.get('tensorrt_version')} for compute capability "
                    f"{e.get('compute_capability')}, this machine has TensorRT {target.get('version')} and compute "
                    f"capability {target.get('compute_capability')}")
    return None


def iter_files(m: Mapping[str, Any]) -> Iterable[str]:
    """Relative paths of every file a manifest lists (for copying or packaging a directory)."""
    for g in m["graphs"].values():
        yield g["onnx"]["path"]
        if g["external_data"]:
            yield g["external_data"]["path"]
        if g["engine"]:
            yield g["engine"]["path"]
        for _, entry in _fp16_files(g):
            yield entry["path"]
        if g.get("int8"):
            yield g["int8"]["path"]
            if g["int8"].get("external_data"):
                yield g["int8"]["external_data"]["path"]
    yield m["tokenizer"]["path"]
    yield MANIFEST_NAME
