"""Where the trainers get the seven components: a canonical checkpoint folder or random weights.

* ``CheckpointSource(dir)``: ``<dir>/<component>.safetensors`` + ``.json`` as written by
  ``training.checkpoints.save_component`` (``python -m training.import_checkpoints``), and
  ``<dir>/tokenizer.json`` when present.
* ``RandomSource(preset, seed)``: every component of a preset ("tiny", "rewas-m") drawn at
  random, reproducibly from the seed, with ``presets.randomize_`` (every parameter non-zero: a
  frozen UNet with the original's zero output conv would predict ε = 0 and pass no gradient to
  the adapter), so the same seed gives the same weights as ``export/``'s ``--random-weights``.
  The tokenizer is the export's deterministic tiny BPE.

Both give every component a fingerprint (sha256 of the safetensors file and config, or of the
tensors themselves) for the feature-cache keys, and both can write a complete canonical folder
(``export_canonical``) with trained components swapped in, which ``export/`` reads directly.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from rewas_rt.atomic import atomic_path, temp_name
from rewas_rt.errors import ConfigError, MissingFileError
from rewas_rt.manifest import sha256_file
from training.checkpoints import COMPONENTS, CheckpointError, load_component, load_config, save_component
from training.models import presets
from training.models.config import ModelConfig

TOKENIZER_FILE = "tokenizer.json"


def tensor_hash(state: Mapping[str, torch.Tensor] | nn.Module) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted name order."""
    sd = state.state_dict() if isinstance(state, nn.Module) else state
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fingerprint(obj) -> str:
    """sha256 of a JSON-serialisable object (sorted keys): cache keys are built from these."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def random_component(name: str, config: ModelConfig, seed: int) -> nn.Module:
    """A component with random weights: the project's one scheme (``presets.randomize_`` with
    ``presets.component_seed``), so ``--random-weights`` here, in ``export/`` and in
    ``checkpoints.random_models`` give the same tensors for the same preset and seed."""
    with torch.random.fork_rng(devices=[]):  # construction draws default inits: leave the global RNG alone
        model = COMPONENTS[name].model_cls(config)
    presets.randomize_(model, presets.component_seed(seed, name))
    return model.float().eval()


def tiny_tokenizer(vocab_size: int):
    """The deterministic byte-level BPE the export ships with random-weight models
    (``training.tokenizer.train_tiny``): RoBERTa ids, "" → [0, 2]."""
    from training.tokenizer import train_tiny

    return train_tiny(vocab_size)


def load_tokenizer(path: Path):
    """``tokenizer.json`` (file, or a folder holding one) or a RoBERTa ``vocab.json`` + ``merges.txt`` folder."""
    from tokenizers import Tokenizer

    from training.tokenizer import from_folder

    path = Path(path)
    if path.is_file():
        tok = Tokenizer.from_file(str(path))
        tok.enable_truncation(max_length=512)
        tok.no_padding()
        return tok
    return from_folder(path)


class ComponentSource:
    """The seven components of one model, loaded lazily and fingerprinted."""

    name: str

    def config(self, component: str) -> ModelConfig:
        raise NotImplementedError

    def load(self, component: str) -> nn.Module:
        """A fresh copy of the component in eval mode (callers freeze or train it)."""
        raise NotImplementedError

    def fingerprint(self, component: str) -> str:
        raise NotImplementedError

    def tokenizer(self):
        raise NotImplementedError

    def tokenizer_fingerprint(self) -> str:
        return hashlib.sha256(self.tokenizer().to_str().encode()).hexdigest()

    def write_component(self, component: str, out: Path) -> None:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"source": self.name}


def _hard_link_beside(src: Path, beside: str) -> str:
    """A hard link to ``src`` under a fresh temporary name beside ``beside``; OSError where links are impossible."""
    link = temp_name(beside)
    os.link(src, link)
    return link


class CheckpointSource(ComponentSource):
    def __init__(self, root: Path, tokenizer: Path | None = None):
        self.root = Path(root)
        self.name = f"checkpoints:{self.root}"
        self._tokenizer_path = Path(tokenizer) if tokenizer else None
        if not self.root.is_dir():
            raise CheckpointError(f"{self.root}: not a folder")

    def has(self, component: str) -> bool:
        return (self.root / f"{component}.safetensors").is_file() and (self.root / f"{component}.json").is_file()

    def config(self, component: str) -> ModelConfig:
        return load_config(self.root, component)

    def load(self, component: str) -> nn.Module:
        return load_component(self.root, component)[0]

    @functools.cache
    def fingerprint(self, component: str) -> str:
        path = self.root / f"{component}.safetensors"
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (run `python -m training.import_checkpoints` first)")
        return fingerprint({"file_sha256": sha256_file(path), "config": self.config(component).to_dict()})

    @functools.cache
    def tokenizer(self):
        path = self._tokenizer_path or self.root / TOKENIZER_FILE
        if not path.exists():
            raise MissingFileError(
                f"{path}: no tokenizer; put the RoBERTa tokenizer.json beside the checkpoints or pass --tokenizer")
        return load_tokenizer(path)

    def write_component(self, component: str, out: Path) -> None:
        for suffix in (".safetensors", ".json"):
            src, dst = self.root / f"{component}{suffix}", Path(out) / f"{component}{suffix}"
            if dst.exists() and os.path.samefile(src, dst):
                continue
            with atomic_path(dst) as tmp:
                try:
                    os.replace(_hard_link_beside(src, tmp), tmp)  # no copy of GBs where the file system allows
                except OSError:
                    shutil.copyfile(src, tmp)

    def describe(self) -> dict:
        return {"source": "checkpoints", "dir": str(self.root)}


class RandomSource(ComponentSource):
    def __init__(self, preset: str, seed: int = 0, configs: Mapping[str, ModelConfig] | None = None):
        self.preset, self.seed = preset, seed
        self.configs = dict(configs or presets.preset(preset))
        self.name = f"random:{preset}:seed{seed}"

    def config(self, component: str) -> ModelConfig:
        return self.configs[component]

    def load(self, component: str) -> nn.Module:
        return random_component(component, self.configs[component], self.seed)

    @functools.cache
    def fingerprint(self, component: str) -> str:
        return fingerprint({"tensors": tensor_hash(self.load(component)),
                            "config": self.configs[component].to_dict()})

    @functools.cache
    def tokenizer(self):
        # The tiny BPE (at most the tiny preset's 512 tokens: its corpus has no more merges) fits
        # any CLAP vocabulary at least that large, the full-size one included.
        return tiny_tokenizer(min(self.configs["clap_text"].vocab_size, presets.TINY_VOCAB_SIZE))

    def write_component(self, component: str, out: Path) -> None:
        save_component(Path(out), component, self.load(component).state_dict(), self.configs[component],
                       {"random_weights": {"preset": self.preset, "seed": self.seed}})

    def describe(self) -> dict:
        return {"source": "random", "preset": self.preset, "seed": self.seed}


def open_source(checkpoints: Path | None, preset: str, random_weights: bool, seed: int = 0,
                tokenizer: Path | None = None) -> ComponentSource:
    if checkpoints and random_weights:
        raise ConfigError("give either --checkpoints or --random-weights, not both")
    if checkpoints:
        return CheckpointSource(checkpoints, tokenizer)
    if random_weights:
        return RandomSource(preset, seed)
    raise ConfigError("no base components: pass --checkpoints DIR (canonical) or --random-weights")


def run_on_source(run):
    """``trainlib.trainer_main``'s run for a trainer on base components (φ, adapter): open them as
    the command line says (``--checkpoints`` or ``--random-weights``, ``--tokenizer``) and call
    ``run(cfg, out, source, resume, export_dir)``."""
    def go(cfg: dict, args) -> dict:
        source = open_source(args.checkpoints, cfg["model"], args.random_weights, cfg["random_weights_seed"],
                             args.tokenizer)
        return run(cfg, args.out, source, args.resume, args.export_dir)

    return go


def export_canonical(out: Path, source: ComponentSource,
                     trained: Mapping[str, tuple[Mapping[str, torch.Tensor], ModelConfig, dict]]) -> list[Path]:
    """Write a complete canonical folder: the trained components, every other one from ``source``
    (hard-linked or copied, or drawn at random), and ``tokenizer.json``. Returns the written paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for component in COMPONENTS:
        if component in trained:
            sd, config, meta = trained[component]
            save_component(out, component, sd, config, meta)
        else:
            source.write_component(component, out)
        written.append(out / f"{component}.safetensors")
    tok_path = out / TOKENIZER_FILE
    try:
        tok = source.tokenizer()
    except FileNotFoundError:
        tok = None
    if tok is not None and not (tok_path.exists() and isinstance(source, CheckpointSource)
                                and (source.root / TOKENIZER_FILE).exists()
                                and os.path.samefile(tok_path, source.root / TOKENIZER_FILE)):
        with atomic_path(tok_path) as tmp:
            tok.save(str(tmp))
        written.append(tok_path)
    return written


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
