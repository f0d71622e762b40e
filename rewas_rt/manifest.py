"""The engine directory's ``manifest.json`` (docs/design.md §5): typed layout, reading, verification.

An engine directory holds one ONNX graph per stage (``<graph>.onnx``, plus
``<graph>.onnx.data`` when the weights live in an external-data file),
optionally a TensorRT engine per stage (``<graph>.plan``), the tokenizer
(``tokenizer.json``) and ``manifest.json``, which describes everything a
non-Python service needs to run the pipeline: file checksums, graph I/O
(names, dtypes, shapes, dynamic axes and TensorRT profile ranges), the model
configuration, the scheduler/VAE/audio/video constants and the tokenizer.

The layout is the ``Manifest`` dataclass below: ``Manifest.from_json`` reads it
(naming every unknown, missing or mistyped key), ``to_json`` writes it and
``schema()`` is the same layout as a JSON Schema (``engines/manifest.schema.json``).
``export/manifest_sections.py`` fills it in when ``export/build_engines.py``
builds a directory; the runtime opens one with ``open_engine_dir`` (which calls
``verify``) and refuses one whose manifest, files or TensorRT/GPU do not match,
with a message that says how to rebuild.

Standard library + NumPy only (the runtime never imports torch); ``tensorrt``
and the CUDA bindings are imported lazily, by ``rewas_rt.gpu`` only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from rewas_rt import constants as C
from rewas_rt.atomic import atomic_write_text
from rewas_rt.errors import RewasError
from rewas_rt.graphs import GRAPHS
from rewas_rt.typed_json import from_json, json_schema, optional, to_json

FORMAT = "rewas-rt-engines"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
SCHEMA_NAME = "manifest.schema.json"
# Shown when a manifest is too broken to say how it was built.
GENERIC_REBUILD = "python export/build_engines.py --checkpoints CHECKPOINT_DIR --tokenizer TOKENIZER_DIR --out {dir}"
BACKENDS = ("onnx", "tensorrt")


class ManifestError(RewasError, ValueError):
    """An engine directory that cannot be used; the message says what is wrong and how to rebuild."""


# --------------------------------------------------------------------------- layout


@dataclasses.dataclass
class FileEntry:
    """A file inside the engine directory: relative path, size and sha256."""

    path: str
    bytes: int
    sha256: str


@dataclasses.dataclass
class Profile:
    """A TensorRT optimization profile of one input: shapes at min / opt / max."""

    min: list[int]
    opt: list[int]
    max: list[int]


@dataclasses.dataclass
class Tensor:
    """One graph input/output: name, dtype, shape (ints and dynamic-axis names), dynamic axes by index."""

    name: str
    dtype: str
    shape: list[int | str]
    dynamic_axes: dict[str, str]
    profile: Profile | None = optional()  # inputs only


@dataclasses.dataclass
class Parity:
    """ONNX Runtime vs PyTorch at the export: the worst output's errors."""

    max_abs: float
    max_ref: float
    rel: float
    tolerance: float
    ok: bool
    batch: int


@dataclasses.dataclass
class Engine(FileEntry):
    """A TensorRT plan and what it was built with and for."""

    precision: str
    fp32_layers: list[str]
    tensorrt_version: str
    compute_capability: str
    gpu: str
    fingerprint: str
    typing: str | None = optional()  # "strong" (from the FP16 graph; TensorRT 10 and 11) or "weak" (TensorRT 10 FP16 flag)
    source_onnx: str | None = optional()  # the graph file the engine was built from
    fp32_trt_layers: int | None = optional()
    fp32_unmatched: list[str] | None = optional()
    obey_precision_constraints: bool | None = optional()
    profile: dict[str, Profile] | None = optional()
    build_seconds: float | None = optional()
    parity_vs_onnxruntime: dict[str, Any] | None = optional()


