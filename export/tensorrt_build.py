"""TensorRT engines from the exported ONNX graphs, for TensorRT 10 and 11 (Python API).

``tensorrt`` is imported lazily, inside the functions that need it: this module imports
(and its comparison helper runs) on machines without TensorRT. Per graph:

* ``OnnxParser.parse_from_file`` (so external weight files resolve next to the .onnx);
* one optimization profile, min/opt/max shapes from ``rewas_rt.graphs`` (the manifest's
  ``profile`` entries);
* a persistent timing cache in the output directory named by TensorRT version and GPU
  compute capability (``timing_cache_name``): a cache from another version or GPU is
  rejected by TensorRT, so it is never offered one, and a rejected or unreadable cache
  falls back to an empty one instead of failing the build;
* the network's typing, selected by TensorRT version (``typing_modes``), never by probing
  for attributes:

  - ``strong`` (TensorRT 10 and 11, the default): the network is strongly typed and its
    precision is the ONNX graph's — build it from ``<graph>.fp16.onnx`` (``fp16_graph``:
    FP16 with the FP32 islands ``fp16_check`` found) for an FP16 engine. TensorRT 11 has
    only strongly typed networks; TensorRT 10 needs ``NetworkDefinitionCreationFlag.
    STRONGLY_TYPED`` ("Migrating from TensorRT 10.x to 11.x", NVIDIA docs);
  - ``weak`` (TensorRT 10 only: 11 removed ``BuilderFlag.FP16``, ``OBEY_PRECISION_
    CONSTRAINTS``, ``ILayer.precision`` and ``set_output_type``): the FP32 graph with the
    FP16 flag, the FP32 nodes pinned by layer precision and output types (plus the
    constant layers feeding them) and ``OBEY_PRECISION_CONSTRAINTS``;
* ``build_serialized_network`` → ``<graph>.plan`` (atomic write);
* ``compare_engine``: engine vs ONNX Runtime (FP32 graph) with polygraphy's ``Comparator``,
  failing loudly beyond the FP16 tolerance.

Layers are matched to the FP32 list by ONNX node name: the parser names a node's main layer
after it (``node_of_<first output>`` for an unnamed node) and records ``[ONNX Layer: <node>]``,
or ``[ONNX Layer: <node> | Local Function: <f>]`` inside an ONNX local function, in the
metadata of every layer it creates (onnx-tensorrt ``processMetadata``); fused layers join
several such entries with ``\\x1f``/``\\x1e``. ONNX ``Constant`` nodes become weights, not
layers: they are pinned through the layers they feed and never reported as unmatched.
"""
from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from rewas_rt.graphs import GraphSpec
from rewas_rt.atomic import atomic_write_bytes
from rewas_rt.errors import RewasError

log = logging.getLogger("rewas_rt")

# Engine (FP16) vs ONNX Runtime (FP32): max abs error <= ENGINE_RTOL * max |ONNX Runtime output|.
ENGINE_RTOL = 2e-2
TYPINGS = ("strong", "weak")
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]\x1e\x1f]+)\]")


class EngineBuildError(RewasError, RuntimeError):
    pass


def available() -> dict[str, str] | None:
    """TensorRT version, compute capability and GPU name, or None without TensorRT or a GPU."""
    from rewas_rt.manifest import detect_tensorrt

    return detect_tensorrt()


def major_version(version: str) -> int:
    return int(str(version).split(".")[0])


def typing_modes(version: str) -> tuple[str, ...]:
    """The network typings a TensorRT version supports, preferred first.

    10.x: strongly typed (``STRONGLY_TYPED`` flag, since 10.0) and the deprecated weak typing
    (FP16 builder flag + precision constraints); 11.x: strongly typed only (weak typing removed).
    """
    major = major_version(version)
    if major >= 11:
        return ("strong",)
    if major == 10:
        return ("strong", "weak")
    return ()


def timing_cache_name(version: str, compute_capability: str) -> str:
    """A timing cache is valid for one TensorRT version on one GPU architecture."""
    return f"tensorrt-{version}-sm{str(compute_capability).replace('.', '')}.timing.cache"


