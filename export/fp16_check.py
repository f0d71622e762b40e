"""FP16 safety of the exported graphs, checked on CPU: which ONNX nodes must stay FP32.

A TensorRT FP16 engine stores every activation (and weight) in half precision: values
above 65504 become inf, and every tensor loses all but 11 significant bits. Both effects
are reproduced here in ONNX Runtime on the CPU, on the very graph TensorRT will parse,
so the result is a list of ONNX node names — which TensorRT's ONNX parser keeps as layer
names (and as ``[ONNX Layer: …]`` layer metadata) — that ``tensorrt_build`` pins to FP32.

How (``check_graph``):

1. **FP32 statistics.** The graph is run once with, for every float tensor, its max |value|
   and a non-finite flag added as extra outputs.
2. **Rules on those statistics** (``headroom``: real inputs may exceed the test inputs):
   * overflow: a tensor with max |x| > 65504 / headroom must be FP32 — its producer and all
     its consumers are kept FP32;
   * normalisation (InstanceNormalization — what GroupNorm exports to —, LayerNormalization,
     GroupNormalization, ReduceSumSquare, ReduceL2): the variance sums squares, so a norm
     whose input has max |x|² > 65504 / headroom is kept FP32;
   * trigonometry (Sin/Cos/Tan): FP16 rounds an argument x by up to |x|·2⁻¹¹, so an argument
     with max |x|·2⁻¹¹ > ``trig_tol`` rad (the timestep embedding: t·freq up to 999 rad) must be
     FP32 (producer + consumers).
3. **FP16 emulation.** The graph is rewritten so that every float tensor an FP16 layer
   produces or reads goes through Cast(float16)→Cast(float) — weights included — except
   where both ends are FP32 layers, and run. Any inf/NaN that still appears marks the first
   node (in topological order) producing it from finite inputs as FP32 too; repeated until
   the outputs are finite (``max_rounds``).
4. **Report**: the max abs / relative error against FP32 and any inf/NaN, once with every
   node in FP16 and once with the FP32 list applied.

This models FP16 storage with FP32 arithmetic inside each layer (what TensorRT's FP16
kernels do for accumulation); rounding inside a kernel is not modelled, hence the headroom.
The PyTorch-half alternative was not used: CPU half kernels are incomplete, and module
hooks name modules, not the ONNX nodes TensorRT sees.

Standalone::

    python export/fp16_check.py DIR/unet_adapter.onnx [--headroom 4] [--json out.json]
    python export/fp16_check.py ENGINE_DIR            # every graph of an engine directory
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from rewas_rt.atomic import atomic_write_text
from rewas_rt.errors import InputError, cli_main

FP16_MAX = 65504.0
DEFAULT_HEADROOM = 4.0
TRIG_TOL = 1e-3  # rad of argument rounding error tolerated in Sin/Cos/Tan
NORM_OPS = frozenset({"InstanceNormalization", "LayerNormalization", "GroupNormalization",
                      "ReduceSumSquare", "ReduceL2", "LpNormalization"})
TRIG_OPS = frozenset({"Sin", "Cos", "Tan"})
MAX_ROUNDS = 8
_FLOAT = 1  # onnx.TensorProto.FLOAT
_FLOAT16 = 10  # onnx.TensorProto.FLOAT16
_SUFFIX_R, _SUFFIX_MAX, _SUFFIX_NF = "__fp16", "__amax", "__nonfinite"


@dataclasses.dataclass
class Fp16Report:
    graph: str
    fp32_layers: list[str]
    reasons: dict[str, str]  # node name -> why it is FP32
    all_fp16: dict[str, Any]  # error with every node in FP16
    mitigated: dict[str, Any]  # error with fp32_layers kept in FP32
    max_activation: float  # largest |value| of any float tensor in FP32
    headroom: float
    nodes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "ONNX Runtime CPU, FP16 storage emulated by Cast(float16)->Cast(float) around every FP16 node",
            "headroom": self.headroom, "nodes": self.nodes, "max_activation": self.max_activation,
            "all_fp16": self.all_fp16, "with_fp32_layers": self.mitigated,
            "fp32_layers": len(self.fp32_layers), "reasons": _count_reasons(self.reasons),
        }

    def summary(self) -> str:
        def err(d):
            nf = ", inf/NaN!" if d["nonfinite"] else ""
            return f"rel {d['rel']:.1e}{nf}"

        return (f"fp16 all-half {err(self.all_fp16)}, with {len(self.fp32_layers)} FP32 layers "
                f"{err(self.mitigated)}")


def _count_reasons(reasons: Mapping[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in reasons.values():
        key = r.split(":")[0]
        out[key] = out.get(key, 0) + 1
    return out


# --------------------------------------------------------------------------- graph analysis


# Ops whose float output only moves or selects input values: their output is exactly
# representable in FP16 when their inputs are, and its max |x| is at most their inputs'.
# They get no Cast pair and no statistics of their own (derived from their inputs), which
# keeps the rewritten graphs (and ONNX Runtime's session set-up) small.
PRESERVING_OPS = frozenset({"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Identity", "Flatten", "Slice",
                            "Gather", "Concat", "Expand", "Split", "Tile", "Where"})


@dataclasses.dataclass
class _Graph:
    model: Any  # onnx.ModelProto without external data loaded
    base_dir: Path  # where its external data lives
    float_tensors: list[str]  # inputs, initializers and node outputs of type float, graph order
    producer: dict[str, int]  # tensor -> node index (absent: graph input / initializer)
    consumers: dict[str, list[int]]
    initializers: set[str]
    outputs: list[str]
    preserving: set[int]  # nodes with an op of PRESERVING_OPS

    def measured(self) -> list[str]:
        """Float tensors that get statistics of their own (not outputs of preserving nodes)."""
        return [t for t in self.float_tensors if self.producer.get(t) not in self.preserving]


def _analyse(path: Path):
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(model)
    types: dict[str, int] = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    for node in model.graph.node:  # Constant nodes without inferred types
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types.setdefault(node.output[0], a.t.data_type)
    g = model.graph
    producer, consumers = {}, {}
    for i, node in enumerate(g.node):
        for o in node.output:
            if o:
                producer[o] = i
        for t in node.input:
            if t:
                consumers.setdefault(t, []).append(i)
    ordered = [vi.name for vi in g.input] + [t.name for t in g.initializer] + [o for n in g.node for o in n.output if o]
    floats = [t for t in dict.fromkeys(ordered) if types.get(t) == _FLOAT]
    preserving = {i for i, n in enumerate(g.node) if n.op_type in PRESERVING_OPS}
    return _Graph(model, path.parent, floats, producer, consumers, {t.name for t in g.initializer},
                  [o.name for o in g.output], preserving)


def _node_name(g: _Graph, i: int) -> str:
    """The node's name as TensorRT's ONNX parser reports it (``node_of_<output>`` when unnamed)."""
    from export.onnx_names import parser_node_name

    return parser_node_name(g.model.graph.node[i])


def _build(g: _Graph, keep_fp32: set[int] | None, stats: str):
    """A copy of the model: ``keep_fp32=None`` runs everything in FP32 (no rounding); otherwise
    nodes outside ``keep_fp32`` read FP16-rounded inputs and store FP16-rounded outputs.
    ``stats`` ("none", "max", "full") adds max|x| (and, for "full", sum|x|, which propagates
    NaN where max does not reliably) of every measured float tensor as stored, and of the
    rounded copy FP16 nodes read of an FP32 tensor, as extra outputs.

    Returns (model, {output: name of its stored value}, stat labels)."""
    import onnx
    from onnx import helper

    src = g.model.graph
    emulate = keep_fp32 is not None
    fp16_node = (lambda i: i not in keep_fp32) if emulate else (lambda i: False)
    float_set = set(g.float_tensors)
    new_nodes = []
    rounded: dict[str, str] = {}  # tensor -> name of a copy holding FP16-representable values

    def add_round(t: str) -> str:
        if t not in rounded:
            r = t + _SUFFIX_R
            new_nodes.append(helper.make_node("Cast", [t], [t + "__h"], to=_FLOAT16, name=t + "__cast16"))
            new_nodes.append(helper.make_node("Cast", [t + "__h"], [r], to=_FLOAT, name=t + "__cast32"))
            rounded[t] = r
        return rounded[t]

    def produced_in_fp16(t: str) -> bool:
        return t in g.producer and fp16_node(g.producer[t])

    def stored(t: str) -> str:  # the value a tensor holds as stored
        return rounded[t] if produced_in_fp16(t) else t

    for t in g.float_tensors:  # inputs and weights that an FP16 node reads
        if t not in g.producer and any(fp16_node(c) for c in g.consumers.get(t, [])):
            add_round(t)
    for i, node in enumerate(src.node):
        n = onnx.NodeProto()
        n.CopyFrom(node)
        for k, t in enumerate(node.input):
            # An FP16 node reads every float input rounded; an FP32 node reads a tensor
            # rounded only when an FP16 node stored it.
            if t in float_set and (fp16_node(i) or produced_in_fp16(t)):
                n.input[k] = add_round(t)
        new_nodes.append(n)
        if fp16_node(i):
            for o in node.output:
                if o in float_set:
                    if i in g.preserving:
                        rounded[o] = o  # moved/selected FP16 values are FP16 values
                    else:
                        add_round(o)
    names = {t: stored(t) for t in g.outputs}
    graph = helper.make_graph(_toposort(new_nodes, {vi.name for vi in src.input} | g.initializers), src.name,
                              list(src.input), [], list(src.initializer), value_info=list(src.value_info))
    for t in g.outputs:
        graph.output.append(helper.make_tensor_value_info(names[t], _FLOAT, None))
    labels = []
    if stats != "none":
        for t in g.measured():
            views = [(t, stored(t))]
            if t in rounded and rounded[t] != stored(t):  # an FP32 tensor that FP16 nodes read rounded
                views.append((t + _SUFFIX_R, rounded[t]))
            for label, name in views:
                a, m, nf = label + "__abs", label + _SUFFIX_MAX, label + _SUFFIX_NF
                graph.node.extend([helper.make_node("Abs", [name], [a]),
                                   helper.make_node("ReduceMax", [a], [m], keepdims=0)])
                graph.output.append(helper.make_tensor_value_info(m, _FLOAT, []))
                if stats == "full":  # NaN iff a NaN is present
                    graph.node.append(helper.make_node("ReduceSum", [a], [nf], keepdims=0))
                    graph.output.append(helper.make_tensor_value_info(nf, _FLOAT, []))
                labels.append(label)
    out = helper.make_model(graph, opset_imports=list(g.model.opset_import))
    out.ir_version = g.model.ir_version
    return out, names, labels


def _toposort(nodes, available: set[str]):
    """Nodes in an order where every input exists before use (Kahn; stable)."""
    avail = set(available) | {""}
    pending = list(nodes)
    ordered = []
    while pending:
        rest = []
        progressed = False
        for n in pending:
            if all(t in avail for t in n.input):
                ordered.append(n)
                avail.update(n.output)
                progressed = True
            else:
                rest.append(n)
        if not progressed:
            missing = sorted({t for n in rest for t in n.input if t not in avail})[:5]
            raise RuntimeError(f"fp16 check: cannot order the rewritten graph (missing {missing})")
        pending = rest
    return ordered


def _run(g: _Graph, model, feeds: Mapping[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """Run a rewritten model; it is saved beside the original so external data resolves."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # No graph optimisation: fusions must not remove the Cast pairs or merge rounded tensors.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    fd, tmp = tempfile.mkstemp(dir=g.base_dir, prefix=".fp16check-", suffix=".onnx")
    os.close(fd)
    try:
        onnx.save_model(model, tmp)
        sess = ort.InferenceSession(tmp, sess_options=opts, providers=["CPUExecutionProvider"])
        wanted = {i.name for i in sess.get_inputs()}
        res = sess.run(outputs, {k: v for k, v in feeds.items() if k in wanted})
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dict(zip(outputs, res))