@dataclasses.dataclass
class Fp16Onnx:
    """``<graph>.fp16.onnx``: the graph in FP16 with its ``fp32_layers`` kept FP32 (export/fp16_graph.py),
    checked against the FP32 graph in ONNX Runtime on the CPU."""

    onnx: FileEntry
    external_data: FileEntry | None
    precision: str
    parity_vs_fp32: dict[str, Any]
    fingerprint: str
    converter: str | None = optional()
    keep_io_types: bool | None = optional()
    fp32_nodes: int | None = optional()
    renamed_unnamed_nodes: int | None = optional()
    nodes: int | None = optional()
    casts: int | None = optional()
    fp16_roundtrips_removed: int | None = optional()
    weights_in_data_file: bool | None = optional()
    seconds: float | None = optional()

    def file_entries(self) -> list[tuple[str, FileEntry]]:
        return [("onnx", self.onnx)] + ([("external data", self.external_data)] if self.external_data else [])


@dataclasses.dataclass
class Int8Onnx(FileEntry):
    """``<graph>.int8.onnx``: the opt-in INT8 variant for the CPU backend (export/quantize.py,
    ``build_engines --int8``), with its deviation and speed-up against the FP32 graph at build."""

    external_data: FileEntry | None
    source_sha256: str  # the FP32 graph it was quantized from
    mode: str  # "dynamic" | "static"
    op_types: list[str]
    per_channel: bool
    calibration_inputs: int
    quantize_seconds: float
    check: dict[str, Any]
    version: int

    def __post_init__(self):
        if self.mode not in ("dynamic", "static"):
            raise ValueError(f"int8.mode must be dynamic or static, got {self.mode!r}")

    def file_entries(self) -> list[tuple[str, FileEntry]]:
        return [("", self)] + ([("external data", self.external_data)] if self.external_data else [])


@dataclasses.dataclass
class Graph:
    """One of the seven graphs: its files, I/O contract, checks and (optional) engine."""

    doc: str
    components: list[str]
    opset: int
    onnx: FileEntry
    external_data: FileEntry | None
    precision: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    parity: Parity
    fp16_check: dict[str, Any] | None  # export/fp16_check.py's report
    fp32_layers: list[str]
    engine: Engine | None
    fingerprint: str
    export_seconds: float | None = optional()
    fp16_onnx: Fp16Onnx | None = optional()  # absent in directories built without an FP16 check
    int8: Int8Onnx | None = optional()  # absent unless built with build_engines --int8


@dataclasses.dataclass
class Producer:
    """Versions of the software that wrote the directory."""

    rewas_rt: str
    exporter: str
    export_version: int
    torch: str
    onnx: str
    onnxruntime: str


@dataclasses.dataclass
class Component:
    """A model component's configuration and what identifies its weights."""

    config: dict[str, Any]
    weights: str


@dataclasses.dataclass
class Model:
    """The model the graphs were exported from: checkpoints or random weights of a preset."""

    name: str
    weights: str  # "checkpoints" | "random"
    components: dict[str, Component]
    checkpoints: str | None = optional()
    seed: int | None = optional()


def _length_check(name: str, values: list, n: int) -> None:
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} values, expected {n}")


UNCONDITIONAL_HINTS = ("zeros", "same")


