"""Export the seven graphs of ``rewas_rt.graphs.GRAPHS`` to ONNX and check them against PyTorch.

Weights come from the canonical checkpoint folder (``training.checkpoints``) or are random
weights of a named preset (``training.models.presets``: "tiny" for tests, "rewas-m" for
full-size benchmarks)::

    python export/export_onnx.py --config tiny --random-weights --out /tmp/onnx
    python export/export_onnx.py --checkpoints checkpoints/ --out /tmp/onnx --graphs phi,vocoder
    python export/export_onnx.py --config rewas-m --random-weights --out /tmp/full --report full.json

Exporter: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``). Every module
here traces to plain ops with it (no data-dependent control flow), it takes ~13 s for the
full-size UNet+adapter against ~41 s for the dynamo exporter (docs/design.md §9), and its node
names carry the module scopes (``/unet/input_blocks.1/...``), which the FP16 report and
the TensorRT precision constraints refer to. Opset 18: the version TensorRT 10 is known to
parse for everything here (23 would emit GroupNormalization/Attention ops of unchecked
TensorRT support; the dynamo exporter needs >= 18).

The graph is traced at one batch size and parity is checked at another, so a batch size
baked into the graph by the tracer shows up as a parity failure, not in production.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from rewas_rt import constants as C
from rewas_rt.atomic import atomic_write_text
from rewas_rt.errors import RewasError, cli_main
from rewas_rt.graphs import GRAPHS, GraphSpec, graph_names

from export.graph_table import GRAPH_EXPORTS
from training.models.presets import RANDOM_INIT_VERSION, component_seed, randomize_

EXPORTER = "torchscript"
# Bump when the exported graphs change for identical weights (wrappers, cleanup, exporter
# settings): build_engines re-exports every graph whose fingerprint changes.
EXPORT_VERSION = 1
OPSET = 18
# float32 parity: max |onnx - torch| <= PARITY_RTOL * max |torch|, per output.
PARITY_RTOL = 1e-4
# Protobuf cannot serialise more than 2 GiB: above this many bytes of weights a graph keeps
# them in one external-data file (<graph>.onnx.data) beside the .onnx.
EXTERNAL_DATA_BYTES = 1_800_000_000
# Trace batch (and text length) vs the batch the parity check runs at: they must differ.
TRACE_BATCH = 2
TRACE_TEXT_LEN = 7
PARITY_TEXT_LEN = 11

# Which canonical components each graph is built from (the table's, by name).
GRAPH_COMPONENTS: dict[str, tuple[str, ...]] = {g: e.components for g, e in GRAPH_EXPORTS.items()}
COMPONENT_NAMES = ("unet", "adapter", "vae", "vocoder", "clap_text", "synchformer", "phi")


class ExportError(RewasError, RuntimeError):
    """A graph cannot be exported or fails its parity check (one-line message)."""


# --------------------------------------------------------------------------- weights


@dataclasses.dataclass
class ModelSource:
    """The seven components' configs and (lazily built) modules, from checkpoints or random."""

    name: str
    configs: dict[str, Any]
    kind: str  # "checkpoints" | "random"
    checkpoints: Path | None = None
    seed: int = 0
    _modules: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    _weights_sha: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_preset(cls, name: str, seed: int = 0) -> "ModelSource":
        from training.models import presets

        src = cls(name=name, configs=presets.preset(name), kind="random", seed=seed)
        check_consistency(src.configs)
        return src

    @classmethod
    def from_checkpoints(cls, ckpt_dir: str | os.PathLike, name: str | None = None) -> "ModelSource":
        from training.checkpoints import CheckpointError, load_config

        ckpt_dir = Path(ckpt_dir)
        if not ckpt_dir.is_dir():
            raise ExportError(f"checkpoint folder {ckpt_dir} does not exist")
        missing = [c for c in COMPONENT_NAMES
                   if not (ckpt_dir / f"{c}.json").is_file() or not (ckpt_dir / f"{c}.safetensors").is_file()]
        if missing:
            raise ExportError(
                f"{ckpt_dir}: missing canonical component(s) {', '.join(missing)} "
                f"(<component>.safetensors + <component>.json; write them with "
                f"`python -m training.import_checkpoints --src RELEASED_FILES --out {ckpt_dir}`)")
        try:
            configs = {c: load_config(ckpt_dir, c) for c in COMPONENT_NAMES}
        except (CheckpointError, ValueError) as e:
            raise ExportError(str(e)) from None
        src = cls(name=name or preset_name_of(configs), configs=configs, kind="checkpoints", checkpoints=ckpt_dir)
        check_consistency(src.configs)
        return src

    def component(self, name: str):
        if name not in self._modules:
            if self.kind == "random":
                from training.checkpoints import COMPONENTS

                m = COMPONENTS[name].model_cls(self.configs[name])
                randomize_(m, component_seed(self.seed, name))
                self._modules[name] = m.float().eval()
            else:
                from training.checkpoints import CheckpointError, load_component

                try:
                    self._modules[name] = load_component(self.checkpoints, name)[0].float().eval()
                except (CheckpointError, ValueError) as e:
                    raise ExportError(str(e)) from None
        return self._modules[name]

    def release(self, *names: str) -> None:
        for n in names or list(self._modules):
            self._modules.pop(n, None)

    def weights_id(self, name: str) -> str:
        """What identifies a component's weights: the safetensors file's sha256, or the random init."""
        if self.kind == "random":
            return f"random(seed={self.seed}, init=v{RANDOM_INIT_VERSION})"
        if name not in self._weights_sha:
            from rewas_rt.manifest import sha256_file

            self._weights_sha[name] = sha256_file(self.checkpoints / f"{name}.safetensors")
        return self._weights_sha[name]

    @property
    def feature_dim(self) -> int:
        return int(self.configs["synchformer"].embed_dim)

    @property
    def scale_factor(self) -> float:
        return float(self.configs["vae"].scale_factor)

    def spec(self, graph: str) -> GraphSpec:
        return GRAPHS[graph].resolved(feature_dim=self.feature_dim)

    def graph_module(self, graph: str):
        return graph_module(graph, {c: self.component(c) for c in GRAPH_COMPONENTS[graph]})

    def fingerprint_inputs(self, graph: str) -> dict[str, Any]:
        import torch

        return {
            "graph": graph,
            "contract": graph_contract(self.spec(graph)),
            "components": {c: {"config": self.configs[c].to_dict(), "weights": self.weights_id(c)}
                           for c in GRAPH_COMPONENTS[graph]},
            "exporter": EXPORTER, "export_version": EXPORT_VERSION, "opset": OPSET, "torch": torch.__version__,
        }

    def fingerprint(self, graph: str) -> str:
        blob = json.dumps(self.fingerprint_inputs(graph), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def preset_name_of(configs: Mapping[str, Any]) -> str:
    """The preset whose configs these are (the VAE scale factor aside: it comes from the checkpoint), or "custom"."""
    from training.models import presets

    def key(cfgs):
        return {c: {k: v for k, v in cfg.to_dict().items() if (c, k) != ("vae", "scale_factor")} for c, cfg in cfgs.items()}

    for name, make in presets.PRESETS.items():
        if key(make()) == key(configs):
            return name
    return "custom"


def graph_contract(spec: GraphSpec) -> dict:
    return {"inputs": [t.to_dict() for t in spec.inputs], "outputs": [t.to_dict() for t in spec.outputs]}


def check_consistency(configs: Mapping[str, Any]) -> None:
    """Widths that must agree across components for the graphs to connect."""
    problems = []
    sf, phi, clap = configs["synchformer"], configs["phi"], configs["clap_text"]
    if phi.width != sf.embed_dim:
        problems.append(f"phi width {phi.width} != synchformer embed_dim {sf.embed_dim}")
    if phi.attention not in ("batch", "time"):
        problems.append(f"phi attention {phi.attention!r} mixes batch items; the graph needs 'batch' (or 'time')")
    if phi.proj_dims[-1] != 1:
        problems.append(f"phi must output one energy value per step, proj_dims end at {phi.proj_dims[-1]}")
    if sf.temporal_resolution != C.TOKENS_PER_SEGMENT or sf.img_size != C.CROP:
        problems.append("synchformer temporal_resolution/img_size differ from the video constants")
    if clap.embed_dim != C.TEXT_EMBED_DIM:
        problems.append(f"clap_text embed_dim {clap.embed_dim} != {C.TEXT_EMBED_DIM}")
    for c in ("unet", "adapter"):
        if configs[c].extra_film_condition_dim != C.TEXT_EMBED_DIM:
            problems.append(f"{c} film dim {configs[c].extra_film_condition_dim} != {C.TEXT_EMBED_DIM}")
    if configs["vae"].embed_dim != C.LATENT_SHAPE[0] or configs["unet"].in_channels != C.LATENT_SHAPE[0]:
        problems.append(f"latent channels differ from {C.LATENT_SHAPE[0]}")
    if configs["vocoder"].num_mels != C.N_MELS:
        problems.append(f"vocoder num_mels {configs['vocoder'].num_mels} != {C.N_MELS}")
    if problems:
        raise ExportError("inconsistent model configs: " + "; ".join(problems))


def graph_module(graph: str, comps: Mapping[str, Any]):
    """The nn.Module whose forward(*inputs in GRAPHS order) is the graph (``GRAPH_EXPORTS[graph].module``)."""
    if graph not in GRAPH_EXPORTS:
        raise ExportError(f"unknown graph {graph!r} (known: {', '.join(GRAPHS)})")
    return GRAPH_EXPORTS[graph].module(comps).float().eval()


# --------------------------------------------------------------------------- inputs


def sample_inputs(spec: GraphSpec, configs: Mapping[str, Any], batch: int, text_len: int = PARITY_TEXT_LEN,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs in each graph's valid range (``GRAPH_EXPORTS[graph].inputs``), for tracing,
    parity and the FP16 check."""
    rng = np.random.default_rng(seed)
    axes = {"batch": batch, "cfg_batch": batch, "text_len": text_len}
    makers = GRAPH_EXPORTS[spec.name].inputs
    out: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        x = makers[t.name](rng, spec.concrete_shape(t, **axes), configs, out)
        out[t.name] = np.ascontiguousarray(np.asarray(x).astype(t.dtype))
    return out


# --------------------------------------------------------------------------- run


def torch_forward(module, spec: GraphSpec, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        out = module(*(torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in spec.inputs))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return {t.name: o.detach().float().numpy() for t, o in zip(spec.outputs, outs)}


def onnx_session(path: str | os.PathLike, threads: int = 0, optimize: bool = True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(path: str | os.PathLike, feeds: Mapping[str, np.ndarray], outputs: list[str] | None = None
             ) -> dict[str, np.ndarray]:
    sess = onnx_session(path)
    names = outputs or [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds))))


def compare(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], rtol: float = PARITY_RTOL) -> dict:
    """Per output: max abs error and max |ref|; overall: the worst relative error."""
    per = {}
    for name, r in ref.items():
        g = got[name]
        if g.shape != r.shape:
            raise ExportError(f"output {name}: shape {g.shape} != PyTorch {r.shape}")
        r64, g64 = r.astype(np.float64), g.astype(np.float64)
        finite = bool(np.isfinite(g64).all() and np.isfinite(r64).all())
        err = float(np.max(np.abs(g64 - r64))) if r.size else 0.0
        scale = float(np.max(np.abs(r64))) if r.size else 0.0
        rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
        per[name] = {"max_abs": err, "max_ref": scale, "rel": rel if finite else math.inf, "finite": finite}
    worst = max(per.values(), key=lambda d: d["rel"])
    return {"max_abs": worst["max_abs"], "max_ref": worst["max_ref"], "rel": worst["rel"],
            "tolerance": rtol, "ok": all(d["rel"] <= rtol for d in per.values()), "outputs": per}


def parity(module, spec: GraphSpec, onnx_path: str | os.PathLike, feeds: Mapping[str, np.ndarray],
           rtol: float = PARITY_RTOL) -> dict:
    """ONNX Runtime (CPU) vs the PyTorch module on ``feeds``; never raises on a mismatch
    (see ``result["ok"]``), so callers can report the numbers first."""
    ref = torch_forward(module, spec, feeds)
    got = run_onnx(onnx_path, feeds)
    res = compare(ref, got, rtol)
    res["batch"] = int(next(iter(feeds.values())).shape[0])
    return res


# --------------------------------------------------------------------------- export


@dataclasses.dataclass
class ExportResult:
    onnx: Path
    external_data: Path | None
    seconds: float
    nodes: int
    folded: bool

    @property
    def files(self) -> list[Path]:
        return [self.onnx] + ([self.external_data] if self.external_data else [])

    @property
    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def _initializer_bytes(model) -> int:
    return sum(t.ByteSize() for t in model.graph.initializer)


def cleanup_graph(model, fold: bool = True):
    """onnx-graphsurgeon: constant folding (ONNX Runtime evaluates constant subgraphs; only
    below the 2 GiB protobuf limit), dead-node removal, topological sort. Returns (model, folded)."""
    import onnx_graphsurgeon as gs
    import onnxruntime as ort
    from onnx_graphsurgeon.logger import G_LOGGER

    ort.set_default_logger_severity(3)
    G_LOGGER.severity = G_LOGGER.ERROR  # folding notes (e.g. "large folded constants") are not errors
    graph = gs.import_onnx(model)
    folded = False
    if fold and _initializer_bytes(model) < EXTERNAL_DATA_BYTES:
        graph.fold_constants()
        folded = True
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    return out, folded


def set_io_shapes(model, spec: GraphSpec) -> None:
    """Graph inputs/outputs typed exactly as the contract says, intermediate shapes dropped.

    The tracer's own symbolic shapes can be wrong: it labelled the vae_encoder's static
    128x16 output axes 'batch' and 'Convmoments_dim_3'. ONNX shape inference re-derives the
    intermediate shapes from these afterwards.
    """
    by_name = {t.name: t for t in spec.inputs + spec.outputs}
    for vi in list(model.graph.input) + list(model.graph.output):
        t = by_name[vi.name]
        shape = vi.type.tensor_type.shape
        del shape.dim[:]
        for d in t.shape:
            dim = shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = d
    del model.graph.value_info[:]


def export_graph(module, spec: GraphSpec, out_dir: str | os.PathLike, example: Mapping[str, np.ndarray], *,
                 opset: int = OPSET, external_data: bool | None = None, fold: bool = True) -> ExportResult:
    """Export ``module`` as ``<out_dir>/<graph>.onnx`` (+ ``.onnx.data``), atomically.

    ``external_data=None`` keeps weights in one external file only above EXTERNAL_DATA_BYTES.
    """
    import onnx
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = spec.name
    final_onnx, final_data = out_dir / f"{name}.onnx", out_dir / f"{name}.onnx.data"
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{name}.export-"))
    try:
        raw = tmp / "raw" / "model.onnx"
        raw.parent.mkdir()
        args = tuple(torch.from_numpy(np.ascontiguousarray(example[t.name])) for t in spec.inputs)
        with torch.no_grad(), warnings.catch_warnings():
            # TracerWarnings (Python values computed from shapes) and the legacy-exporter
            # notice: the parity check at another batch size is the real test.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(raw), dynamo=False, opset_version=opset,
                input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                dynamic_axes=spec.dynamic_axes, do_constant_folding=True,
            )
        model = onnx.load(str(raw))  # with the weights (the exporter splits them above 2 GiB)
        shutil.rmtree(raw.parent)
        set_io_shapes(model, spec)
        model, folded = cleanup_graph(model, fold=fold)
        model.producer_name, model.doc_string = "rewas-rt export", spec.doc
        big = _initializer_bytes(model) >= EXTERNAL_DATA_BYTES if external_data is None else external_data
        staged = tmp / final_onnx.name
        if big:
            onnx.save_model(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=final_data.name, size_threshold=1024)
        else:
            onnx.save_model(model, str(staged))
        nodes = len(model.graph.node)
        del model
        onnx.shape_inference.infer_shapes_path(str(staged), str(staged))
        onnx.checker.check_model(str(staged))
        from rewas_rt.atomic import default_file_mode, fsync_path, publish_together

        pairs = [(str(tmp / final_data.name), str(final_data))] if big else []
        pairs.append((str(staged), str(final_onnx)))
        for f, _ in pairs:
            os.chmod(f, default_file_mode())  # onnx writes external data as 0600
            fsync_path(f)
        publish_together(pairs)  # .onnx.data and .onnx as a pair: a failure restores both
        if not big:
            final_data.unlink(missing_ok=True)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - one line for the CLI; the cause stays chained
        raise ExportError(f"{name}: export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(final_onnx, final_data if big else None, time.perf_counter() - t0, nodes, folded)


def export_and_check(source: ModelSource, graph: str, out_dir: str | os.PathLike, *, parity_batch: int | None = None,
                     check: bool = True, rtol: float = PARITY_RTOL, external_data: bool | None = None,
                     seed: int = 0, trace_batch: int = TRACE_BATCH) -> tuple[ExportResult, dict | None]:
    """Export one graph and (``check``) compare it with PyTorch at a batch size other than the traced one."""
    spec = source.spec(graph)
    module = source.graph_module(graph)
    example = sample_inputs(spec, source.configs, trace_batch, TRACE_TEXT_LEN, seed=seed + 1)
    result = export_graph(module, spec, out_dir, example, external_data=external_data)
    par = None
    if check:
        batch = parity_batch or GRAPH_EXPORTS[graph].parity_batch
        feeds = sample_inputs(spec, source.configs, batch, PARITY_TEXT_LEN, seed=seed + 2)
        par = parity(module, spec, result.onnx, feeds, rtol)
    return result, par


def fmt_parity(p: Mapping[str, Any] | None) -> str:
    if p is None:
        return "parity not checked"
    return (f"parity max abs {p['max_abs']:.2e}, max|ref| {p['max_ref']:.2e}, rel {p['rel']:.1e} "
            f"(tol {p['tolerance']:.0e}, batch {p['batch']})")


def parity_failure(graph: str, p: Mapping[str, Any]) -> str:
    return f"{graph}: ONNX Runtime differs from PyTorch: {fmt_parity(p)}"


# --------------------------------------------------------------------------- CLI


def source_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ModelSource:
    if args.checkpoints and args.random_weights:
        parser.error("use either --checkpoints DIR or --random-weights, not both")
    if args.checkpoints and args.config:
        parser.error("--config goes with --random-weights; with --checkpoints the configs come from the checkpoint folder")
    if args.checkpoints:
        return ModelSource.from_checkpoints(args.checkpoints)
    if not args.random_weights:
        parser.error("give --checkpoints DIR (canonical checkpoints) or --config NAME --random-weights")
    from training.models import presets

    if args.config not in presets.PRESETS:
        parser.error(f"unknown --config {args.config!r} (known: {', '.join(presets.PRESETS)})")
    return ModelSource.from_preset(args.config, seed=args.seed)


def parse_graphs(value: str | None, parser: argparse.ArgumentParser) -> list[str]:
    if not value:
        return list(GRAPHS)
    try:
        return graph_names(value)
    except ValueError as e:
        parser.error(str(e))


def add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoints", type=Path, help="canonical checkpoint folder (training.import_checkpoints output)")
    p.add_argument("--config", default=None, help="preset for --random-weights: tiny or rewas-m (default tiny)")
    p.add_argument("--random-weights", action="store_true", help="random weights of --config instead of checkpoints")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and test inputs")


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="export_onnx.py", description="Export the ReWaS graphs to ONNX and check parity.")
    add_source_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder for <graph>.onnx")
    p.add_argument("--graphs", help=f"comma-separated subset of {','.join(GRAPHS)}")
    p.add_argument("--no-parity", default="", metavar="GRAPHS",
                   help="comma-separated graphs whose parity check is skipped ('all' for every one)")
    p.add_argument("--parity-batch", type=int, default=None, help="batch of the parity check (default 3; synchformer 1)")
    p.add_argument("--trace-batch", type=int, default=TRACE_BATCH,
                   help="batch the graphs are traced at (default 2; parity runs at another one)")
    p.add_argument("--external-data", choices=("auto", "always", "never"), default="auto")
    p.add_argument("--report", type=Path, help="write the per-graph results as JSON")
    args = p.parse_args(argv)
    if args.random_weights and args.config is None:
        args.config = "tiny"
    graphs = parse_graphs(args.graphs, p)
    skip_parity = set(GRAPHS) if args.no_parity == "all" else set(parse_graphs(args.no_parity, p)) if args.no_parity else set()
    ext = {"auto": None, "always": True, "never": False}[args.external_data]
    source = source_from_args(args, p)
    report = {}
    failures = []
    for i, g in enumerate(graphs, 1):
        res, par = export_and_check(source, g, args.out, parity_batch=args.parity_batch,
                                    check=g not in skip_parity, external_data=ext, seed=args.seed,
                                    trace_batch=args.trace_batch)
        sizes = ", ".join(f"{f.name} {f.stat().st_size / 2**20:.1f} MiB" for f in res.files)
        print(f"[{i}/{len(graphs)}] {g}: export {res.seconds:.1f}s ({res.nodes} nodes; {sizes}); {fmt_parity(par)}",
              flush=True)
        report[g] = {"seconds": res.seconds, "nodes": res.nodes,
                     "files": {f.name: f.stat().st_size for f in res.files}, "parity": par}
        if par is not None and not par["ok"]:
            failures.append(parity_failure(g, par))
        source.release(*GRAPH_COMPONENTS[g])
    if args.report:
        atomic_write_text(args.report, json.dumps(report, indent=1, default=float) + "\n")
    if failures:
        raise ExportError("; ".join(failures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
