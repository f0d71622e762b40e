"""Regenerate the built-in demo model end to end on a CPU: data → every stage → engine directory.

    python -m training.demo --out DIR            # all stages, one at a time
    python -m training.demo --out DIR --jobs 2   # two independent stages at a time

``DIR/data``: the synthetic set (``training.synthetic.generate_splits``: 20 / 3 / 5 clips per
class for train / val / test, seed 0). ``DIR/runs/<stage>``: one run folder per stage, each
trained by its own trainer with its ``training/configs/<trainer>_demo.json``:

======== ============================ ===========================================
stage    trainer                      needs
======== ============================ ===========================================
vae      ``training.train_vae``       data
clap     ``training.train_clap``      data
video    ``training.train_video``     data (Synchformer + φ together)
vocoder  ``training.train_vocoder``   data
unet     ``training.train_unet``      vae, clap
adapter  ``training.train_adapter``   unet, vae, clap (+ every other component, to export)
======== ============================ ===========================================

``DIR/checkpoints``: the canonical folder the stages fill in as they finish (and
``tokenizer.json``); ``DIR/engines``: ``export/build_engines.py --checkpoints DIR/checkpoints``
with the demo's sampling defaults written into the manifest.

Interrupted? Run the same command again: finished stages (``result.json`` saying complete) are
skipped and an unfinished one resumes from its newest checkpoint (``trainlib`` resume:
bit-for-bit the same as an uninterrupted run). Deterministic: every stage is seeded and runs
on one CPU thread; the step counts are in the configs. ``--max-minutes`` caps each stage's
wall time as a safety net — a stage stopped by it is *not* complete, and the next run resumes it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from training.checkpoints import COMPONENTS

PER_CLASS = {"train": 20, "val": 3, "test": 5}
STAGES: dict[str, dict] = {
    "vae": {"module": "training.train_vae", "needs": [], "components": {"vae": "final"}},
    "clap": {"module": "training.train_clap", "needs": [], "components": {"clap_text": "step"},
             "files": {"tokenizer.json": "run"}},
    "video": {"module": "training.train_video", "needs": [], "components": {"phi": "step", "synchformer": "step"}},
    "vocoder": {"module": "training.train_vocoder", "needs": [], "components": {"vocoder": "step"}},
    "unet": {"module": "training.train_unet", "needs": ["vae", "clap"], "components": {"unet": "step"},
             "checkpoints": True},
    "adapter": {"module": "training.train_adapter", "needs": ["unet", "vae", "clap", "video", "vocoder"],
                "components": {"adapter": "step"}, "checkpoints": True},
}
# Recommended sampling of the demo model, written into its manifest (rewas-rt uses it unless
# overridden). Fewer steps than the released 200 (CPU time; see training/DEMO.md for what was measured).
SAMPLING = {"sampler": "dpmpp-2m-sde", "steps": 15, "guidance": 3.0, "eta": 1.0, "unconditional_hint": "same"}


def build_command(ckpt: Path, engines: Path) -> list[str]:
    """export/build_engines.py for the demo's engine directory, its recommended sampling in the manifest."""
    s = SAMPLING
    return [sys.executable, str(Path(__file__).resolve().parents[1] / "export" / "build_engines.py"),
            "--checkpoints", str(ckpt), "--out", str(engines), "--name", "demo", "--no-tensorrt",
            "--sampling", str(s["steps"]), str(s["guidance"]), str(s["eta"]), "--sampler", s["sampler"],
            "--unconditional-hint", s["unconditional_hint"]]


def compare_with_builtin(engines: Path, builtin: Path | None = None) -> tuple[list[str], list[str]]:
    """(components whose trained weights are the built-in demo model's, those that differ), by the
    weight ids (SHA-256 of each component's safetensors) both manifests record."""
    from rewas_rt.builtin import demo_engine_dir
    from rewas_rt.manifest import read_manifest

    ours = read_manifest(engines).model.components
    theirs = read_manifest(builtin or demo_engine_dir()).model.components
    same = [c for c in ours if c in theirs and ours[c].weights == theirs[c].weights]
    return same, [c for c in ours if c not in same]


