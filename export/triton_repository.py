"""Write an NVIDIA Triton model repository from an engine directory::

    python export/triton_repository.py --engines engines/rewas-m --out triton-repo

One Triton model per graph, named after it: ``tensorrt_plan`` serving ``<graph>.plan``
when the directory has TensorRT engines, else ``onnxruntime_onnx`` serving the ONNX
graph (``--platform`` forces one; ``--precision``: the FP16 graph with FP32 islands on
GPU instances when the directory has it, as the runtime's ONNX Runtime backend chooses). Each ``config.pbtxt`` is written from the graph
contract in ``rewas_rt.graphs``: dims without the batch axis (``rewas_rt.triton.triton_dims``),
``max_batch_size`` = the batch axis's profile maximum, dynamic batching with the
profile's opt and max as preferred sizes, and a GPU instance group.

Plus the Python-backend model ``rewas`` (``rewas_rt.triton.RewasModel``): the whole
pipeline, calling the graph models through BLS. Its version folder holds a copy of the
``rewas_rt`` package, the manifest and the tokenizer, so the repository is
self-contained; the Triton container needs the runtime's pure-Python dependencies
(``pip install numpy scipy av soundfile tokenizers safetensors``) — see REPO/README.md.

The repository is written into a temporary folder beside ``--out`` and renamed into
place at the end: a failed run leaves no half-written repository.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rewas_rt
from rewas_rt import manifest as M
from rewas_rt.errors import OutputError, RewasError, cli_main
from rewas_rt.graphs import DYNAMIC_AXES, GRAPHS, GraphSpec, TensorSpec
from rewas_rt.triton import MODEL_INPUTS, MODEL_OUTPUTS, OPTION_KEYS, PIPELINE_MODEL, TRITON_DTYPES, triton_dims

PLATFORMS = ("tensorrt_plan", "onnxruntime_onnx")
MODEL_FILES = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx"}
RUNTIME_DEPS = "numpy scipy av soundfile tokenizers safetensors"
# How long a graph model's dynamic batcher waits for more requests to fill a batch.
QUEUE_DELAY_US = 100


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        self.exit(2, f"error: {message} (see --help)\n")


# ------------------------------------------------------------------------------ config.pbtxt


def _tensor_block(name: str, dtype: str, dims: list[int], reshape: list[int] | None = None,
                  optional: bool = False) -> str:
    lines = [f'    name: "{name}"', f"    data_type: {TRITON_DTYPES[dtype]}", f"    dims: [ {', '.join(map(str, dims))} ]"]
    if reshape is not None:
        lines.append(f"    reshape: {{ shape: [{''.join(f' {d},' for d in reshape).rstrip(',')} ] }}")
    if optional:
        lines.append("    optional: true")
    return "  {\n" + "\n".join(lines) + "\n  }"


def _io(kind: str, blocks: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(blocks) + "\n]\n"


def batch_axis(spec: GraphSpec) -> str:
    """The dynamic axis every tensor of the graph starts with (Triton's batch dimension)."""
    axes = {t.shape[0] for t in spec.inputs + spec.outputs}
    if len(axes) != 1 or next(iter(axes)) not in DYNAMIC_AXES:
        raise ValueError(f"graph {spec.name}: tensors do not share one dynamic first axis ({sorted(map(str, axes))})")
    return next(iter(axes))


def graph_config(spec: GraphSpec, platform: str, instances: int = 1, kind: str = "KIND_GPU") -> str:
    """config.pbtxt of one graph model; ``spec`` resolved (model dims are ints)."""
    axis = batch_axis(spec)
    _, opt, top = DYNAMIC_AXES[axis]
    preferred = sorted({max(opt, 1), top})

    def block(t: TensorSpec) -> str:
        dims, reshape = triton_dims(t)
        return _tensor_block(t.name, t.dtype, dims, reshape)

    return (
        f'# {spec.name}: {spec.doc}\n'
        f'# Written by export/triton_repository.py from rewas_rt/graphs.py; the batch axis is "{axis}".\n'
        f'name: "{spec.name}"\n'
        f'platform: "{platform}"\n'
        f"max_batch_size: {top}\n"
        + _io("input", [block(t) for t in spec.inputs])
        + _io("output", [block(t) for t in spec.outputs])
        + "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n"
        "}\n"
        f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]\n"
    )


