"""Shared, CI-sized fixtures of the training tests: one small synthetic set and its feature
cache, made once per test session (whichever test module asks first) and removed at exit."""
from __future__ import annotations

import atexit
import copy
import functools
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from training import trainlib

# 8 clips (2 per class): 4 train, 4 val. 5.44 s long, so a 0.32 s grid gives 2 training
# windows per clip: 8 train + 4 val windows in all.
N_CLIPS = 8
DURATION = 5.44
CLASSES = ("impact", "beep", "rain", "whoosh")  # the first four of training.synthetic.CLASSES
SEED = 0


@functools.cache
def synthetic_set() -> Path:
    """The manifest of the shared set; its feature cache is ``<folder>/cache``."""
    from training.synthetic import SynthConfig, generate

    root = Path(tempfile.mkdtemp(prefix="rewas-train-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return generate(root / "data", N_CLIPS, SEED, SynthConfig(duration=DURATION), log=lambda _: None,
                    classes=CLASSES)


def config(trainer: str, defaults: type, **overrides) -> dict:
    """The tiny config of a trainer on the shared set; ``overrides`` as {"train.steps": 4, ...}."""
    cfg = trainlib.load_config("tiny", trainer, defaults)
    manifest = synthetic_set()
    cfg["data"]["manifest"] = str(manifest)
    cfg["data"]["cache_dir"] = str(manifest.parent / "cache")
    cfg["train"].update({"log_every": 1, "val_every": 0, "threads": 1})
    for key, value in overrides.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = copy.deepcopy(value)
    return cfg


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """The tiny configs run torch on 1 thread (fastest for tiny models on a busy CPU); give
    later tests the thread count they had. Import this fixture into a test module to use it."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
