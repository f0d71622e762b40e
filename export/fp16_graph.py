"""FP16 ONNX graphs with FP32 islands, made and checked on the CPU.

TensorRT 11 builds every network strongly typed: tensor types come from the ONNX graph,
and ``BuilderFlag.FP16``, ``OBEY_PRECISION_CONSTRAINTS``, ``ILayer.precision`` and
``set_output_type`` are gone ("Migrating from TensorRT 10.x to 11.x: Strongly Typed
Networks Are Now Required", docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/
tensorrt-10x-to-11x.html). An FP16 engine therefore needs an FP16 *graph*, with the
nodes ``export/fp16_check.py`` finds unsafe kept in FP32. That graph is made here by a
well-kept converter, not by hand: ONNX Runtime's ``onnxruntime.transformers.float16``
(the maintained successor of onnxconverter-common's ``float16`` module, shipped inside
``onnxruntime`` itself, so no new dependency) with

* ``node_block_list`` = the FP32 nodes: they keep FP32 inputs, outputs and weights and
  the converter inserts the Casts around them (an "FP32 island");
* ``keep_io_types=True``: graph inputs and outputs stay float32, so the graph contract
  (``rewas_rt.graphs``) and every caller are unchanged;
* ``op_block_list=[]``: only the measured nodes stay FP32 (the converter's default list
  names ops that TensorRT runs in FP16 without trouble, e.g. Min/Max/Resize).

Unnamed nodes are first given the name TensorRT's ONNX parser gives them
(``node_of_<first output>``, ``getNodeName`` in onnx-tensorrt's ``onnxOpImporters.cpp``),
the name ``fp16_check`` reports, so that block list, TensorRT layer names and the
manifest all agree.

``check`` runs the FP16 graph and the FP32 graph in ONNX Runtime **on the CPU** with graph
optimisations off (ORT inserts Casts to float around each op without an FP16 CPU kernel, so
this is FP16 storage of every tensor with mostly FP32 arithmetic — the model ``fp16_check``
uses; optimisations would merge such ops into FP32 regions and hide overflows) through
polygraphy's ``Comparator`` with the engine comparison's tolerance (``tensorrt_build.ENGINE_RTOL``).

Standalone::

    python export/fp16_graph.py ENGINE_DIR            # convert + check every graph of a built directory
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from export.onnx_names import parser_node_name

CONVERTER = "onnxruntime.transformers.float16"
EXTERNAL_DATA_BYTES = 1 << 30  # FP16 weights above this go to <graph>.fp16.onnx.data (as export_onnx does)


class Fp16GraphError(RuntimeError):
    pass


def fp16_name(graph: str) -> str:
    """File name of a graph's FP16 variant inside an engine directory."""
    return f"{graph}.fp16.onnx"


def name_unnamed_nodes(model) -> int:
    """Give every unnamed node its TensorRT parser name (in place); returns how many."""
    count = 0
    for node in model.graph.node:
        if not node.name:
            node.name = parser_node_name(node)
            count += 1
    return count


def _drop_fp16_roundtrips(wrapped) -> int:
    """Rewire every Cast(to=float) reading a Cast(to=float16) of a float tensor to that float tensor;
    prune the Casts left without consumers. Returns how many round trips were removed."""
    from onnx import TensorProto

    def cast_to(node):
        return next((a.i for a in node.attribute if a.name == "to"), None)

    producer = wrapped.output_name_to_node()
    removed = 0
    for node in wrapped.nodes():
        if node.op_type != "Cast" or cast_to(node) != TensorProto.FLOAT:
            continue
        parent = producer.get(node.input[0])
        if parent is None or parent.op_type != "Cast" or cast_to(parent) != TensorProto.FLOAT16:
            continue
        grand = producer.get(parent.input[0])
        source_is_float = (grand is not None and grand.op_type == "Cast" and cast_to(grand) == TensorProto.FLOAT) or \
            wrapped.get_dtype(parent.input[0]) == TensorProto.FLOAT
        if source_is_float:
            node.input[0] = parent.input[0]
            removed += 1
    if removed:
        wrapped.prune_graph()
    return removed


def _uses_external_data(model) -> bool:
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(t) for t in model.graph.initializer)