def stage_done(run: Path) -> bool:
    try:
        return bool(json.loads((run / "result.json").read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def last_step_folder(run: Path) -> Path:
    latest = run / "checkpoints" / "latest"
    return run / "checkpoints" / latest.read_text().strip()


def collect(stage: str, run: Path, ckpt: Path) -> None:
    """Copy a finished stage's components (and files) into the canonical folder."""
    spec = STAGES[stage]
    ckpt.mkdir(parents=True, exist_ok=True)
    for component, where in spec["components"].items():
        src = run / "final" if where == "final" else last_step_folder(run)
        for suffix in (".safetensors", ".json"):
            shutil.copyfile(src / f"{component}{suffix}", ckpt / f"{component}{suffix}")
    for name in spec.get("files", {}):
        shutil.copyfile(run / name, ckpt / name)


def command(stage: str, root: Path, extra: list[str]) -> list[str]:
    spec = STAGES[stage]
    run = root / "runs" / stage
    cmd = [sys.executable, "-m", spec["module"], "--config", "demo", "--data", str(root / "data" / "manifest.jsonl"),
           "--out", str(run), *extra]
    if spec.get("checkpoints"):
        cmd += ["--checkpoints", str(root / "checkpoints")]
    if (run / "checkpoints" / "latest").is_file():
        cmd += ["--resume"]
    return cmd


from rewas_rt.errors import cli_main  # noqa: E402


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for data, runs, checkpoints and engines")
    p.add_argument("--jobs", type=int, default=1, help="stages run at the same time (independent ones only)")
    p.add_argument("--max-minutes", type=float, default=0, help="wall-clock cap per stage (0: none)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset (default: all)")
    p.add_argument("--no-engines", action="store_true", help="stop after training (no export)")
    args = p.parse_args(argv)
    root = args.out.resolve()
    wanted = [s for s in args.stages.split(",") if s]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        print(f"error: unknown stage(s) {', '.join(unknown)} (known: {', '.join(STAGES)})", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    manifest = root / "data" / "manifest.jsonl"
    if not manifest.is_file():
        from training.synthetic import generate_splits

        print(f"data: {PER_CLASS} clips per class -> {manifest.parent}", flush=True)
        generate_splits(manifest.parent, PER_CLASS, seed=0)
    extra = ["--set", f"train.max_minutes={args.max_minutes}"] if args.max_minutes else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                      os.environ.get("PYTHONPATH")]))}
    ckpt = root / "checkpoints"
    done = {s for s in STAGES if stage_done(root / "runs" / s)}
    for s in done:
        collect(s, root / "runs" / s, ckpt)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    todo = [s for s in wanted if s not in done]
    while todo or running:
        for s, (proc, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[s]
            run = root / "runs" / s
            if proc.returncode != 0 or not stage_done(run):
                print(f"error: stage {s} did not finish (exit {proc.returncode}); see {run}/stage.log; "
                      "run the same command again to resume", file=sys.stderr)
                for other, (q, _) in running.items():
                    q.wait()
                return 1
            collect(s, run, ckpt)
            done.add(s)
            print(f"stage {s}: done in {time.perf_counter() - t0:.0f} s", flush=True)
        ready = [s for s in todo if all(n in done for n in STAGES[s]["needs"])]
        while ready and len(running) < max(1, args.jobs):
            s = ready.pop(0)
            todo.remove(s)
            run = root / "runs" / s
            run.mkdir(parents=True, exist_ok=True)
            cmd = command(s, root, extra)
            print(f"stage {s}: {' '.join(cmd[1:])}", flush=True)
            with open(run / "stage.log", "a") as log:
                running[s] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), time.perf_counter())
        if todo and not running:
            print(f"error: stages {', '.join(todo)} wait for stages not selected", file=sys.stderr)
            return 1
        time.sleep(2)
    missing = [c for c in COMPONENTS if not (ckpt / f"{c}.safetensors").is_file()]
    if args.no_engines or missing:
        if missing:
            print(f"trained so far; components still missing for an engine directory: {', '.join(missing)}")
        return 0
    engines = root / "engines"
    cmd = build_command(ckpt, engines)
    print(" ".join(cmd[1:]), flush=True)
    rc = subprocess.call(cmd, env=env)
    if rc:
        return rc
    print(f"demo model: {engines} ({time.perf_counter() - t_start:.0f} s in all)")
    try:
        same, differ = compare_with_builtin(engines)
    except Exception as e:  # noqa: BLE001 -- a report line, not a failure of the run
        print(f"not compared with the built-in demo model: {e}")
        return 0
    if differ:
        print(f"weights differ from the built-in demo model's (rewas_rt/demo_engines) in: {', '.join(differ)}"
              f"; the same in: {', '.join(same) or 'none'}")
    else:
        print(f"weights: all {len(same)} components identical to the built-in demo model's (rewas_rt/demo_engines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