def network_flags(trt, typing: str) -> int:
    """``create_network`` flags for a typing (explicit batch is the only mode from TensorRT 10 on)."""
    if typing not in typing_modes(trt.__version__):
        raise EngineBuildError(f"TensorRT {trt.__version__} cannot build {typing}ly typed networks "
                               f"(supported: {', '.join(typing_modes(trt.__version__)) or 'none, TensorRT 10 or newer is needed'})")
    if typing == "strong" and major_version(trt.__version__) == 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0  # 11.x: every network is strongly typed; 10.x weak: the default network


def onnx_layer_names(layer) -> set[str]:
    """ONNX node names a TensorRT layer was made from: its name and its parser metadata."""
    names = {layer.name}
    for entry in _ONNX_LAYER.findall(layer.metadata or ""):  # ILayer.metadata: TensorRT >= 10.0
        names.add(entry.split(" | ", 1)[0].strip())  # drop " | Local Function: f" and other properties
    return names


def pin_fp32(network, onnx_nodes: Iterable[str], constant_nodes: Iterable[str] = ()) -> dict[str, Any]:
    """Pin the layers made from ``onnx_nodes`` (and the constants feeding them) to FP32 (weak typing only).

    ``constant_nodes``: the ONNX Constant nodes among them; the parser turns those into
    weights, so they match no layer and are not reported as unmatched."""
    import tensorrt as trt

    want = set(onnx_nodes)
    constants = set(constant_nodes) & want
    floats = (trt.float32, trt.float16)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    producer = {}
    for layer in layers:
        for j in range(layer.num_outputs):
            producer[layer.get_output(j).name] = layer

    pinned: dict[str, Any] = {}

    def pin(layer) -> None:
        outs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floats]
        if not outs or layer.name in pinned:
            return
        layer.precision = trt.float32
        for j in outs:
            layer.set_output_type(j, trt.float32)
        pinned[layer.name] = layer

    matched: set[str] = set()
    for layer in layers:
        hit = onnx_layer_names(layer) & want
        if not hit:
            continue
        matched |= hit
        pin(layer)
        for j in range(layer.num_inputs):
            t = layer.get_input(j)
            p = producer.get(t.name) if t is not None else None
            if p is not None and p.type == trt.LayerType.CONSTANT:
                pin(p)  # weights of an FP32 layer stay FP32
    return {"pinned_layers": len(pinned), "matched_nodes": len(matched),
            "unmatched_nodes": sorted(want - matched - constants)}


def _constant_nodes(onnx_path: Path) -> set[str]:
    import onnx

    from export.onnx_names import parser_node_name

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {parser_node_name(n) for n in model.graph.node if n.op_type == "Constant"}


def _timing_cache(trt, config, cache_path: Path | None):
    """The builder's timing cache: the file's, or an empty one when there is none or TensorRT rejects it."""
    data = b""
    if cache_path is not None and cache_path.is_file():
        data = cache_path.read_bytes()
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        if data:
            log.warning("timing cache %s was rejected (another TensorRT version or GPU?); starting an empty one",
                        cache_path)
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise EngineBuildError("TensorRT could not create an empty timing cache")
    return cache