def convert(src: str | os.PathLike, dst: str | os.PathLike, fp32_nodes: Iterable[str], *,
            external_data: bool | None = None) -> dict[str, Any]:
    """Write ``dst`` (+ ``dst.data`` for large graphs): ``src`` in FP16 with ``fp32_nodes`` in FP32.

    Inputs and outputs stay float32. A name in ``fp32_nodes`` that is not a node of the
    graph is an error (the FP32 list was made for another graph). ``external_data=None``
    writes the weights to one external file when the source has one or they exceed 1 GiB.
    Atomic: ``dst`` is replaced only once the whole conversion has succeeded.
    """
    import onnx
    import onnxruntime
    from onnxruntime.transformers import float16

    src, dst = Path(src), Path(dst)
    want = sorted(set(fp32_nodes))
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.convert-"))
    try:
        model = onnx.load(str(src), load_external_data=False)
        src_external = _uses_external_data(model)
        renamed = name_unnamed_nodes(model)
        names = {n.name for n in model.graph.node}
        unknown = [n for n in want if n not in names]
        if unknown:
            raise Fp16GraphError(f"{src.name}: {len(unknown)} FP32 node(s) are not in the graph "
                                 f"(e.g. {unknown[0]!r}); rerun the FP16 check on this graph")
        # Shape inference by path works above 2 GiB; the staged copy sits beside the source
        # so that its external-data references still resolve.
        staged = src.parent / f".{src.name}.{os.getpid()}.fp16-infer.onnx"
        try:
            onnx.save_model(model, str(staged))
            del model
            onnx.shape_inference.infer_shapes_path(str(staged), str(staged))
            model = onnx.load(str(staged))  # external data resolves relative to src.parent
        finally:
            staged.unlink(missing_ok=True)
        model = float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True,
                                                 op_block_list=[], node_block_list=want)
        from onnxruntime.transformers.onnx_model import OnnxModel

        wrapped = OnnxModel(model)
        # Between two FP32 nodes the converter stores the tensor in FP16 (Cast to float16, Cast
        # back): an overflowing tensor (the reason both nodes are FP32) becomes inf there. Drop
        # those round trips — ORT's remove_cascaded_cast_nodes post-processing, restricted to
        # Cast(float16) -> Cast(float) so that the graph's own Casts (e.g. float -> int -> float)
        # are never merged.
        roundtrips = _drop_fp16_roundtrips(wrapped)
        # The converter appends the input/output Casts at the end; ONNX (and TensorRT's parser)
        # want nodes in topological order: ORT's own graph helper sorts them.
        wrapped.topological_sort()
        model = wrapped.model
        model.producer_name = "rewas-rt export (fp16)"
        initializer_bytes = sum(t.ByteSize() for t in model.graph.initializer)
        big = (src_external or initializer_bytes >= EXTERNAL_DATA_BYTES) if external_data is None else external_data
        out = tmp / dst.name
        data_name = dst.name + ".data"
        if big:
            onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            big = (tmp / data_name).is_file()  # tensors under the threshold stay inline
        else:
            onnx.save_model(model, str(out))
        casts = sum(n.op_type == "Cast" for n in model.graph.node)
        nodes = len(model.graph.node)
        del model
        onnx.checker.check_model(str(out))
        from rewas_rt.atomic import default_file_mode

        for f in (out, tmp / data_name) if big else (out,):
            os.chmod(f, default_file_mode())
        if big:
            os.replace(tmp / data_name, dst.parent / data_name)
        os.replace(out, dst)
        if not big:
            (dst.parent / data_name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "converter": f"{CONVERTER} (onnxruntime {onnxruntime.__version__})",
        "keep_io_types": True,
        "fp32_nodes": len(want),
        "renamed_unnamed_nodes": renamed,
        "nodes": nodes,
        "casts": casts,
        "fp16_roundtrips_removed": roundtrips,
        "weights_in_data_file": big,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def check(fp32_path: str | os.PathLike, fp16_path: str | os.PathLike, feeds: Sequence[Mapping[str, np.ndarray]],
          rtol: float | None = None) -> dict[str, Any]:
    """FP16 graph vs FP32 graph in ONNX Runtime on the CPU, with polygraphy's Comparator and the
    engine comparison's tolerance: max |fp16 − fp32| <= rtol · max |fp32| for every output."""
    from polygraphy.backend.onnxrt import OnnxrtRunner

    from export.tensorrt_build import ENGINE_RTOL, compare_runners

    rtol = ENGINE_RTOL if rtol is None else rtol
    ref = OnnxrtRunner(_unoptimised_session(fp32_path), name="onnxruntime-fp32")
    cand = OnnxrtRunner(_unoptimised_session(fp16_path), name="onnxruntime-fp16")
    return compare_runners(ref, cand, feeds, rtol)


def _unoptimised_session(path: str | os.PathLike):
    """A session factory for polygraphy's runner, graph optimisations off: with them on, ONNX
    Runtime merges neighbouring FP16 nodes that lack an FP16 CPU kernel into one FP32 region
    and drops the FP16 tensors between them — hiding exactly the overflow this check is for
    (an all-FP16 graph that yields NaN unoptimised runs "fine" optimised)."""
    def make():
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

    return make


def graph_types(path: str | os.PathLike) -> dict[str, int]:
    """{node name: ONNX elem type of its first float output} of a converted graph (1 float, 10 float16),
    to see where the FP32 islands are."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    types = {}
    for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    return {n.name: types[n.output[0]] for n in model.graph.node if n.output and n.output[0] in types}


# --------------------------------------------------------------------------- CLI


from rewas_rt.errors import cli_main  # noqa: E402


@cli_main
def main(argv: list[str] | None = None) -> int:
    from export.fp16_check import _feeds_for
    from rewas_rt import manifest as M

    p = argparse.ArgumentParser(prog="fp16_graph.py", description="Convert an engine directory's graphs to FP16 "
                                "(FP32 islands from its manifest) and check them against FP32 in ONNX Runtime on the CPU.")
    p.add_argument("engine_dir", type=Path)
    p.add_argument("--out", type=Path, help="where the FP16 graphs go (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    m = M.verify(args.engine_dir)
    out = args.out or Path(tempfile.mkdtemp(prefix="rewas-fp16-"))
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for g, entry in m.graphs.items():
        src = args.engine_dir / entry.onnx.path
        dst = out / fp16_name(g)
        info = convert(src, dst, entry.fp32_layers)
        cmp = check(src, dst, [_feeds_for(src, g, b, args.seed + 4 + b) for b in (1, 2)])
        if not cmp["ok"]:
            failed.append(g)
        print(f"{g}: {info['fp32_nodes']} FP32 nodes, {info['casts']} casts; FP16 vs FP32 rel {cmp['rel']:.1e} "
              f"(tolerance {cmp['tolerance']:g}) {'ok' if cmp['ok'] else 'FAILED'}")
    print(f"FP16 graphs in {out}" + (f"; beyond tolerance: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