def _stats(g: _Graph, res: Mapping[str, np.ndarray], labels: list[str], keep: set[int] | None
           ) -> dict[str, tuple[float, bool]]:
    """{label: (max |x|, non-finite)}; outputs of preserving nodes derived from their inputs as read."""
    st = {}
    for t in labels:
        amax = float(res[t + _SUFFIX_MAX])
        total = float(res[t + _SUFFIX_NF]) if t + _SUFFIX_NF in res else 0.0
        st[t] = (amax, math.isnan(total) or math.isnan(amax) or math.isinf(amax))
    nodes = g.model.graph.node
    floats = set(g.float_tensors)
    for i in sorted(g.preserving):
        fp16 = keep is not None and i not in keep
        seen = [(t + _SUFFIX_R) if fp16 and (t + _SUFFIX_R) in st else t for t in nodes[i].input if t]
        vals = [st[t] for t in seen if t in st]
        if not vals:
            continue
        derived = (max(v[0] for v in vals), any(v[1] for v in vals))
        for o in nodes[i].output:
            if o in floats:
                st[o] = derived
    return st


def _error(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> dict[str, Any]:
    worst = {"max_abs": 0.0, "max_ref": 0.0, "rel": 0.0, "nonfinite": False}
    for name, r in ref.items():
        g = got[name].astype(np.float64)
        r = r.astype(np.float64)
        nonfinite = not bool(np.isfinite(g).all())
        diff = np.abs(np.where(np.isfinite(g), g, np.nan) - r)
        err = float(np.nanmax(diff)) if np.isfinite(diff).any() else math.inf
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        rel = math.inf if nonfinite else (err / scale if scale > 0 else (0.0 if err == 0 else math.inf))
        if rel >= worst["rel"]:
            worst = {"max_abs": err if not nonfinite else math.inf, "max_ref": scale, "rel": rel, "nonfinite": nonfinite}
        worst["nonfinite"] = worst["nonfinite"] or nonfinite
    return worst


def check_graph(onnx_path: str | os.PathLike, feeds: Mapping[str, np.ndarray], *, headroom: float = DEFAULT_HEADROOM,
                trig_tol: float = TRIG_TOL, max_rounds: int = MAX_ROUNDS, graph: str | None = None) -> Fp16Report:
    """FP16 analysis of one ONNX graph on ``feeds`` (see the module docstring)."""
    path = Path(onnx_path)
    g = _analyse(path)
    nodes = g.model.graph.node
    limit = FP16_MAX / headroom

    # 1. FP32 run with statistics.
    model, names, labels = _build(g, None, stats="max")
    res = _run(g, model, feeds, [names[o] for o in g.outputs] + [x + _SUFFIX_MAX for x in labels])
    ref = {o: res[names[o]] for o in g.outputs}
    st = _stats(g, res, labels, None)
    max_act = max((a for a, _ in st.values() if math.isfinite(a)), default=0.0)

    keep: dict[int, str] = {}

    def keep_tensor(t: str, reason: str):
        if t in g.producer:
            keep.setdefault(g.producer[t], reason)
        for c in g.consumers.get(t, []):
            keep.setdefault(c, reason)

    # 2. Rules.
    for t, (amax, nonfinite) in st.items():
        if nonfinite:
            keep_tensor(t, "nonfinite_fp32: already inf/NaN in FP32")
        elif amax > limit:
            keep_tensor(t, f"overflow: max|x| {amax:.3g} > 65504/{headroom:g}")
    for i, n in enumerate(nodes):
        if not n.input or n.input[0] not in st:
            continue
        amax = st[n.input[0]][0]
        if n.op_type in NORM_OPS and amax * amax > limit:
            keep.setdefault(i, f"norm: input max|x| {amax:.3g}, squares exceed 65504/{headroom:g}")
        if n.op_type in TRIG_OPS and amax * 2.0**-11 > trig_tol:
            keep_tensor(n.input[0], f"trig: argument max|x| {amax:.3g}, FP16 rounding > {trig_tol:g} rad")

    def keep_constants():  # as tensorrt_build does: constants feeding an FP32 layer stay FP32
        for i in list(keep):
            for t in nodes[i].input:
                j = g.producer.get(t)
                if j is not None and nodes[j].op_type == "Constant":
                    keep.setdefault(j, f"constant: feeds FP32 node {_node_name(g, i)}")

    keep_constants()

    # 3. Emulation: every node in FP16 (for the report), then with the kept set; while the
    # outputs are not finite, keep the first node that makes an inf/NaN and run again (only
    # these runs carry per-tensor statistics: they make ONNX Runtime's set-up ~2x slower).
    all_half = _emulate(g, set(), feeds, ref, stats=False)[0]
    mitigated = _emulate(g, set(keep), feeds, ref, stats=False)[0] if keep else all_half
    for _ in range(max_rounds):
        if not mitigated["nonfinite"]:
            break
        st16 = _emulate(g, set(keep), feeds, ref, stats=True)[1]
        culprits = _first_nonfinite(g, st16, set(keep))
        if not culprits:
            break
        for i, t in culprits:
            keep_tensor(t, "nonfinite_fp16: inf/NaN in the FP16 emulation")
            keep.setdefault(i, "nonfinite_fp16: inf/NaN in the FP16 emulation")
        keep_constants()
        mitigated = _emulate(g, set(keep), feeds, ref, stats=False)[0]
    reasons = {_node_name(g, i): r for i, r in sorted(keep.items())}
    return Fp16Report(graph or path.stem, sorted(reasons), reasons, all_half, mitigated, max_act, headroom, len(nodes))


def _emulate(g: _Graph, keep: set[int], feeds, ref, stats: bool):
    model, names, labels = _build(g, keep, stats="full" if stats else "none")
    outs = [names[o] for o in g.outputs]
    res = _run(g, model, feeds, outs + [x + s for x in labels for s in (_SUFFIX_MAX, _SUFFIX_NF)])
    got = {o: res[names[o]] for o in g.outputs}
    return _error(ref, got), _stats(g, res, labels, keep)


def _first_nonfinite(g: _Graph, st: Mapping[str, tuple[float, bool]], keep: set[int]) -> list[tuple[int, str]]:
    """Nodes (topological order) whose float output is inf/NaN while their inputs are finite."""
    bad = lambda t: t in st and (st[t][1] or not math.isfinite(st[t][0]))  # noqa: E731
    seen_as = lambda t, i: (t + _SUFFIX_R) if (t + _SUFFIX_R) in st and i not in keep else t  # noqa: E731
    for t in g.float_tensors:  # an input or weight that overflows once rounded
        if t not in g.producer and bad(t + _SUFFIX_R):
            return [(c, t) for c in g.consumers.get(t, [])]
    for i, n in enumerate(g.model.graph.node):
        outs = [o for o in n.output if bad(o)]
        if outs and not any(bad(seen_as(t, i)) for t in n.input if t):
            return [(i, o) for o in outs]
        for t in n.input:  # an FP32-produced tensor that overflows when an FP16 node reads it
            if t and bad(t + _SUFFIX_R) and not bad(t) and i not in keep:
                return [(i, t)]
    return []


# --------------------------------------------------------------------------- CLI


def identify(model) -> str | None:
    """Which graph of ``rewas_rt.graphs.GRAPHS`` an ONNX model is, from its input and output names."""
    from rewas_rt.graphs import GRAPHS

    io = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    matches = [g for g, s in GRAPHS.items() if io == ([t.name for t in s.inputs], [t.name for t in s.outputs])]
    return matches[0] if len(matches) == 1 else None


def _model_dims(model, graph: str) -> dict[str, int]:
    """Values of the contract's model dimensions (e.g. feature_dim), read from the graph's own I/O shapes."""
    from rewas_rt.graphs import GRAPHS, MODEL_DIMS

    spec = GRAPHS[graph]
    dims: dict[str, int] = {}
    for specs, values in ((spec.inputs, model.graph.input), (spec.outputs, model.graph.output)):
        for t, v in zip(specs, values):
            for axis, d in zip(t.shape, v.type.tensor_type.shape.dim):
                if isinstance(axis, str) and axis in MODEL_DIMS and d.dim_value:
                    dims[axis] = d.dim_value
    return dims


def _feeds_for(onnx_path: Path, graph: str, batch: int, seed: int, configs=None) -> dict[str, np.ndarray]:
    """Sample inputs from the graph contract and ``export.graph_table``; model dimensions from the
    graph itself, configs (token ids) from the tiny preset adjusted to the graph."""
    import onnx

    from export.export_onnx import sample_inputs
    from export.graph_table import GRAPH_EXPORTS
    from rewas_rt.graphs import GRAPHS

    m = onnx.load(str(onnx_path), load_external_data=False)
    spec = GRAPHS[graph].resolved(**_model_dims(m, graph))
    if configs is None:
        from training.models import presets

        configs = presets.tiny()
        adapt = GRAPH_EXPORTS[graph].configs_from_onnx
        if adapt is not None:
            configs = adapt(configs, m)
    return sample_inputs(spec, configs, batch, seed=seed)


@cli_main
def main(argv: list[str] | None = None) -> int:
    from export.graph_table import GRAPH_EXPORTS
    from rewas_rt.graphs import GRAPHS

    p = argparse.ArgumentParser(prog="fp16_check.py", description="Find the ONNX nodes that must stay FP32 in an FP16 engine.")
    p.add_argument("path", type=Path, help="an exported graph (.onnx, recognised by its inputs/outputs) or a folder of them")
    p.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM, help="max|x| must stay below 65504/headroom")
    p.add_argument("--batch", type=int, default=None, help="batch of the sample inputs (default: the graph's, 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the reports (with the FP32 node lists) as JSON")
    p.add_argument("--list", action="store_true", help="print every FP32 node with its reason")
    args = p.parse_args(argv)
    import onnx

    if args.path.is_dir():
        files = sorted(args.path.glob("*.onnx"))
    elif args.path.is_file():
        files = [args.path]
    else:
        raise InputError(f"{args.path} does not exist")
    paths = []
    for f in files:  # which graph a file is: from its inputs and outputs, not its name
        try:
            graph = identify(onnx.load(str(f), load_external_data=False))
        except Exception as e:  # noqa: BLE001 - onnx raises DecodeError and friends
            raise InputError(f"{f}: not an ONNX model ({type(e).__name__})") from None
        if graph is None and args.path.is_file():
            raise InputError(f"{f.name}: its inputs/outputs match none of the graphs {', '.join(GRAPHS)}")
        if graph is not None:
            paths.append((graph, f))
    if not paths:
        raise InputError(f"no graph of {', '.join(GRAPHS)} in {args.path}")
    out = {}
    worst_nonfinite = False
    for graph, path in paths:
        feeds = _feeds_for(path, graph, args.batch or GRAPH_EXPORTS[graph].fp16_batch, args.seed)
        rep = check_graph(path, feeds, headroom=args.headroom, graph=graph)
        print(f"{graph}: {rep.summary()}; max activation {rep.max_activation:.3g}")
        if args.list:
            for name, why in rep.reasons.items():
                print(f"    {name}: {why}")
        out[graph] = {**rep.to_dict(), "fp32_layers": rep.fp32_layers, "reasons_by_node": rep.reasons}
        worst_nonfinite |= rep.mitigated["nonfinite"]
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=1, default=float) + "\n")
    return 1 if worst_nonfinite else 0


if __name__ == "__main__":
    sys.exit(main())
