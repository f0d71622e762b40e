"""What the φ and adapter trainers share: configs, the optimisation loop, logs, checkpoints, resume.

Run folder (``--out``)::

    config.json                      the resolved training config
    log.jsonl                        one JSON object per log / validation / checkpoint event
    checkpoints/step_0000200/        <component>.safetensors + .json (canonical, save_component)
                                     training_state.pt (optimizer, scheduler, grad scaler, step,
                                     RNG states of torch / CUDA / numpy / python)
    checkpoints/latest               name of the newest step folder

Resume (``--resume``) loads the trained component from the newest (or the given) step folder
and the training state beside it, then continues at the next step. Every random draw of the
loop comes from the global torch RNG in the main process (no data-loader workers), seeded right
before the first step (so cache hits or misses during set-up change nothing), and validation
uses its own generators, so a resumed run continues bit-for-bit: 2k straight steps and k
(``train.stop_at``) + resume + k give identical parameters (tested). Keep ``train.steps`` when
resuming: the cosine schedule is laid out over it.

Mixed precision: ``train.precision`` = ``auto`` (bf16 autocast on a GPU that supports it, else
fp16 autocast with a GradScaler; fp32 on CPU), ``fp32``, ``bf16`` or ``fp16`` (fp16 always with a
GradScaler, whose state is part of the checkpoint). Parameters and optimizer state stay fp32.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rewas_rt.atomic import atomic_path, atomic_write_text
from rewas_rt.errors import ConfigError, MissingFileError
from training import config as config_types

CONFIG_DIR = Path(__file__).parent / "configs"
STATE_FILE = "training_state.pt"

def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def set_dotted(cfg: dict, assignment: str) -> None:
    """``a.b=VALUE``: VALUE parsed as JSON when it parses, else kept as a string."""
    if "=" not in assignment:
        raise ConfigError(f"--set needs KEY=VALUE, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {p} is not a section")
    node[parts[-1]] = value


def load_config(spec: str | None, trainer: str, schema: type) -> dict:
    """``spec`` is a JSON file or a preset name ("tiny" → configs/<trainer>_tiny.json), merged onto
    the defaults of ``schema`` (a ``training.config`` dataclass) and checked against it."""
    cfg = config_types.defaults(schema)
    where = "defaults"
    if spec:
        path = Path(spec)
        if not path.is_file():
            path = CONFIG_DIR / f"{trainer}_{spec.replace('-', '_')}.json"
        if not path.is_file():
            raise MissingFileError(f"config {spec!r}: no such file, and no {path}")
        try:
            over = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(over, dict):
            raise ConfigError(f"{path}: a config is a JSON object")
        cfg = deep_merge(cfg, over)
        where = str(path)
    return config_types.parse(schema, cfg, where)


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="tiny", help="JSON config file, or a preset name (tiny, rewas-m)")
    p.add_argument("--data", type=Path, help="manifest (.jsonl/.csv); overrides data.manifest")
    p.add_argument("--out", type=Path, required=True, help="run folder (logs, checkpoints)")
    p.add_argument("--checkpoints", type=Path, help="canonical checkpoint folder with the base components")
    p.add_argument("--random-weights", action="store_true", help="base components drawn at random (config.model)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: <checkpoints>/tokenizer.json)")
    p.add_argument("--cache-dir", type=Path, help="feature cache folder (default: <manifest folder>/cache)")
    p.add_argument("--export-dir", type=Path,
                   help="at the end, write a complete canonical folder (all 7 components, trained one included)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the newest checkpoint in --out (or from the given step folder)")
    p.add_argument("--steps", type=int, help="overrides train.steps")
    p.add_argument("--device", help="overrides train.device (cpu, cuda, cuda:1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config entry, e.g. --set optim.lr=1e-4 (repeatable)")


def trainer_main(argv: list[str] | None, trainer: str, doc: str, schema: type,
                 run: Callable[[dict, argparse.Namespace], dict], summary: Callable[[dict], str],
                 extra_args: Callable[[argparse.ArgumentParser], None] | None = None,
                 default_config: str | None = None) -> int:
    """Every trainer's command line: the common arguments (plus ``extra_args``), the resolved config,
    ``run(cfg, args)``, and one closing line: done (or stopped by the time budget), the step, the
    loss from first to last step and ``summary(result)``."""
    p = argparse.ArgumentParser(prog=f"python -m training.train_{trainer}", description=doc.split("\n\n")[0])
    add_common_args(p)
    if default_config:
        p.set_defaults(config=default_config)
    if extra_args:
        extra_args(p)
    args = p.parse_args(argv)
    result = run(resolve_config(args, trainer, schema), args)
    losses = (f", loss {result['first_loss']:.4f} -> {result['final_loss']:.4f}"
              if result.get("first_loss") is not None else "")
    state = "done" if result.get("complete", True) else "stopped (time budget; --resume continues)"
    tail = summary(result)
    print(f"{state}: step {result['step']}{losses}" + (f"; {tail}" if tail else ""))
    return 0


def resolve_config(args: argparse.Namespace, trainer: str, schema: type) -> dict:
    cfg = load_config(args.config, trainer, schema)
    for a in args.set:
        set_dotted(cfg, a)
    if args.data:
        cfg["data"]["manifest"] = str(args.data)
    if args.cache_dir:
        cfg["data"]["cache_dir"] = str(args.cache_dir)
    if args.steps is not None:
        cfg["train"]["steps"] = args.steps
    if args.device:
        cfg["train"]["device"] = args.device
    cfg = config_types.parse(schema, cfg, "config (after --set and options)")
    if not cfg["data"]["manifest"]:
        raise ConfigError("no data: pass --data MANIFEST (or set data.manifest)")
    if not cfg["data"]["cache_dir"]:
        cfg["data"]["cache_dir"] = str(Path(cfg["data"]["manifest"]).resolve().parent / "cache")
    return cfg


def setup_threads(cfg: dict) -> None:
    if cfg["train"].get("threads"):
        torch.set_num_threads(int(cfg["train"]["threads"]))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def precision_setup(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, use a GradScaler). ``auto``: bf16 on a GPU that has it,
    else fp16 with a GradScaler; fp32 on CPU. An explicit bf16/fp16 is honoured on CPU too
    (CPU autocast; mainly so the mixed-precision path can be tested without a GPU)."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"train.precision {precision!r}: auto, fp32, bf16 or fp16")
    if precision == "auto":
        if device.type != "cuda":
            return None, False
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp16": (torch.float16, True)}[precision]


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def lr_lambda(optim_cfg: dict, total_steps: int) -> Callable[[int], float]:
    warmup, schedule, floor = optim_cfg["warmup_steps"], optim_cfg["schedule"], optim_cfg["min_lr_ratio"]

    def f(step: int) -> float:  # step = optimizer steps taken so far
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return f


class JsonlLog:
    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Entries that may change between an interrupted run and its resumption.
RESUME_FREE = {"train.stop_at", "train.max_minutes", "train.log_every", "train.val_every", "train.ckpt_every", "train.keep_checkpoints",
               "train.device", "train.threads", "data.cache_dir", "data.memory_items"}


def config_changes(saved: dict, current: dict) -> list[str]:
    a, b = _flatten(saved), _flatten(current)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUME_FREE)


def find_checkpoint(out: Path, resume: str) -> Path:
    if resume != "latest":
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise MissingFileError(f"{path}: no {STATE_FILE}")
        return path
    latest = out / "checkpoints" / "latest"
    if not latest.is_file():
        raise MissingFileError(f"{out}: nothing to resume (no checkpoints/latest)")
    return out / "checkpoints" / latest.read_text().strip()


class Loop:
    """The optimisation loop around a trainable module.

    ``micro_step(step)`` returns the loss of one micro-batch (called ``grad_accum`` times per
    step, under autocast); ``validate(step)`` returns a dict of metrics; ``save(folder)`` writes
    the canonical component(s) of the trainable module; ``load(folder)`` reads them back.
    """

    def __init__(self, cfg: dict, out: Path, module: torch.nn.Module, params: list[torch.nn.Parameter],
                 device: torch.device, micro_step: Callable[[int], torch.Tensor],
                 validate: Callable[[int], dict], save: Callable[[Path], None], load: Callable[[Path], None],
                 log: Callable[[str], None] = print):
        self.cfg, self.out, self.module, self.params, self.device = cfg, Path(out), module, params, device
        self.micro_step, self.validate, self.save, self.load, self.print = micro_step, validate, save, load, log
        o, t = cfg["optim"], cfg["train"]
        self.optimizer = torch.optim.AdamW(params, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                                           weight_decay=o["weight_decay"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(o, t["steps"]))
        self.amp_dtype, use_scaler = precision_setup(t["precision"], device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        self.step = 0
        self.log = JsonlLog(self.out / "log.jsonl")
        self.history: list[dict] = []

    # --- checkpoints
    def checkpoint(self) -> Path:
        folder = self.out / "checkpoints" / f"step_{self.step:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        self.save(folder)
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "rng": rng_state(), "config": self.cfg}
        with atomic_path(folder / STATE_FILE) as tmp:
            torch.save(state, tmp)
        atomic_write_text(self.out / "checkpoints" / "latest", folder.name + "\n")  # last: the folder is complete
        keep = self.cfg["train"]["keep_checkpoints"]
        if keep and keep > 0:
            for old in sorted((self.out / "checkpoints").glob("step_*"))[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.log.write({"event": "checkpoint", "step": self.step, "path": str(folder)})
        return folder

    def resume(self, folder: Path) -> None:
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
        self.load(folder)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.step = state["step"]
        changed = config_changes(state["config"], self.cfg)
        if changed:
            self.print(f"note: resuming with a config that differs from the checkpoint's in {', '.join(changed)}")
        self.print(f"resumed from {folder} at step {self.step}")
        self.log.write({"event": "resume", "step": self.step, "path": str(folder)})

    # --- the loop
    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def run_validation(self) -> dict:
        self.module.eval()
        with torch.no_grad():
            metrics = self.validate(self.step)
        self.module.train()
        if metrics:
            record = {"event": "val", "step": self.step, **metrics}
            self.log.write(record)
            self.history.append(record)
            self.print(f"val step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    def train(self) -> dict:
        t = self.cfg["train"]
        steps, accum = t["steps"], t["grad_accum"]
        clip = self.cfg["optim"]["grad_clip"]
        self.module.train()
        if self.step == 0 and t["val_every"]:
            self.run_validation()
        window_loss, window_n, t_last, step_last = 0.0, 0, time.perf_counter(), self.step
        last_ckpt = None
        stop = min(steps, t.get("stop_at") or steps)
        deadline = time.monotonic() + 60 * t["max_minutes"] if t.get("max_minutes") else math.inf
        self.out_of_time = False
        while self.step < stop:
            if time.monotonic() > deadline:
                self.out_of_time = True
                self.print(f"time budget of {t['max_minutes']} min spent: stopping at step {self.step} of {steps}")
                self.log.write({"event": "out_of_time", "step": self.step})
                if last_ckpt is None or Path(last_ckpt).name != f"step_{self.step:07d}":
                    last_ckpt = self.checkpoint()
                break
            self.optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for _ in range(accum):
                with self._autocast():
                    loss = self.micro_step(self.step)
                self.scaler.scale(loss / accum).backward()
                total += float(loss.detach()) / accum
            if not math.isfinite(total):
                raise FloatingPointError(f"step {self.step + 1}: loss is {total}")
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip if clip else float("inf")))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            window_loss += total
            window_n += 1
            if self.step % t["log_every"] == 0 or self.step == steps:
                now = time.perf_counter()
                record = {"event": "train", "step": self.step, "loss": window_loss / window_n,
                          "last_loss": total, "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": grad_norm,
                          "it_s": (self.step - step_last) / max(now - t_last, 1e-9), "time": time.time()}
                self.log.write(record)
                self.history.append(record)
                self.print(f"step {self.step}/{steps} loss {record['loss']:.5f} lr {record['lr']:.2e} "
                           f"grad {grad_norm:.3f} {record['it_s']:.2f} it/s")
                window_loss, window_n, t_last, step_last = 0.0, 0, now, self.step
            if t["val_every"] and (self.step % t["val_every"] == 0 or self.step == steps):
                self.run_validation()
            if (t["ckpt_every"] and self.step % t["ckpt_every"] == 0) or self.step in (steps, stop):
                last_ckpt = self.checkpoint()
        return {"step": self.step, "checkpoint": str(last_ckpt) if last_ckpt else None}


def run(cfg: dict, out: Path, component: str, model: torch.nn.Module, model_cfg, params: list, device,
        micro_step: Callable, validate: Callable, meta: dict, source, resume, export_dir: Path | None,
        log: Callable[[str], None], describe: str, extra: dict | None = None,
        also: dict[str, tuple[torch.nn.Module, Any]] | None = None) -> dict:
    """The part the trainers share: canonical save/load of the trained component, seeding,
    resume, the loop, the result summary, and the optional complete canonical folder.

    ``also``: more modules trained together with ``model`` (name -> (module, config)): a
    component name with its config is saved canonically beside ``model`` (the Synchformer
    trained with φ); anything else (config None, e.g. the CLAP trainer's audio encoder) as
    ``<name>.safetensors`` in the step folder, so that a resumed run gets it back too."""
    from safetensors.torch import load_file, save_file

    from training.checkpoints import load_component, save_component
    from training.components import export_canonical, seed_everything

    also = dict(also or {})

    def save(folder: Path) -> None:
        save_component(folder, component, model.state_dict(), model_cfg, {**meta, "step": loop.step})
        for name, (m, c) in also.items():
            if c is not None:
                save_component(folder, name, m.state_dict(), c, {**meta, "step": loop.step})
            else:
                save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(folder / f"{name}.safetensors"))

    def load(folder: Path) -> None:
        loaded, _ = load_component(folder, component)
        model.load_state_dict(loaded.state_dict(), strict=True)
        for name, (m, c) in also.items():
            if c is not None:
                m.load_state_dict(load_component(folder, name)[0].state_dict(), strict=True)
            else:
                m.load_state_dict(load_file(str(folder / f"{name}.safetensors")), strict=True)

    loop = Loop(cfg, out, model if not also else torch.nn.ModuleList([model, *(m for m, _ in also.values())]),
                params, device, micro_step, validate, save, load, log)
    log(f"{component}: {sum(p.numel() for p in params):,} trainable parameters, {describe}, "
        f"device {device}, precision {loop.amp_dtype or 'fp32'}")
    seed_everything(cfg["seed"])  # after set-up: whether features were cached must not change the draws
    if resume:
        loop.resume(find_checkpoint(out, resume))
    t0 = time.perf_counter()
    result = loop.train()
    result["seconds"] = time.perf_counter() - t0
    # Complete: reached train.stop_at (where set) or train.steps. A run stopped by its time budget
    # is not; running it again with --resume continues (or, with --set train.stop_at=<its step>,
    # finishes it right there: the schedule is still laid out over train.steps).
    result["complete"] = result["step"] >= min(cfg["train"]["steps"], cfg["train"].get("stop_at") or cfg["train"]["steps"])
    result["stopped_by_time"] = bool(getattr(loop, "out_of_time", False))
    vals = [h for h in loop.history if h["event"] == "val"]
    trains = [h for h in loop.history if h["event"] == "train"]
    result.update({"first_loss": trains[0]["loss"] if trains else None,
                   "final_loss": trains[-1]["loss"] if trains else None,
                   "val": vals[-1] if vals else None, "val_initial": vals[0] if vals else None, **(extra or {})})
    if export_dir:
        written = export_canonical(export_dir, source,
                                   {component: (model.state_dict(), model_cfg, {**meta, "step": loop.step})})
        log(f"canonical folder {export_dir}: {len(written)} files")
        result["export_dir"] = str(export_dir)
    atomic_write_text(out / "result.json", json.dumps(result, indent=1) + "\n")
    return result
