"""Opt-in INT8 variants of the CPU-heavy graphs (ONNX Runtime quantization, for the
``onnxruntime-cpu`` backend; AVX-512 VNNI / AVX2 u8s8 kernels)::

    python export/build_engines.py ... --int8 synchformer,unet_adapter [--int8-mode dynamic|static]
    python export/quantize.py ENGINE_DIR/synchformer.onnx /tmp/synchformer.int8.onnx --graph synchformer

* ``dynamic`` (default): weights INT8 (per output channel), activations quantized per call
  (``onnxruntime.quantization.quantize_dynamic``; MatMul -> DynamicQuantizeMatMul). No calibration.
* ``static``: QDQ with activation ranges calibrated (MinMax) on generated inputs of the graph
  contract (``export_onnx.sample_inputs``, several seeds) — ``quantize_static``.

``quantize_graph`` also measures, on held-out generated inputs, the deviation of the INT8
graph from the FP32 one (max |Δ| / max |FP32| and mean |Δ| / mean |FP32| per output) and the
median time of both on this CPU, and returns them for the manifest (``graphs.<g>.int8``).
The runtime uses a variant only when asked (``rewas-rt infer --int8 synchformer``,
``Pipeline(..., int8=[...])``): FP32 stays the default.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from rewas_rt.errors import RewasError, cli_main
from rewas_rt.graphs import GRAPHS, GraphSpec, graph_names

MODES = ("dynamic", "static")
# Graphs an INT8 variant is offered for, and the op types quantized per mode. Synchformer: the ViT's
# projections and MLPs (its patch-embedding Conv3d stays FP32). UNet: dynamic quantization of Conv
# becomes ConvInteger, measured 2x *slower* than FP32 Conv in ONNX Runtime 1.32 on this CPU (tiny model),
# so dynamic mode quantizes its attention/FiLM MatMuls only; static QDQ quantizes Conv too (QLinearConv).
OP_TYPES: dict[str, dict[str, tuple[str, ...]]] = {
    "synchformer": {"dynamic": ("MatMul", "Gemm"), "static": ("MatMul", "Gemm")},
    "unet_adapter": {"dynamic": ("MatMul", "Gemm"), "static": ("MatMul", "Gemm", "Conv")},
}
INT8_VERSION = 1  # bump when what quantize_graph writes changes


class QuantizeError(RewasError):
    pass


def int8_name(graph: str) -> str:
    return f"{graph}.int8.onnx"


def parse_graphs(text: str) -> list[str]:
    """The graphs of a ``--int8`` value; only those with an INT8 variant (OP_TYPES) are allowed."""
    try:
        return graph_names(text, OP_TYPES)
    except ValueError as e:
        raise ValueError(f"--int8: {e}") from None


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def _feeds(spec: GraphSpec, configs: Mapping[str, Any], count: int, seed: int) -> list[dict[str, np.ndarray]]:
    from export.export_onnx import sample_inputs

    batch = 1 if spec.name == "synchformer" else 2  # one clip; one CFG pair
    return [sample_inputs(spec, configs, batch, seed=seed + k) for k in range(count)]


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def compare(fp32: Path, int8: Path, feeds: list[dict[str, np.ndarray]], threads: int, repeats: int = 3) -> dict:
    """Deviation of the INT8 graph's outputs from FP32 on ``feeds``, and the median seconds per call of both
    (interleaved, after one warm-up call each)."""
    a, b = _session(fp32, threads), _session(int8, threads)
    names = [o.name for o in a.get_outputs()]
    dev: dict[str, dict[str, float]] = {}
    for f in feeds:
        ra, rb = a.run(names, f), b.run(names, f)
        for n, x, y in zip(names, ra, rb):
            d = dev.setdefault(n, {"max_abs": 0.0, "max_ref": 0.0, "sum_abs": 0.0, "sum_ref": 0.0})
            d["max_abs"] = max(d["max_abs"], float(np.max(np.abs(x - y))))
            d["max_ref"] = max(d["max_ref"], float(np.max(np.abs(x))))
            d["sum_abs"] += float(np.mean(np.abs(x - y)))
            d["sum_ref"] += float(np.mean(np.abs(x)))
    deviation = {n: {"rel_max": d["max_abs"] / d["max_ref"] if d["max_ref"] else 0.0,
                     "rel_mean": d["sum_abs"] / d["sum_ref"] if d["sum_ref"] else 0.0} for n, d in dev.items()}
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    f = feeds[0]
    for _ in range(repeats + 1):
        for key, s in (("fp32", a), ("int8", b)):
            t0 = time.perf_counter()
            s.run(names, f)
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    return {"deviation": deviation, "seconds_fp32": med["fp32"], "seconds_int8": med["int8"],
            "speedup": med["fp32"] / med["int8"], "timed_calls": repeats, "threads": threads,
            "batch": int(next(iter(f.values())).shape[0])}


def quantize_graph(src: str | os.PathLike, dst: str | os.PathLike, graph: str, configs: Mapping[str, Any],
                   mode: str = "dynamic", *, calibration: int = 8, seed: int = 0, threads: int = 0,
                   check_inputs: int = 2, repeats: int = 3, feature_dim: int | None = None) -> dict:
    """Write the INT8 variant of ``src`` (an exported FP32 graph) to ``dst`` atomically; return its record."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode not in MODES:
        raise QuantizeError(f"unknown INT8 mode {mode!r}; choose {' or '.join(MODES)}")
    if graph not in OP_TYPES:
        raise QuantizeError(f"no INT8 variant for graph {graph}; choose from {', '.join(OP_TYPES)}")
    spec = GRAPHS[graph].resolved(**({"feature_dim": feature_dim} if feature_dim else {}))
    src, dst = Path(src), Path(dst)
    external = src.with_name(src.name + ".data").is_file()
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{graph}.int8-"))
    try:
        out = tmp / dst.name
        common = dict(op_types_to_quantize=list(OP_TYPES[graph][mode]), per_channel=True, weight_type=QuantType.QInt8,
                      use_external_data_format=external)
        if mode == "dynamic":
            quantize_dynamic(src, out, extra_options={"MatMulConstBOnly": True}, **common)
        else:
            reader = _Reader(_feeds(spec, configs, calibration, seed + 100))
            quantize_static(src, out, reader, quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                            extra_options={"MatMulConstBOnly": True}, **common)
        seconds = time.perf_counter() - t0
        report = compare(src, out, _feeds(spec, configs, check_inputs, seed + 200), threads, repeats)
        if external:  # one weights file beside the graph, as the FP32 export keeps it
            data = [p for p in tmp.iterdir() if p != out]
            if len(data) != 1:
                raise QuantizeError(f"{graph}: expected one external-data file from the quantizer, got {len(data)}")
            os.replace(data[0], dst.with_name(data[0].name))
        os.replace(out, dst)
    except QuantizeError:
        raise
    except Exception as e:  # noqa: BLE001 - one line for the CLI; the cause stays chained
        raise QuantizeError(f"{graph}: INT8 quantization failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"mode": mode, "op_types": list(OP_TYPES[graph][mode]), "per_channel": True,
            "calibration_inputs": calibration if mode == "static" else 0, "quantize_seconds": round(seconds, 2),
            "check": report, "version": INT8_VERSION}


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="quantize.py", description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="FP32 graph (.onnx) of an engine directory")
    p.add_argument("dst", type=Path, help="INT8 graph to write")
    p.add_argument("--graph", required=True, choices=sorted(OP_TYPES))
    p.add_argument("--mode", choices=MODES, default="dynamic")
    p.add_argument("--config", default="rewas-m", help="preset whose configs shape the generated inputs")
    p.add_argument("--feature-dim", type=int, help="Synchformer width (default: the preset's)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    from training.models import presets

    configs = presets.preset(args.config)
    info = quantize_graph(args.src, args.dst, args.graph, configs, args.mode, threads=args.threads,
                          repeats=args.repeats, feature_dim=args.feature_dim)
    c = info["check"]
    print(f"{args.graph} {args.mode}: {args.dst}; fp32 {c['seconds_fp32']:.3f}s, int8 {c['seconds_int8']:.3f}s "
          f"(x{c['speedup']:.2f}); deviation {c['deviation']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
