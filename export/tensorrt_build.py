"""FP16 TensorRT engines from the exported ONNX graphs (TensorRT 10 Python API).

``tensorrt`` is imported lazily, inside the functions that need it: this module imports
(and its comparison helper runs) on machines without TensorRT. Per graph:

* ``OnnxParser.parse_from_file`` (so external weight files resolve next to the .onnx);
* one optimization profile, min/opt/max shapes from ``rewas_rt.graphs`` (the manifest's
  ``profile`` entries);
* a persistent timing cache file in the output directory, loaded before and saved after
  each build, so rebuilds and the other graphs reuse tactic timings;
* the FP16 flag, with the layers ``fp16_check`` found unsafe pinned to FP32 (layer
  precision and output types, plus the constant layers feeding them) and
  ``OBEY_PRECISION_CONSTRAINTS`` so the builder cannot override the pins;
* ``build_serialized_network`` → ``<graph>.plan`` (atomic write);
* ``compare_engine``: engine vs ONNX Runtime with polygraphy's ``Comparator``, failing
  loudly beyond the FP16 tolerance.

Layers are matched to the FP32 list by ONNX node name: the parser names a node's main layer
after it and records ``[ONNX Layer: <node>]`` in the metadata of every layer it creates.
"""
from __future__ import annotations

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

TIMING_CACHE_NAME = "tensorrt.timing.cache"
# Engine (FP16) vs ONNX Runtime (FP32): max abs error <= ENGINE_RTOL * max |ONNX Runtime output|.
ENGINE_RTOL = 2e-2
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]\x1e\x1f]+)\]")


class EngineBuildError(RewasError, RuntimeError):
    pass


def available() -> dict[str, str] | None:
    """TensorRT version, compute capability and GPU name, or None without TensorRT or a GPU."""
    from rewas_rt.manifest import detect_tensorrt

    return detect_tensorrt()


def _onnx_names(layer) -> set[str]:
    names = {layer.name}
    meta = getattr(layer, "metadata", None) or ""  # ILayer.metadata: TensorRT >= 10
    names.update(_ONNX_LAYER.findall(meta))
    return names


def pin_fp32(network, onnx_nodes: Iterable[str]) -> dict[str, Any]:
    """Pin the layers made from ``onnx_nodes`` (and the constants feeding them) to FP32."""
    import tensorrt as trt

    want = set(onnx_nodes)
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
        hit = _onnx_names(layer) & want
        if not hit:
            continue
        matched |= hit
        pin(layer)
        for j in range(layer.num_inputs):
            t = layer.get_input(j)
            p = producer.get(t.name) if t is not None else None
            if p is not None and p.type == trt.LayerType.CONSTANT:
                pin(p)  # weights of an FP32 layer stay FP32
    return {"pinned_layers": len(pinned), "matched_nodes": len(matched), "unmatched_nodes": sorted(want - matched)}


def build_engine(onnx_path: str | Path, spec: GraphSpec, plan_path: str | Path, *, fp32_layers: Sequence[str] = (),
                 timing_cache: str | Path | None = None, workspace_gib: float | None = None) -> dict[str, Any]:
    """Build and write ``plan_path``; returns what the manifest records about the build."""
    import tensorrt as trt

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{spec.name}: TensorRT cannot parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    profile = builder.create_optimization_profile()
    for t in spec.inputs:
        lo, opt, hi = spec.profile(t)
        profile.set_shape(t.name, lo, opt, hi)
    config.add_optimization_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else None
    cache_data = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_data)
    config.set_timing_cache(cache, ignore_mismatch=False)

    pins = pin_fp32(network, fp32_layers)
    if pins["pinned_layers"]:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    if pins["unmatched_nodes"]:
        print(f"warning: {spec.name}: {len(pins['unmatched_nodes'])} FP32 node(s) match no TensorRT layer "
              f"(e.g. {pins['unmatched_nodes'][0]}); they may have been fused away", file=sys.stderr)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{spec.name}: TensorRT failed to build an engine (see the TensorRT log above)")
    atomic_write_bytes(plan_path, bytes(memoryview(plan)))
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return {
        "precision": "fp16",
        "fp32_layers": list(fp32_layers),
        "fp32_trt_layers": pins["pinned_layers"],
        "fp32_unmatched": pins["unmatched_nodes"],
        "obey_precision_constraints": bool(pins["pinned_layers"]),
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