def pipeline_config(instances: int = 1) -> str:
    """config.pbtxt of the ``rewas`` Python-backend model (inputs/outputs from rewas_rt.triton)."""
    inputs = [_tensor_block(n, dtype, dims, optional=opt) for n, (dtype, dims, opt, _) in MODEL_INPUTS.items()]
    outputs = [_tensor_block(n, dtype, dims) for n, (dtype, dims, _) in MODEL_OUTPUTS.items()]
    doc = "".join(f"#   {n:12s} {what}{' (optional)' if opt else ''}\n" for n, (_, _, opt, what) in MODEL_INPUTS.items())
    doc += "".join(f"#   {n:12s} {what}\n" for n, (_, _, what) in MODEL_OUTPUTS.items())
    models = json.dumps({g: g for g in GRAPHS})
    return (
        "# The ReWaS pipeline (rewas_rt.pipeline) calling the graph models through BLS.\n"
        "# Inputs / outputs:\n" + doc
        + f'name: "{PIPELINE_MODEL}"\n'
        'backend: "python"\n'
        "max_batch_size: 0\n"
        + _io("input", inputs)
        + _io("output", outputs)
        # The loop is NumPy on the CPU; the graphs' models hold the GPU.
        + f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]\n"
        + "parameters {\n"
        '  key: "graph_models"\n'
        f"  value: {{ string_value: {json.dumps(models)} }}\n"
        "}\n"
    )


SHIM = '''"""Triton Python-backend entry point of the ReWaS pipeline (written by export/triton_repository.py).

The code is rewas_rt.triton.RewasModel from the copy of rewas_rt beside this file;
manifest.json and tokenizer.json beside it come from the engine directory.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # this copy of rewas_rt, not another one installed in the container

from rewas_rt.triton import RewasModel  # noqa: E402


class TritonPythonModel(RewasModel):
    directory = HERE
'''


def readme(platform: str, m: dict, out: Path) -> str:
    engines = [g["engine"] for g in m["graphs"].values() if g.get("engine")]
    if platform == "tensorrt_plan" and engines:
        trt = engines[0]["tensorrt_version"]
        gpu = f"{engines[0]['gpu']} (compute capability {engines[0]['compute_capability']})"
        which = (f"The graph models are TensorRT {trt} engines built for {gpu}: use the Triton release whose "
                 f"TensorRT is {trt} (NVIDIA's framework support matrix lists it per release) on that GPU type.")
    else:
        which = "The graph models are ONNX graphs run by Triton's onnxruntime backend (any recent release)."
    return f"""# Triton model repository for ReWaS

Written by `python export/triton_repository.py` from an engine directory (model
`{m.get('model', {}).get('name', '?')}`). Models: {', '.join(GRAPHS)} (one per graph,
`{platform}`) and `{PIPELINE_MODEL}` (Python backend: the whole pipeline through BLS).

{which}

Run it (host port 8000 HTTP, 8001 gRPC, 8002 metrics; `YY.MM` is the Triton release):

    docker run --gpus all --rm --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 \\
      -v "$(realpath {out})":/models nvcr.io/nvidia/tritonserver:YY.MM-py3 \\
      bash -c "pip install -q {RUNTIME_DEPS} && tritonserver --model-repository=/models"

Call `{PIPELINE_MODEL}` with PROMPT (BYTES [1]) and VIDEO (BYTES [1], a video file; optionally
START and DURATION in seconds, FP32 [1]) or FRAMES or ENERGY, and optionally SEED (INT64 [1])
and OPTIONS (BYTES [1], a JSON object: {', '.join(OPTION_KEYS)}). It returns WAVEFORM
(FP32 [candidates, samples], 16 kHz, as long as the clip), ENERGY_USED and
SEED_USED. See `{PIPELINE_MODEL}/config.pbtxt`.
"""


# ------------------------------------------------------------------------------ writing