def build_engine(onnx_path: str | Path, spec: GraphSpec, plan_path: str | Path, *, typing: str = "strong",
                 graph_precision: str = "fp16", fp32_layers: Sequence[str] = (), timing_cache: str | Path | None = None,
                 workspace_gib: float | None = None) -> dict[str, Any]:
    """Build and write ``plan_path``; returns what the manifest records about the build.

    typing "strong": ``onnx_path`` carries the precision (``graph_precision``: "fp16" for a
    ``<graph>.fp16.onnx``, "fp32" for the FP32 graph). typing "weak" (TensorRT 10 only):
    ``onnx_path`` is the FP32 graph, built with the FP16 flag and ``fp32_layers`` pinned."""
    import tensorrt as trt

    if typing not in TYPINGS:
        raise ValueError(f"typing must be one of {TYPINGS}, not {typing!r}")
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, typing))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{spec.name}: TensorRT cannot parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    profile = builder.create_optimization_profile()
    for t in spec.inputs:
        lo, opt, hi = spec.profile(t)
        profile.set_shape(t.name, lo, opt, hi)
    config.add_optimization_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else None
    _timing_cache(trt, config, cache_path)

    info: dict[str, Any] = {"typing": typing, "source_onnx": Path(onnx_path).name}
    if typing == "weak":
        # TensorRT 10 only (network_flags refused 11): FP16 kernels allowed, FP32 pins obeyed.
        config.set_flag(trt.BuilderFlag.FP16)
        pins = pin_fp32(network, fp32_layers, _constant_nodes(Path(onnx_path)))
        if pins["pinned_layers"]:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        if pins["unmatched_nodes"]:
            print(f"warning: {spec.name}: {len(pins['unmatched_nodes'])} FP32 node(s) match no TensorRT layer "
                  f"(e.g. {pins['unmatched_nodes'][0]}); they may have been fused away", file=sys.stderr)
        info.update(precision="fp16", fp32_trt_layers=pins["pinned_layers"], fp32_unmatched=pins["unmatched_nodes"],
                    obey_precision_constraints=bool(pins["pinned_layers"]))
    else:
        # Strongly typed: the graph's types are the engine's; no precision flags exist or are needed.
        info.update(precision=graph_precision, fp32_trt_layers=None, fp32_unmatched=[],
                    obey_precision_constraints=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{spec.name}: TensorRT failed to build an engine (see the TensorRT log above)")
    atomic_write_bytes(plan_path, bytes(memoryview(plan)))
    if cache_path is not None:
        cache = config.get_timing_cache()
        if cache is not None:
            atomic_write_bytes(cache_path, bytes(memoryview(cache.serialize())))
    return {
        **info,
        "fp32_layers": list(fp32_layers),
        "profile": {t.name: dict(zip(("min", "opt", "max"), map(list, spec.profile(t)))) for t in spec.inputs},
        "build_seconds": time.perf_counter() - t0,
    }


def compare_runners(reference, candidate, feeds: Sequence[Mapping[str, np.ndarray]], rtol: float) -> dict[str, Any]:
    """Run two polygraphy runners on ``feeds`` and compare every output with
    ``Comparator.compare_accuracy``: max |candidate − reference| <= rtol · max |reference|
    per output (an absolute tolerance scaled by the reference's magnitude)."""
    from polygraphy.comparator import Comparator

    try:
        from polygraphy.comparator import SimpleCompareFunc
    except ImportError:  # polygraphy < 0.50
        from polygraphy.comparator import CompareFunc

        SimpleCompareFunc = CompareFunc.simple

    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.WARNING):  # per-output statistics only on failure (we report our own)
        results = Comparator.run([reference, candidate], data_loader=list(feeds))
    (_, ref_iters), (_, cand_iters) = list(results.items())
    scales: dict[str, float] = {}
    worst = {"max_abs": 0.0, "max_ref": 0.0, "rel": 0.0}
    for r_it, c_it in zip(ref_iters, cand_iters):
        for name in r_it.keys():
            r = np.asarray(r_it[name], dtype=np.float64)
            c = np.asarray(c_it[name], dtype=np.float64)
            scale = float(np.max(np.abs(r))) if r.size else 0.0
            scales[name] = max(scales.get(name, 0.0), scale)
            err = float(np.max(np.abs(c - r))) if r.size else 0.0
            if not np.isfinite(c).all():
                err = float("inf")
            rel = err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))
            if rel >= worst["rel"]:
                worst = {"max_abs": err, "max_ref": scale, "rel": rel}
    atol = {name: rtol * max(s, 1e-12) for name, s in scales.items()}
    with G_LOGGER.verbosity(G_LOGGER.WARNING):
        accuracy = Comparator.compare_accuracy(
            results, compare_func=SimpleCompareFunc(atol=atol, rtol=0.0, check_error_stat="max"))
    return {**worst, "tolerance": rtol, "ok": bool(accuracy) and worst["rel"] <= rtol, "iterations": len(feeds)}


def compare_engine(onnx_path: str | Path, plan_path: str | Path, feeds: Sequence[Mapping[str, np.ndarray]],
                   rtol: float = ENGINE_RTOL) -> dict[str, Any]:
    """TensorRT engine vs ONNX Runtime (CPU) through polygraphy."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    ort_runner = OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["cpu"]), name="onnxruntime")
    trt_runner = TrtRunner(EngineFromBytes(Path(plan_path).read_bytes()), name="tensorrt")
    return compare_runners(ort_runner, trt_runner, feeds, rtol)