@dataclasses.dataclass
class Scheduler:
    """DDIM over the original's linear beta schedule; betas and alphas_cumprod written out."""

    type: str
    beta_schedule: str
    linear_start: float
    linear_end: float
    train_steps: int
    timestep_spacing: str
    prediction: str
    betas: list[float]
    alphas_cumprod: list[float]
    default_steps: int
    eta: float
    guidance: float
    # The hint of classifier-free guidance's unconditional branch: "zeros" (the original's: that
    # branch sees neither text nor energy, so guidance amplifies both) or "same" (the conditional
    # branch's hint: guidance amplifies the text only, as ControlNet's non-guess mode).
    unconditional_hint: str
    # The recommended sampler (rewas_rt.samplers.SAMPLERS) and guidance interval [sigma_lo, sigma_hi]
    # next to default_steps/guidance/eta; absent in older manifests (DDIM, guidance everywhere).
    sampler: str | None = optional()
    guidance_interval: list[float] | None = optional()

    def __post_init__(self):
        if self.unconditional_hint not in UNCONDITIONAL_HINTS:
            raise ValueError(f"scheduler.unconditional_hint {self.unconditional_hint!r} is not one of "
                             f"{', '.join(UNCONDITIONAL_HINTS)}")
        _length_check("scheduler.betas", self.betas, self.train_steps)
        _length_check("scheduler.alphas_cumprod", self.alphas_cumprod, self.train_steps)
        from rewas_rt.guidance import check_interval
        from rewas_rt.samplers import SAMPLERS

        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ValueError(f"scheduler.sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        if self.guidance_interval is not None:
            if len(self.guidance_interval) != 2:
                raise ValueError("scheduler.guidance_interval must be null or [sigma_lo, sigma_hi]")
            check_interval(self.guidance_interval)

    @property
    def recommended(self) -> dict[str, Any]:
        """{"sampler", "steps", "guidance", "eta", "guidance_interval"}; DDIM when no sampler is recorded."""
        gi = self.guidance_interval
        return {"sampler": self.sampler or "ddim", "steps": int(self.default_steps), "guidance": float(self.guidance),
                "eta": float(self.eta), "guidance_interval": tuple(gi) if gi else None}


@dataclasses.dataclass
class Vae:
    """The latent space: scale factor, latent shape, posterior log-variance clamp."""

    scale_factor: float
    latent_shape: list[int]
    logvar_clamp: list[float]


@dataclasses.dataclass
class Audio:
    """Log-mel and waveform constants."""

    sample_rate: int
    n_fft: int
    hop: int
    win: int
    n_mels: int
    fmin: float
    fmax: float
    window_seconds: float
    mel_frames: int
    wave_samples: int
    log_mel_clamp: float
    vocoder_hop: int
    vocoder_samples: int


@dataclasses.dataclass
class Video:
    """Video preprocessing and segmentation constants."""

    fps: int
    seconds: int
    frames: int
    short_side: int
    crop: int
    mean: float
    std: float
    segments: int
    segment_len: int
    segment_stride: int
    segment_start: int
    tokens_per_segment: int
    feature_dim: int


@dataclasses.dataclass
class Energy:
    """The energy curve: steps and Savitzky-Golay smoothing."""

    steps: int
    savgol_window: int
    savgol_order: int


@dataclasses.dataclass
class Tokenizer(FileEntry):
    """``tokenizer.json`` and the facts the CLAP text graph relies on."""

    unconditional_ids: list[int]
    pad_id: int
    bos_id: int
    eos_id: int
    max_tokens: int
    vocab_size: int
    source: str


@dataclasses.dataclass
class TensorRTTarget:
    """The TensorRT version and GPU the engines were built for."""

    version: str
    compute_capability: str
    gpu: str


@dataclasses.dataclass
class Licence:
    """Which licence covers which release file (``--release`` builds only)."""

    licence: str
    url: str
    files: dict[str, str | None]  # release file -> its sha256 (None: not recorded)
    sources: list[str]
    note: str | None = optional()


@dataclasses.dataclass
class Manifest:
    """``manifest.json`` of a rewas-rt engine directory."""

    format: str
    format_version: int
    created: str
    producer: Producer
    build_command: str
    model: Model
    graphs: dict[str, Graph]
    dynamic_axes: dict[str, list[int]]
    scheduler: Scheduler
    vae: Vae
    audio: Audio
    video: Video
    energy: Energy
    tokenizer: Tokenizer
    tensorrt: TensorRTTarget | None
    licences: list[Licence] | None = optional()  # optional: release files, their licences and sha256

    @classmethod
    def from_json(cls, data: Any) -> "Manifest":
        """Parse (format and version checked first: another version is not reported key by key)."""
        if not isinstance(data, dict):
            raise ManifestError("the manifest is not a JSON object")
        if data.get("format") != FORMAT:
            raise ManifestError(f"not a {FORMAT} manifest (format {data.get('format')!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise ManifestError(f"manifest format version {data.get('format_version')!r}, "
                                f"this runtime reads version {FORMAT_VERSION}")
        m = from_json(cls, data, "manifest", ManifestError)
        missing = [g for g in GRAPHS if g not in m.graphs]
        extra = [g for g in m.graphs if g not in GRAPHS]
        if missing or extra:
            raise ManifestError("; ".join(([f"graphs missing: {', '.join(missing)}"] if missing else [])
                                          + ([f"unknown graphs: {', '.join(extra)}"] if extra else [])))
        return m

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    def files(self) -> Iterable[str]:
        """Relative paths of every file the manifest lists, itself included (for copying a directory)."""
        for g in self.graphs.values():
            yield g.onnx.path
            if g.external_data:
                yield g.external_data.path
            if g.engine:
                yield g.engine.path
            if g.fp16_onnx:
                for _, entry in g.fp16_onnx.file_entries():
                    yield entry.path
            if g.int8:
                for _, entry in g.int8.file_entries():
                    yield entry.path
        yield self.tokenizer.path
        yield MANIFEST_NAME


def schema() -> dict[str, Any]:
    """The JSON Schema of ``manifest.json`` (written to ``engines/manifest.schema.json``)."""
    s = json_schema(Manifest, title="rewas-rt engine directory manifest", schema_id=SCHEMA_NAME)
    s["properties"]["format"] = {"const": FORMAT}
    s["properties"]["format_version"] = {"const": FORMAT_VERSION}
    s["properties"]["graphs"]["required"] = list(GRAPHS)
    s["properties"]["graphs"]["propertyNames"] = {"enum": list(GRAPHS)}
    return s


def schema_text() -> str:
    return json.dumps(schema(), indent=1) + "\n"


# --------------------------------------------------------------------------- files


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 23) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def rebuild_hint(root: str | os.PathLike | None, manifest: Manifest | Mapping[str, Any] | None = None) -> str:
    """``rebuild with: <command>``: the manifest's own build command where there is one, else the generic one.

    Ends every "this engine directory does not fit" message (manifest checks and backends alike).
    """
    cmd = manifest.build_command if isinstance(manifest, Manifest) else (
        manifest.get("build_command") if isinstance(manifest, Mapping) else None)
    if not isinstance(cmd, str) or not cmd:
        cmd = GENERIC_REBUILD.format(dir=root if root is not None else "ENGINE_DIR")
    return f"rebuild with: {cmd}"


