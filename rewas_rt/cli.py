"""The `rewas-rt` command line: `infer` (video + prompt -> sound) and `info`."""
from __future__ import annotations

import argparse
import re
import dataclasses
import logging
import os
import secrets
import sys
import warnings
from pathlib import Path

from rewas_rt import __version__
from rewas_rt import constants as C
from rewas_rt.atomic import atomic_paths
from rewas_rt.errors import OutputError, RewasError, cli_main
from rewas_rt.options import OPTIONS, sampling_settings



def _say(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr)


class _Progress:
    """A one-line progress bar on stderr (only on a terminal)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()

    def __call__(self, done: int, total: int, label: str = "") -> None:
        if not self.enabled:
            return
        width = 30
        filled = width * done // total
        label = f" ({label})" if label else ""
        print(f"\rsampling [{'#' * filled}{'.' * (width - filled)}] {done}/{total} steps{label}", end="",
              file=sys.stderr)
        if done == total:
            print(file=sys.stderr)


def _check_writable(path: Path) -> None:
    """Fail before the expensive work when an output cannot be written."""
    parent = path.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {path}: permission denied")


def _numbered(path: Path, index: int, count: int) -> Path:
    return path if count == 1 else path.with_name(f"{path.stem}.{index}{path.suffix}")


def _clip_arguments(p: argparse.ArgumentParser) -> None:
    """Which part of the video gets sound (rewas_rt/windows.py: longer than 5.12 s = several windows)."""
    from rewas_rt.windows import WindowOptions

    limit = WindowOptions().max_duration
    p.add_argument("--start", type=OPTIONS["start"].arg_type(), default=0.0,
                   help="start of the clip in seconds (default 0)")
    p.add_argument("--duration", type=OPTIONS["duration"].arg_type(), default=None, metavar="SECONDS|full",
                   help=OPTIONS["duration"].help)
    p.add_argument("--max-duration", type=float, default=limit,
                   help=f"refuse clips longer than this many seconds (default {limit:g})")
    p.add_argument("--join", choices=("repaint", "crossfade"), default="repaint",
                   help="how windows join: the overlap continues the previous window (default), or plain crossfade")


def _infer(args: argparse.Namespace) -> int:
    from rewas_rt.audio import mux, write_wav
    from rewas_rt.energy_control import curve_from_audio, load_curve, plot_curve, pyplot, write_curve_csv
    from rewas_rt.options import int8_graphs
    from rewas_rt.pipeline import Pipeline, VideoRequest, plan_clip
    from rewas_rt.video import load_video
    from rewas_rt.windows import WindowOptions

    video_path = Path(args.video)
    out = Path(args.output) if args.output else video_path.with_name(video_path.stem + ".rewas.wav")
    outputs = [_numbered(out, i, args.candidates) for i in range(args.candidates)]
    if args.mux:
        outputs += [_numbered(Path(args.mux), i, args.candidates) for i in range(args.candidates)]
    for extra in (args.write_energy, args.plot_energy):
        if extra:
            outputs.append(Path(extra))
    for p in outputs:
        _check_writable(p)
    if args.plot_energy:
        pyplot()  # fail now, not after generating, when matplotlib is missing
    options = _generation_options(args)  # every value was range-checked by argparse; this checks combinations

    windows = WindowOptions(max_duration=args.max_duration, join=args.join,
                            fade="equal-power" if args.join == "crossfade" else "linear")
    request = VideoRequest(prompt=args.prompt, seed=0, video=video_path, start=args.start, duration=args.duration)
    plan = plan_clip(request, windows)  # a bad video or clip fails here, before the engines load
    engines = _engines(args)
    pipe = Pipeline(engines, backend=args.backend, threads=args.threads, checksums=not args.skip_checksums,
                    int8=int8_graphs(args.int8))
    pipe.tokenizer.ids(args.prompt)  # reject a bad prompt before the expensive work
    if args.energy_curve:
        request.energy = load_curve(args.energy_curve, frames=None)
    elif args.energy_from_audio:
        request.energy = curve_from_audio(args.energy_from_audio, start=args.start, plan=plan if len(plan) > 1 else None)
    request.seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    # The model's recommended sampling (its manifest) for what the command line left unset
    # (rewas_rt.options.sampling_settings: another sampler gets its own default steps).
    options = dataclasses.replace(options, windows=windows, **sampling_settings(_sampling_given(args),
                                                                                pipe.dir.recommended))
    _say(args, f"generating {plan.frames / C.FPS:.2f} s ({len(plan)} window{'s' * (len(plan) > 1)}) "
               f"on {pipe.backend.name} with seed {request.seed} ({options.sampler}, {options.steps} steps)")
    result = pipe.generate_video(request, options, progress=_Progress(not args.quiet))

    # Every output of the request goes to a temporary name first; they are published together
    # only when all were written, so a failure at any step (e.g. a stream the container cannot
    # take) leaves no file of this request behind and no earlier file replaced.
    writers = []
    for i, wave in enumerate(result.waveforms):  # the whole clip: plan.frames video frames long
        writers.append((_numbered(out, i, args.candidates), lambda p, w=wave: write_wav(p, w)))
        if args.mux:
            writers.append((_numbered(Path(args.mux), i, args.candidates),
                            lambda p, w=wave: mux(video_path, w, C.SAMPLE_RATE, p, start=args.start)))
    if args.write_energy:
        writers.append((Path(args.write_energy), lambda p: write_curve_csv(p, result.energy)))
    if args.plot_energy:  # with the frames under the curve for one window; a longer clip's would not fit
        def _plot(p):
            frames = load_video(video_path, args.start).frames[: plan.frames] if len(plan) == 1 else None
            plot_curve(p, result.energy, frames)
        writers.append((Path(args.plot_energy), _plot))
    with atomic_paths([p for p, _ in writers]) as tmps:
        for tmp, (final, write) in zip(tmps, writers):
            try:
                write(tmp)
            except OutputError as e:  # name the file the user asked for, not the temporary one
                raise OutputError(str(e).replace(tmp, str(final))) from None
    for final, _ in writers:
        _say(args, f"wrote {final}")
    if args.verbose:
        for stage, secs in pipe.timings.items():
            _say(args, f"  {stage:14s} {secs * 1000:9.1f} ms")
        _say(args, f"  {'total':14s} {sum(pipe.timings.values()) * 1000:9.1f} ms")
    return 0


def _generation_options(args: argparse.Namespace):
    """The validated GenerationOptions of `infer`'s arguments (rewas_rt.options). Unset
    --steps/--guidance/--eta are checked at the released defaults here and replaced by the
    engine directory's recommendation once it is open."""
    from rewas_rt.options import GenerationOptions, energy_edit

    edit = energy_edit(args.energy_scale, args.energy_offset, *(args.energy_clip or (None, None)))
    return GenerationOptions(**sampling_settings(_sampling_given(args)), candidates=args.candidates,
                             hint_from_mean=args.hint_mean, energy_edit=edit)