def _place(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (engine files are GBs), copying across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _onnx_files(m: dict, graph: str, precision: str, kind: str) -> tuple[str, str | None, str]:
    """(graph file, its external-data file or None, precision) an ONNX model serves, as the
    runtime's ONNX Runtime backend chooses: "auto" is the FP16 graph (FP32 islands) on a GPU
    when the directory has it, else FP32."""
    g = m["graphs"][graph]
    fp16 = g.get("fp16_onnx")
    if precision == "fp16" and not fp16:
        raise RewasError(f"graph {graph} has no FP16 ONNX graph in this engine directory: use --precision fp32, "
                         "or rebuild it with export/build_engines.py")
    if precision == "fp16" or (precision == "auto" and fp16 and kind == "KIND_GPU"):
        return fp16["onnx"]["path"], (fp16.get("external_data") or {}).get("path"), "fp16"
    return g["onnx"]["path"], (g.get("external_data") or {}).get("path"), "fp32"


def write_repository(engines: Path, out: Path, *, platform: str | None = None, precision: str = "auto",
                     instances: int = 1, pipeline_instances: int = 1, kind: str = "KIND_GPU", force: bool = False,
                     checksums: bool = True) -> Path:
    """Write the repository for the engine directory ``engines`` at ``out``; returns ``out``."""
    d = M.open_engine_dir(engines, backend="onnx", checksums=checksums)
    m = json.loads((d.root / M.MANIFEST_NAME).read_text(encoding="utf-8"))  # verified above: the file facts
    if platform is None:
        platform = "tensorrt_plan" if d.has_engines else "onnxruntime_onnx"
    if platform == "tensorrt_plan" and not d.has_engines:
        raise RewasError(f"{engines} has no TensorRT engines for every graph: use --platform onnxruntime_onnx, "
                         "or build the engines on the GPU machine (export/build_engines.py with the same --out)")
    if out.exists() and not force:
        raise OutputError(f"{out} already exists (use --force to replace it)")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {out}: directory {parent} does not exist")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    except OSError as e:
        raise OutputError(f"cannot write {out}: {e.strerror or e}") from None
    try:
        for name in GRAPHS:
            files = d.graph(name)
            version = tmp / name / "1"
            version.mkdir(parents=True)
            if platform == "tensorrt_plan":
                _place(files.plan, version / MODEL_FILES[platform])
            else:
                graph_file, data_file, _ = _onnx_files(m, name, precision, kind)
                _place(d.root / graph_file, version / MODEL_FILES[platform])
                if data_file is not None:  # the graph names its weights file by this relative name
                    _place(d.root / data_file, version / Path(data_file).name)
            spec = GRAPHS[name].resolved(feature_dim=d.feature_dim)
            (tmp / name / "config.pbtxt").write_text(graph_config(spec, platform, instances, kind))
        version = tmp / PIPELINE_MODEL / "1"
        version.mkdir(parents=True)
        (tmp / PIPELINE_MODEL / "config.pbtxt").write_text(pipeline_config(pipeline_instances))
        (version / "model.py").write_text(SHIM)
        shutil.copytree(Path(rewas_rt.__file__).parent, version / "rewas_rt",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy2(d.root / M.MANIFEST_NAME, version / M.MANIFEST_NAME)
        shutil.copy2(d.tokenizer_path, version / d.tokenizer_path.name)
        (tmp / "README.md").write_text(readme(platform, m, out))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(prog="python export/triton_repository.py",
                description="Write a Triton model repository (graph models + the `rewas` BLS pipeline model) "
                            "from an engine directory.")
    p.add_argument("--engines", type=Path, required=True, help="engine directory (export/build_engines.py --out)")
    p.add_argument("--out", type=Path, required=True, help="model repository to write")
    p.add_argument("--platform", choices=PLATFORMS,
                   help="graph models' platform (default: tensorrt_plan when the directory has engines)")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16"), default="auto",
                   help="ONNX models: the FP32 graphs or the FP16 ones with FP32 islands (default auto: FP16 on "
                        "GPU instances when the directory has them, as the runtime chooses)")
    p.add_argument("--instances", type=int, default=1, help="instances of each graph model (default 1)")
    p.add_argument("--pipeline-instances", type=int, default=1,
                   help="instances of the rewas model: requests it runs at once (default 1)")
    p.add_argument("--cpu", action="store_true", help="graph models on the CPU (KIND_CPU), e.g. to try a CPU-only Triton")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--skip-checksums", action="store_true", help="check engine file sizes only, not sha256")
    args = p.parse_args(argv)
    for flag in ("instances", "pipeline_instances"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


@cli_main
def main(argv: list[str] | None = None) -> int:
    # Interrupted or failed, nothing is written: the repository is renamed into place last.
    args = parse_args(argv)
    out = write_repository(args.engines, args.out, platform=args.platform, precision=args.precision,
                           instances=args.instances, pipeline_instances=args.pipeline_instances,
                           kind="KIND_CPU" if args.cpu else "KIND_GPU", force=args.force,
                           checksums=not args.skip_checksums)
    print(f"wrote {out} (see {out / 'README.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