# --------------------------------------------------------------------------- read / write


def read_json(root: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``manifest.json`` of ``root``, unchecked (``ManifestError`` when absent or not JSON)."""
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
        raise ManifestError(f"{path}: not valid JSON ({e}); {rebuild_hint(root)}") from None


def read_manifest(root: str | os.PathLike) -> Manifest:
    """The typed manifest of ``root`` (layout checked, files not: see ``verify``)."""
    data = read_json(root)
    try:
        return Manifest.from_json(data)
    except ManifestError as e:
        raise ManifestError(f"{root}: unusable engine directory: {e}; {rebuild_hint(root, data)}") from None


def write_manifest(root: str | os.PathLike, manifest: Manifest | Mapping[str, Any]) -> Path:
    """Check the layout, then write ``manifest.json`` atomically."""
    data = manifest.to_json() if isinstance(manifest, Manifest) else dict(manifest)
    try:
        Manifest.from_json(data)
    except ManifestError as e:
        raise ManifestError(f"refusing to write an invalid manifest: {e}") from None
    path = Path(root) / MANIFEST_NAME
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path


# --------------------------------------------------------------------------- verification


def contract_problems(m: Manifest) -> list[str]:
    """Graph I/O in the manifest that differs from the contract in ``rewas_rt.graphs``."""
    problems = []
    for name, spec in GRAPHS.items():
        spec = spec.resolved(feature_dim=m.video.feature_dim)
        entry = m.graphs[name]
        for side in ("inputs", "outputs"):
            have = [(t.name, t.dtype, list(t.shape)) for t in getattr(entry, side)]
            exp = [(t.name, t.dtype, list(t.shape)) for t in getattr(spec, side)]
            if have != exp:
                problems.append(f"graph {name} {side} {have} differ from the runtime's contract {exp}")
    return problems


def _file_problems(root: Path, what: str, entry: FileEntry, checksums: bool) -> list[str]:
    p = root / entry.path
    if Path(entry.path).is_absolute() or ".." in Path(entry.path).parts:
        return [f"{what}: path {entry.path!r} is not inside the directory"]
    if not p.is_file():
        return [f"{what}: file {entry.path} is missing"]
    size = p.stat().st_size
    if size != entry.bytes:
        return [f"{what}: {entry.path} has {size} bytes, the manifest says {entry.bytes} (modified or truncated)"]
    if checksums and sha256_file(p) != entry.sha256:
        return [f"{what}: {entry.path} does not match its sha256 (modified or corrupted)"]
    return []


def verify(
    root: str | os.PathLike,
    *,
    backend: str = "onnx",
    checksums: bool = True,
    tensorrt: Mapping[str, str] | None = None,
) -> Manifest:
    """Check an engine directory and return its manifest; raise ``ManifestError`` otherwise.

    Checked: format and version, layout, all seven graphs present with the runtime's I/O
    contract, every listed file present with its size and (``checksums``) sha256, the
    tokenizer. ``backend="tensorrt"`` also requires a ``.plan`` for every graph, built by the
    TensorRT version and for the GPU compute capability in ``tensorrt`` (``{"version",
    "compute_capability"}``; default: ``detect_tensorrt()``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    root = Path(root)
    m = read_manifest(root)
    problems = contract_problems(m)
    if not problems:
        for name, g in m.graphs.items():
            problems += _file_problems(root, f"graph {name}", g.onnx, checksums)
            if g.external_data is not None:
                problems += _file_problems(root, f"graph {name} external data", g.external_data, checksums)
            if g.fp16_onnx is not None:
                for kind, entry in g.fp16_onnx.file_entries():
                    problems += _file_problems(root, f"graph {name} FP16 {kind}", entry, checksums)
            if g.int8 is not None:
                for kind, entry in g.int8.file_entries():
                    problems += _file_problems(root, f"graph {name} INT8 variant {kind}".rstrip(), entry, checksums)
        problems += _file_problems(root, "tokenizer", m.tokenizer, checksums)
    if not problems and backend == "tensorrt":
        target = dict(tensorrt) if tensorrt is not None else detect_tensorrt()
        if target is None:
            raise ManifestError(f"{root}: TensorRT engines requested, but TensorRT or an NVIDIA GPU is not available "
                                "on this machine (use the ONNX Runtime backend instead)")
        for name, g in m.graphs.items():
            e = g.engine
            if e is None:
                problems.append(f"graph {name} has no TensorRT engine (the directory was built without TensorRT)")
                continue
            if (e.tensorrt_version, e.compute_capability) != (target["version"], target["compute_capability"]):
                problems.append(
                    f"graph {name}: engine built with TensorRT {e.tensorrt_version} for compute capability "
                    f"{e.compute_capability} ({e.gpu}), this machine has TensorRT {target['version']} "
                    f"and compute capability {target['compute_capability']}")
                continue
            problems += _file_problems(root, f"graph {name} engine", e, checksums)
    if problems:
        shown = "; ".join(problems[:6]) + (f"; … and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise ManifestError(f"{root}: unusable engine directory: {shown}; {rebuild_hint(root, m)}")
    return m


# --------------------------------------------------------------------------- runtime view


@dataclasses.dataclass(frozen=True)
class GraphFiles:
    name: str
    onnx: Path
    external_data: Path | None
    plan: Path | None
    entry: Graph  # the manifest's graph entry (inputs, outputs, fp32_layers, ...)
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
    manifest: Manifest
    backend: str

    def graph(self, name: str) -> GraphFiles:
        g = self.manifest.graphs[name]
        return GraphFiles(name, self.root / g.onnx.path,
                          self.root / g.external_data.path if g.external_data else None,
                          self.root / g.engine.path if g.engine else None, g,
                          self.root / g.fp16_onnx.onnx.path if g.fp16_onnx else None,
                          self.root / g.int8.path if g.int8 else None)

    @property
    def tokenizer_path(self) -> Path:
        return self.root / self.manifest.tokenizer.path

    @property
    def unconditional_ids(self) -> list[int]:
        return list(self.manifest.tokenizer.unconditional_ids)

    @property
    def scale_factor(self) -> float:
        return float(self.manifest.vae.scale_factor)

    @property
    def feature_dim(self) -> int:
        return int(self.manifest.video.feature_dim)

    @property
    def recommended(self) -> dict[str, Any]:
        """The model's recommended sampling: {"sampler", "steps", "guidance", "eta", "guidance_interval"}
        from the scheduler section (a manifest without ``sampler`` recommends DDIM, the original's)."""
        return self.manifest.scheduler.recommended

    @property
    def sampling_defaults(self) -> dict[str, float]:
        """The model's recommended sampling: {"steps", "guidance", "eta"} (the scheduler section)."""
        s = self.manifest.scheduler
        return {"steps": int(s.default_steps), "guidance": float(s.guidance), "eta": float(s.eta)}

    @property
    def has_engines(self) -> bool:
        return all(g.engine is not None for g in self.manifest.graphs.values())


def open_engine_dir(root: str | os.PathLike, backend: str = "onnx", checksums: bool = True,
                    tensorrt: Mapping[str, str] | None = None) -> EngineDirectory:
    """``verify`` and wrap. ``checksums=False`` checks sizes only (hashing a full-size directory
    reads ~3 GB; do it once at deployment, not at every start)."""
    m = verify(root, backend=backend, checksums=checksums, tensorrt=tensorrt)
    return EngineDirectory(Path(root), m, backend)


def detect_tensorrt() -> dict[str, str] | None:
    """``{"version", "compute_capability", "gpu"}`` when TensorRT and a GPU (device 0) are usable,
    else None. Never raises. The one probe: ``rewas_rt.gpu.probe``."""
    from rewas_rt.gpu import probe

    _, _, target = probe(0)  # a target without `usable`: TensorRT + a GPU, but no cuda-python (enough to build)
    return dict(target) if target else None


def plan_mismatch(m: Manifest, target: Mapping[str, str]) -> str | None:
    """Why the directory's TensorRT engines cannot run on ``target`` ({"version", "compute_capability"}),
    or None when every graph has an engine built for it."""
    for name, g in m.graphs.items():
        e = g.engine
        if e is None:
            return f"graph {name} has no TensorRT engine"
        if (e.tensorrt_version, e.compute_capability) != (target.get("version"), target.get("compute_capability")):
            return (f"the engines were built with TensorRT {e.tensorrt_version} for compute capability "
                    f"{e.compute_capability}, this machine has TensorRT {target.get('version')} and compute "
                    f"capability {target.get('compute_capability')}")
    return None


if __name__ == "__main__":  # python -m rewas_rt.manifest > engines/manifest.schema.json
    sys.stdout.write(schema_text())