def _sampling_given(args: argparse.Namespace) -> dict:
    """The sampling flags as given (None: unset, the model's recommendation applies)."""
    return {k: getattr(args, k) for k in ("sampler", "steps", "guidance", "eta", "guidance_interval")}


def _engines(args: argparse.Namespace) -> Path:
    """The engine directory to use (``rewas_rt.builtin.resolve_engines``); says so when it is the built-in one."""
    from rewas_rt.builtin import BUILTIN_NOTE, demo_engine_dir, resolve_engines

    engines, why = resolve_engines(args.engines)
    if engines == demo_engine_dir():
        if not (engines / "manifest.json").is_file():
            raise RewasError(f"the built-in demo model is missing from this installation ({engines}); "
                             "reinstall rewas-rt or pass --engines DIR")
        if why == "built-in":
            _say(args, BUILTIN_NOTE)
    return engines


def _info(args: argparse.Namespace) -> int:
    from rewas_rt.backends import backend_status
    from rewas_rt.manifest import open_engine_dir

    print(f"rewas-rt {__version__}")
    print(f"audio: {C.SAMPLE_RATE} Hz, {C.N_MELS} mel bins, hop {C.HOP}, window {C.WINDOW_SECONDS} s")
    print(f"video: {C.FPS} fps, {C.FRAMES} frames, {C.SEGMENTS} segments of {C.SEGMENT_LEN} frames")
    print(f"released model's sampling: DDIM {C.DDIM_STEPS} steps, guidance {C.GUIDANCE}, eta {C.ETA}")
    print("backends:")
    for name, (ok, reason) in backend_status().items():
        print(f"  {name:22s} {'yes' if ok else 'no '}  {reason}")
    from rewas_rt.builtin import demo_engine_dir, resolve_engines

    demo = demo_engine_dir()
    if (demo / "manifest.json").is_file():
        size = sum(f.stat().st_size for f in demo.iterdir() if f.is_file())
        print(f"built-in: demo model in {demo} ({size / 2**20:.1f} MiB; --engines demo)")
    else:
        print(f"built-in: demo model missing from this installation ({demo})")
    engines, why = resolve_engines(args.engines)
    if not (engines / "manifest.json").is_file():
        print(f"engines: none in {engines} (build them: python export/build_engines.py --out {engines})")
        print(RELEASE_HINT)
        return 0
    d = open_engine_dir(engines, checksums=False)
    m = d.manifest
    s = d.sampling_defaults
    print(f"engines: {engines} [{why}] (model {m.model.name}, built {m.created}; "
          f"sampling DDIM {s['steps']} steps, guidance {s['guidance']:g}, eta {s['eta']:g})")
    for name, g in m.graphs.items():
        e = g.engine
        plan = (f"TensorRT {e.precision}" + (f" ({e.typing}ly typed)" if e.typing else "")) if e \
            else "no TensorRT engine"
        fp16 = " + FP16 graph" if g.fp16_onnx else ""
        print(f"  {name:13s} {g.onnx.bytes / 2**20:9.1f} MiB onnx{fp16}; {plan}")
    if m.model.name != "rewas-m":
        print(RELEASE_HINT)
    return 0


