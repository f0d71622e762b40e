"""Write a complete engine directory (docs/design.md §5): ONNX graphs, FP16 TensorRT engines
when TensorRT and a GPU are present, the tokenizer and ``manifest.json``::

    python export/build_engines.py --checkpoints checkpoints/ --tokenizer roberta-base/ --out engines/
    python export/build_engines.py --config tiny --random-weights --out /tmp/engines
    python export/build_engines.py --release --out engines/rewas-m   # download, import, build

``--release`` fetches the released files that are missing (``export/release.py``: resumable,
verified, licences printed first) into ``--dir`` (default ``~/.cache/rewas-rt/release``),
imports them into ``<dir>/canonical`` (skipped when unchanged) and builds from there.

Per graph: export (``export_onnx``), parity against PyTorch in ONNX Runtime (fails above
1e-4 relative), the FP16 safety check (``fp16_check``: the nodes kept FP32), the FP16 graph
``<graph>.fp16.onnx`` with those nodes as FP32 islands (``fp16_graph``), checked against the
FP32 graph in ONNX Runtime on the CPU with the engine tolerance, then — with TensorRT — an
engine built strongly typed from the FP16 graph (TensorRT 10 and 11; ``--trt-typing weak``:
TensorRT 10's FP16 flag with FP32 pins), compared against ONNX Runtime with polygraphy. Re-running skips every graph whose inputs (weights, config, exporter
version, opset; for engines also TensorRT version and GPU) are unchanged and whose files
still match their checksums. The manifest is written last, atomically, and the finished
directory is verified with ``rewas_rt.manifest.verify`` — the runtime's own check.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Mapping

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewas_rt import __version__ as RUNTIME_VERSION
from rewas_rt import manifest as M
from rewas_rt.atomic import atomic_write_text
from rewas_rt.errors import RewasError, cli_main
from rewas_rt.graphs import DYNAMIC_AXES, GRAPHS
from rewas_rt.manifest import UNCONDITIONAL_HINTS
from rewas_rt.samplers import SAMPLERS

from export import manifest_sections as S
from export.graph_table import GRAPH_EXPORTS

ENGINE_BUILD_VERSION = 2  # bump when tensorrt_build changes what it builds


class BuildError(RewasError, RuntimeError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        self.exit(2, f"error: {message} (see --help)\n")


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _previous_manifest(out: Path) -> M.Manifest | None:
    try:
        return M.Manifest.from_json(json.loads((out / M.MANIFEST_NAME).read_text()))
    except (OSError, ValueError):  # ManifestError is a ValueError
        return None


def _files_intact(out: Path, *entries: M.FileEntry | None) -> bool:
    for e in entries:
        if e is None:
            continue
        p = out / e.path
        if not p.is_file() or p.stat().st_size != e.bytes or M.sha256_file(p) != e.sha256:
            return False
    return True


def build_tokenizer(args, source, out: Path) -> M.Tokenizer:
    from training import tokenizer as T

    clap = source.configs["clap_text"]
    try:
        if args.tokenizer:
            tok = T.from_folder(args.tokenizer)
        elif source.kind == "random":
            try:
                tok = T.train_tiny(clap.vocab_size)
            except T.TokenizerError as e:
                raise BuildError(f"{e}: pass --tokenizer DIR (a RoBERTa tokenizer folder) for a CLAP vocabulary "
                                 f"of {clap.vocab_size} tokens") from None
        else:
            raise BuildError("--tokenizer DIR is required with --checkpoints (the RoBERTa tokenizer folder: "
                             "tokenizer.json, or vocab.json + merges.txt)")
        facts = T.check(tok, clap.vocab_size, clap.pad_token_id)
    except T.TokenizerError as e:
        raise BuildError(str(e)) from None
    text = T.to_json(tok)
    path = out / M.TOKENIZER_NAME
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
    source_desc = str(args.tokenizer) if args.tokenizer else f"trained on the built-in corpus ({facts['vocab_size']} tokens)"
    return M.Tokenizer(**vars(S.file_entry(out, M.TOKENIZER_NAME)), **facts, source=source_desc)


def _export_graph(source, g: str, out: Path, args) -> tuple[M.Graph, str]:
    from export import export_onnx as E
    from export import fp16_check

    spec = source.spec(g)
    res, par = E.export_and_check(source, g, out, check=True, rtol=args.tolerance, seed=args.seed)
    if not par["ok"]:
        raise BuildError(E.parity_failure(g, par))
    msg = f"export {res.seconds:.1f}s, parity max rel {par['rel']:.1e}"
    fp16 = None
    fp32_layers: list[str] = []
    if not args.no_fp16_check:
        feeds = E.sample_inputs(spec, source.configs, GRAPH_EXPORTS[g].fp16_batch, E.PARITY_TEXT_LEN, seed=args.seed + 3)
        rep = fp16_check.check_graph(res.onnx, feeds, headroom=args.headroom, graph=g)
        fp16 = {**rep.to_dict(), "reasons_by_node": rep.reasons}
        fp32_layers = rep.fp32_layers
        msg += f", {rep.summary()}"
        if rep.mitigated["nonfinite"]:
            raise BuildError(f"{g}: the FP16 emulation still produces inf/NaN with {len(fp32_layers)} FP32 layers")
    entry = M.Graph(
        doc=spec.doc,
        components=list(E.GRAPH_COMPONENTS[g]),
        opset=E.OPSET,
        onnx=S.file_entry(out, res.onnx.name),
        external_data=S.file_entry(out, res.external_data.name) if res.external_data else None,
        precision="fp32",
        **S.graph_io(spec),
        parity=M.Parity(**{k: v for k, v in par.items() if k != "outputs"}),
        fp16_check=fp16,
        fp32_layers=fp32_layers,
        engine=None,
        fingerprint=source.fingerprint(g),
        export_seconds=round(res.seconds, 2),
    )
    return entry, msg


def _remove_fp16_graph(out: Path, g: str) -> None:
    from export.fp16_graph import fp16_name

    for name in (fp16_name(g), fp16_name(g) + ".data"):
        (out / name).unlink(missing_ok=True)


def _fp16_graph(entry: M.Graph, g: str, source, out: Path, prev: M.Graph | None, args
                ) -> tuple[M.Fp16Onnx | None, str]:
    """``<graph>.fp16.onnx`` with the FP32 islands, checked against the FP32 graph on the CPU (None without
    an FP16 check: there is no list of nodes to keep)."""
    from export import export_onnx as E
    from export import fp16_graph as F

    if entry.fp16_check is None:
        _remove_fp16_graph(out, g)
        return None, "no FP16 graph (no FP16 check)"
    fp = _fingerprint({"onnx": entry.onnx.sha256, "data": entry.external_data.sha256 if entry.external_data else None,
                       "fp32_layers": entry.fp32_layers, "converter": F.CONVERTER, "tolerance": args.engine_tolerance})
    old = prev.fp16_onnx if prev else None
    if not args.force and old and old.fingerprint == fp and _files_intact(out, old.onnx, old.external_data):
        return old, "FP16 graph unchanged"
    spec = source.spec(g)
    dst = out / F.fp16_name(g)
    try:
        info = F.convert(out / entry.onnx.path, dst, entry.fp32_layers)
    except F.Fp16GraphError as e:
        raise BuildError(str(e)) from None
    feeds = [E.sample_inputs(spec, source.configs, b, E.PARITY_TEXT_LEN, seed=args.seed + 4 + b)
             for b in sorted({DYNAMIC_AXES["batch"][1], 2})]
    cmp = F.check(out / entry.onnx.path, dst, feeds, rtol=args.engine_tolerance)
    if not cmp["ok"]:
        raise BuildError(f"{g}: the FP16 graph differs from the FP32 graph in ONNX Runtime: max abs {cmp['max_abs']:.3e}, "
                         f"max|ref| {cmp['max_ref']:.3e}, rel {cmp['rel']:.2e} > {cmp['tolerance']:g} "
                         f"(try a larger --headroom to keep more nodes in FP32)")
    data = dst.name + ".data"
    res = M.Fp16Onnx(onnx=S.file_entry(out, dst.name),
                     external_data=S.file_entry(out, data) if info["weights_in_data_file"] else None,
                     precision="fp16", **info, parity_vs_fp32=cmp, fingerprint=fp)
    return res, f"FP16 graph vs FP32 rel {cmp['rel']:.1e}"


def _engine(entry: M.Graph, g: str, source, out: Path, trt: Mapping[str, str], prev: M.Graph | None, args
            ) -> tuple[M.Engine, str]:
    from export import export_onnx as E
    from export import tensorrt_build as TB

    spec = source.spec(g)
    typing = args.trt_typing
    if typing not in TB.typing_modes(trt["version"]):
        raise BuildError(f"TensorRT {trt['version']} has no {typing}ly typed networks (supported: "
                         f"{', '.join(TB.typing_modes(trt['version'])) or 'none'}); use --trt-typing strong")
    if typing == "strong" and entry.fp16_onnx is not None:
        src, graph_precision = entry.fp16_onnx.onnx, "fp16"
    else:  # weak typing reads the FP32 graph; strong typing without an FP16 graph builds FP32
        src, graph_precision = entry.onnx, "fp32"
    fp = _fingerprint({
        "onnx": src.sha256, "data": entry.external_data.sha256 if entry.external_data else None,
        "fp32_layers": entry.fp32_layers, "tensorrt": trt["version"], "cc": trt["compute_capability"],
        "profiles": {k: list(v) for k, v in DYNAMIC_AXES.items()}, "build_version": ENGINE_BUILD_VERSION,
        "typing": typing,
    })
    old = prev.engine if prev else None
    if not args.force and old and old.fingerprint == fp and _files_intact(out, old):
        return old, "engine unchanged"
    plan = out / f"{g}.plan"
    info = TB.build_engine(out / src.path, spec, plan, typing=typing, graph_precision=graph_precision,
                           fp32_layers=entry.fp32_layers,
                           timing_cache=out / TB.timing_cache_name(trt["version"], trt["compute_capability"]),
                           workspace_gib=args.workspace_gib)
    feeds = [E.sample_inputs(spec, source.configs, b, E.PARITY_TEXT_LEN, seed=args.seed + 4 + b)
             for b in sorted({DYNAMIC_AXES["batch"][1], 2})]
    cmp = TB.compare_engine(out / entry.onnx.path, plan, feeds, rtol=args.engine_tolerance)
    if not cmp["ok"]:
        raise BuildError(f"{g}: the TensorRT engine differs from ONNX Runtime: max abs {cmp['max_abs']:.3e}, "
                         f"max|ref| {cmp['max_ref']:.3e}, rel {cmp['rel']:.2e} > {cmp['tolerance']:g}")
    info = dict(info, profile={k: M.Profile(**v) for k, v in info["profile"].items()})
    eng = M.Engine(**vars(S.file_entry(out, plan.name)), **info, tensorrt_version=trt["version"],
                   compute_capability=trt["compute_capability"], gpu=trt["gpu"], parity_vs_onnxruntime=cmp,
                   fingerprint=fp)
    return eng, f"{info['precision']} engine ({typing}ly typed) {info['build_seconds']:.0f}s, vs ORT rel {cmp['rel']:.1e}"


def _int8(entry: M.Graph, g: str, source, out: Path, old: M.Graph | None, args) -> tuple[M.Int8Onnx, str]:
    """The opt-in INT8 variant of graph ``g`` (export/quantize.py), reused when its FP32 graph and mode are unchanged."""
    from export import quantize as Q

    prev = old.int8 if old is not None else None
    if (prev and prev.mode == args.int8_mode and prev.source_sha256 == entry.onnx.sha256
            and prev.version == Q.INT8_VERSION and _files_intact(out, prev, prev.external_data)):
        return prev, "INT8 unchanged"
    name = Q.int8_name(g)
    info = Q.quantize_graph(out / entry.onnx.path, out / name, g, source.configs, args.int8_mode,
                            seed=args.seed, feature_dim=source.feature_dim)
    data = out / (name + ".data")
    rec = M.Int8Onnx(**vars(S.file_entry(out, name)),
                     external_data=S.file_entry(out, data.name) if data.is_file() else None,
                     source_sha256=entry.onnx.sha256, **info)
    c = info["check"]
    dev = max(d["rel_max"] for d in c["deviation"].values())
    return rec, f"INT8 {args.int8_mode}: x{c['speedup']:.2f} at build, max rel deviation {dev:.1e}"


def build(args) -> Path:
    from export import export_onnx as E

    out: Path = args.out
    t_start = time.perf_counter()
    licences = _prepare_release(args) if args.release else None
    if args.checkpoints:
        source = E.ModelSource.from_checkpoints(args.checkpoints, name=args.name)
    else:
        source = E.ModelSource.from_preset(args.config, seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(args, source, out)
    trt = None if args.no_tensorrt else M.detect_tensorrt()
    if trt is None:
        why = "disabled by --no-tensorrt" if args.no_tensorrt else "`tensorrt` is not importable or no NVIDIA GPU is visible"
        print(f"TensorRT not available ({why}): writing an ONNX-only engine directory "
              "(rebuild on a TensorRT machine to add FP16 engines)", flush=True)
    prev = None if args.force else _previous_manifest(out)
    graphs: dict[str, M.Graph] = {}
    for i, g in enumerate(GRAPHS, 1):
        t0 = time.perf_counter()
        old = prev.graphs.get(g) if prev else None
        fp = source.fingerprint(g)
        reused = bool(old and old.fingerprint == fp and _files_intact(out, old.onnx, old.external_data)
                      and (old.fp16_check is not None or args.no_fp16_check))
        if reused:
            entry, msg = dataclasses.replace(old), "unchanged, skipped"
        else:
            entry, msg = _export_graph(source, g, out, args)
        entry.fp16_onnx, fmsg = _fp16_graph(entry, g, source, out, old if reused else None, args)
        msg += f"; {fmsg}"
        if trt is not None:
            entry.engine, emsg = _engine(entry, g, source, out, trt, old, args)
            msg += f"; {emsg}"
        elif reused and entry.engine and not _files_intact(out, entry.engine):
            entry.engine = None  # an engine from an earlier TensorRT build whose file is gone
        elif not reused:
            (out / f"{g}.plan").unlink(missing_ok=True)  # built from the previous graph: stale
        if g in args.int8:
            entry.int8, qmsg = _int8(entry, g, source, out, old if reused else None, args)
            msg += f"; {qmsg}"
        else:
            entry.int8 = None
        source.release(*E.GRAPH_COMPONENTS[g])
        graphs[g] = entry
        print(f"[{i}/{len(GRAPHS)}] {g}: {msg} ({time.perf_counter() - t0:.1f}s)", flush=True)

    import onnx
    import onnxruntime
    import torch

    if trt is not None:
        target = M.TensorRTTarget(**trt)
    else:  # engines kept from an earlier TensorRT build, all of them intact
        target = prev.tensorrt if prev and all(e.engine for e in graphs.values()) else None
    manifest = M.Manifest(
        format=M.FORMAT,
        format_version=M.FORMAT_VERSION,
        created=S.now_utc(),
        producer=M.Producer(rewas_rt=RUNTIME_VERSION, exporter=E.EXPORTER, export_version=E.EXPORT_VERSION,
                            torch=torch.__version__, onnx=onnx.__version__, onnxruntime=onnxruntime.__version__),
        build_command=args.command_line,
        model=M.Model(
            name=source.name,
            weights=source.kind,
            checkpoints=str(source.checkpoints) if source.checkpoints else None,
            seed=None if source.checkpoints else source.seed,
            components={c: M.Component(config=cfg.to_dict(), weights=source.weights_id(c))
                        for c, cfg in source.configs.items()},
        ),
        graphs=graphs,
        dynamic_axes={k: list(v) for k, v in DYNAMIC_AXES.items()},
        scheduler=S.scheduler_section(*args.sampling_defaults, sampler=args.sampler,
                                      guidance_interval=args.guidance_interval,
                                      unconditional_hint=args.unconditional_hint),
        vae=S.vae_section(source.scale_factor),
        audio=S.audio_section(),
        video=S.video_section(source.feature_dim),
        energy=S.energy_section(),
        tokenizer=tokenizer,
        tensorrt=target,
        licences=[M.Licence(**entry) for entry in licences] if licences else None,  # release files' licences
    )
    M.write_manifest(out, manifest)
    M.verify(out, backend="onnx")
    if trt is not None:
        M.verify(out, backend="tensorrt", tensorrt=trt)
    kind = "ONNX (FP32 + FP16) + TensorRT" if trt is not None else "ONNX (FP32 + FP16)"
    print(f"wrote {kind} engine directory {out} ({time.perf_counter() - t_start:.0f}s), verified", flush=True)
    return out


def _prepare_release(args) -> list[dict]:
    """--release: download what is missing, import (skipped when unchanged); returns the licences."""
    from export import release as R

    configs = R.load_configs(args.configs)
    folder = R.ensure(args.dir, configs=configs, trust_pickle=args.trust_pickle)
    args.checkpoints = R.import_release(folder, configs, trust_pickle=args.trust_pickle)
    args.tokenizer = args.tokenizer or folder / R.TOKENIZER_SUBDIR
    return R.licences_section(folder)


def parse_args(argv: list[str] | None):
    p = _Parser(prog="build_engines.py", description="Build a ReWaS engine directory (ONNX, TensorRT FP16, manifest).")
    p.add_argument("--checkpoints", type=Path, help="canonical checkpoint folder (training.import_checkpoints output)")
    p.add_argument("--config", help="preset for --random-weights: tiny or rewas-m")
    p.add_argument("--random-weights", action="store_true", help="random weights of --config (tests, benchmarks)")
    p.add_argument("--tokenizer", type=Path, help="RoBERTa tokenizer folder (tokenizer.json, or vocab.json + merges.txt)")
    p.add_argument("--out", type=Path, default=Path("engines"), help="engine directory (default: engines/)")
    p.add_argument("--name", help="model name recorded in the manifest (default: the preset the configs match, "
                                  "else 'custom')")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights and test inputs")
    p.add_argument("--force", action="store_true", help="rebuild every graph even if unchanged")
    p.add_argument("--no-tensorrt", action="store_true", help="write ONNX only, even where TensorRT is available")
    p.add_argument("--no-fp16-check", action="store_true", help="skip the FP16 analysis (no FP32 layers recorded)")
    p.add_argument("--headroom", type=float, default=4.0, help="FP16 check: activations must stay below 65504/headroom")
    p.add_argument("--tolerance", type=float, default=1e-4, help="ONNX vs PyTorch, relative to max|output|")
    p.add_argument("--engine-tolerance", type=float, default=2e-2, help="TensorRT FP16 vs ONNX Runtime, relative")
    p.add_argument("--int8", default="", metavar="GRAPHS",
                   help="also write opt-in INT8 variants of these graphs for the CPU (synchformer,unet_adapter)")
    p.add_argument("--int8-mode", choices=("dynamic", "static"), default="dynamic",
                   help="INT8: dynamic (weights only calibrated-free) or static QDQ calibrated on generated inputs")
    p.add_argument("--sampling", nargs=3, metavar=("STEPS", "GUIDANCE", "ETA"),
                   help="recommended sampling written into the manifest (default: the original's "
                        "DDIM 200 steps, guidance 3, eta 1); rewas-rt uses it unless overridden")
    p.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="recommended sampler written into the manifest (default: none recorded = DDIM, the original's)")
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("SIGMA_LO", "SIGMA_HI"), default=None,
                   help="recommended guidance interval written into the manifest (default: guidance at every step)")
    p.add_argument("--unconditional-hint", choices=UNCONDITIONAL_HINTS, default="zeros",
                   help="hint of the guidance's unconditional branch: zeros (the original's) or same (the "
                        "conditional branch's: guidance then amplifies the text only)")
    p.add_argument("--workspace-gib", type=float, default=None, help="TensorRT builder workspace limit")
    p.add_argument("--trt-typing", choices=("strong", "weak"), default="strong",
                   help="strong (default; TensorRT 10 and 11): engines from the FP16 graphs; weak (TensorRT 10 only): "
                        "the FP32 graphs with the FP16 flag and FP32 pins")
    r = p.add_argument_group("the released model (export/release.py)")
    r.add_argument("--release", action="store_true",
                   help="download the released files that are missing, import them, build (see README)")
    r.add_argument("--dir", type=Path, default=None, help="release folder (default: ~/.cache/rewas-rt/release)")
    r.add_argument("--configs", type=Path, help="JSON {component: config} for other sizes than rewas-m")
    r.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling of release checkpoints that are not plain tensor pickles")
    args = p.parse_args(argv)
    if args.int8:
        from export.quantize import parse_graphs

        try:
            args.int8 = parse_graphs(args.int8)
        except ValueError as e:
            p.error(str(e))
    else:
        args.int8 = []
    args.sampling_defaults = ()
    if args.sampling:
        try:
            steps, guidance, eta = int(args.sampling[0]), float(args.sampling[1]), float(args.sampling[2])
        except ValueError:
            p.error(f"--sampling {' '.join(args.sampling)}: STEPS (integer) GUIDANCE ETA (numbers)")
        if not (1 <= steps <= 1000 and guidance >= 0 and 0 <= eta <= 1):
            p.error("--sampling: STEPS in 1..1000, GUIDANCE >= 0, ETA in [0, 1]")
        args.sampling_defaults = (steps, eta, guidance)  # scheduler_section's order
    if args.guidance_interval is not None:
        from rewas_rt.guidance import check_interval

        try:
            check_interval(args.guidance_interval)
        except ValueError as e:
            p.error(f"--guidance-interval: {e}")
    # The options that shape the manifest's recommendation and the INT8 variants, for the recorded command.
    shaping = ["--sampling", *args.sampling] if args.sampling else []
    shaping += ["--sampler", args.sampler] if args.sampler else []
    shaping += ["--guidance-interval", *map(str, args.guidance_interval)] if args.guidance_interval else []
    shaping += ["--unconditional-hint", args.unconditional_hint] if args.unconditional_hint != "zeros" else []
    shaping += ["--int8", ",".join(args.int8), "--int8-mode", args.int8_mode] if args.int8 else []
    if args.release:
        if args.checkpoints or args.random_weights or args.config:
            p.error("--release builds the released model: not with --checkpoints, --config or --random-weights")
        if args.tokenizer is not None and not args.tokenizer.is_dir():
            p.error(f"--tokenizer {args.tokenizer}: no such folder")
        words = ["python", "export/build_engines.py", "--release"]
        words += ["--dir", str(args.dir)] if args.dir else []
        words += ["--configs", str(args.configs)] if args.configs else []
        args.command_line = shlex.join(words + shaping + ["--out", str(args.out)])
        return args
    if args.dir or args.configs or args.trust_pickle:
        p.error("--dir, --configs and --trust-pickle go with --release")
    if args.checkpoints and args.random_weights:
        p.error("use either --checkpoints DIR or --config NAME --random-weights, not both")
    if args.checkpoints and args.config:
        p.error("--config goes with --random-weights; with --checkpoints the configs come from the checkpoint folder")
    if not args.checkpoints:
        if not args.random_weights:
            p.error("give --checkpoints DIR, or --config NAME --random-weights")
        from training.models import presets

        args.config = args.config or "tiny"
        if args.config not in presets.PRESETS:
            p.error(f"unknown --config {args.config!r} (known: {', '.join(presets.PRESETS)})")
        args.name = args.name or args.config
    if args.checkpoints is not None and not args.checkpoints.is_dir():
        p.error(f"--checkpoints {args.checkpoints}: no such folder")
    if args.checkpoints and args.tokenizer is None and (args.checkpoints / M.TOKENIZER_NAME).is_file():
        args.tokenizer = args.checkpoints  # the trainers' --export-dir puts tokenizer.json there
    if args.checkpoints and args.tokenizer is None:
        p.error("--tokenizer DIR is required with --checkpoints unless the folder holds tokenizer.json "
                "(the RoBERTa tokenizer folder: tokenizer.json, or vocab.json + merges.txt)")
    if args.tokenizer is not None and not args.tokenizer.is_dir():
        p.error(f"--tokenizer {args.tokenizer}: no such folder")
    words = ["python", "export/build_engines.py"]
    if args.checkpoints:
        words += ["--checkpoints", str(args.checkpoints)]
    else:
        words += ["--config", args.config, "--random-weights"] + (["--seed", str(args.seed)] if args.seed else [])
    if args.tokenizer:
        words += ["--tokenizer", str(args.tokenizer)]
    args.command_line = shlex.join(words + shaping + ["--out", str(args.out)])
    return args


@cli_main
def main(argv: list[str] | None = None) -> int:
    # Interrupted or failed, the previous manifest (if any) is unchanged: it is written last.
    build(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