RELEASE_HINT = ("released model (rewas-m): not in use; get it with `python export/build_engines.py --release "
                "--out engines/rewas-m` (a ≈ 10 GB download, ≈ 22 GB of disk; non-commercial licences; README "
                "\"Use the released model\"), then --engines engines/rewas-m")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one `error:` line (exit 2), like every other error of the CLI."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def _opt(name: str) -> dict:
    """argparse keywords of an option of rewas_rt.options: its parser (type and range) and help."""
    o = OPTIONS[name]
    return {"type": o.arg_type(), "default": o.default, "help": o.help}


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rewas-rt", description="ReWaS: sound for a silent video from a text prompt.")
    p.add_argument("--version", action="version", version=f"rewas-rt {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    common = _Parser(add_help=False)
    common.add_argument("--engines", help="engine directory, or 'demo' for the built-in demo model (default: "
                        "$REWAS_ENGINES, else ./engines if it has a manifest.json, else the built-in demo model)")
    common.add_argument("-v", "--verbose", action="store_true", help="log the backend choice and per-stage timings")
    common.add_argument("-q", "--quiet", action="store_true", help="print errors only")

    inf = sub.add_parser("infer", parents=[common], help="generate sound for a video")
    inf.add_argument("video")
    inf.add_argument("prompt")
    inf.add_argument("-o", "--output", help="WAV to write (default: VIDEO.rewas.wav beside the video)")
    inf.add_argument("--mux", metavar="OUT", help="also write the video with the generated track (.mp4/.mov/.mkv)")
    _clip_arguments(inf)
    inf.add_argument("--sampler", **{**_opt("sampler"), "default": None})
    for name in ("steps", "guidance", "eta"):  # default: the engine directory's manifest
        inf.add_argument(f"--{name}", **{**_opt(name), "default": None,
                                         "help": re.sub(r" \(default [^)]*\)", "", _opt(name)["help"]) + " (default: the model's manifest; released model "
                                                 f"{ {'steps': C.DDIM_STEPS, 'guidance': C.GUIDANCE, 'eta': C.ETA}[name]})"})
    inf.add_argument("--guidance-interval", type=OPTIONS["guidance_interval_low"].arg_type("guidance_interval"),
                     nargs=2, metavar=("SIGMA_LO", "SIGMA_HI"),
                     help="apply guidance only at noise levels sigma in (LO, HI], one model branch elsewhere "
                          "(sigma = sqrt((1-abar)/abar): 0.055 at t=1 … 81 at t=996; default: everywhere)")
    inf.add_argument("--seed", **_opt("seed"))
    inf.add_argument("--candidates", **_opt("candidates"))  # files numbered .0, .1, …
    inf.add_argument("--backend", default="auto", help="auto, tensorrt, onnxruntime-{tensorrt,cuda,cpu}")
    inf.add_argument("--threads", **_opt("threads"))
    inf.add_argument("--int8", metavar="GRAPHS", **_opt("int8"))
    inf.add_argument("--skip-checksums", action="store_true", help="check engine file sizes only, not sha256")
    e = inf.add_argument_group("energy control (units: mean log-mel; see rewas_rt/energy_control.py)")
    e.add_argument("--energy-scale", **_opt("energy_scale"))
    e.add_argument("--energy-offset", **_opt("energy_offset"))
    e.add_argument("--energy-clip", type=OPTIONS["energy_clip_min"].arg_type("energy_clip"), nargs=2, metavar=("MIN", "MAX"),
                   help=f"clip the curve (each in [-{OPTIONS['energy_clip_min'].high:g}, "
                        f"{OPTIONS['energy_clip_min'].high:g}])")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--energy-curve", metavar="FILE", help="use this curve (.csv/.npy) instead of the video's")
    src.add_argument("--energy-from-audio", metavar="FILE", help="use the energy of this audio file")
    e.add_argument("--write-energy", metavar="CSV", help="write the curve used")
    e.add_argument("--plot-energy", metavar="PNG", help="plot the curve under the video's frames")
    e.add_argument("--hint-mean", action="store_true", help="posterior mean for the hint latent (the original samples)")
    inf.set_defaults(func=_infer)

    info = sub.add_parser("info", parents=[common], help="engine directory, backends and model constants")
    info.set_defaults(func=_info)

    from rewas_rt.serve.command import add_parser as add_serve_parser  # no Ray import until it runs

    add_serve_parser(sub, common)
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")

    def show_warning(message, category, filename, lineno, file=None, line=None):
        if not args.quiet:
            print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show_warning
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
