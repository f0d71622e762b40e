"""One table entry per graph of ``rewas_rt.graphs.GRAPHS``: everything export/ needs to know about it.

Each ``GraphExport`` says which canonical components the graph is built from, how to
wrap them into the module whose ``forward(*inputs in contract order)`` is the graph,
how to draw valid sample inputs (for tracing, parity and the FP16 check), the batch
its parity check runs at and the batch of its FP16 check. ``export_onnx.py``,
``build_engines.py`` and ``fp16_check.py`` read this table; nothing else in export/
branches on a graph's name. (The I/O contract itself is ``rewas_rt.graphs``.)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import numpy as np

from rewas_rt import constants as C

PARITY_BATCH = 3
FP16_BATCH = 1

# (rng, concrete shape, model configs, inputs drawn so far) -> array (cast to the contract's dtype later)
InputFn = Callable[[np.random.Generator, tuple, Mapping[str, Any], Mapping[str, np.ndarray]], np.ndarray]


def normal(rng, shape, configs, feeds):  # features, latents, hint
    return rng.standard_normal(shape)


def video(rng, shape, configs, feeds):  # normalised frames: (x/255 - 0.5) / 0.5
    return rng.uniform(-1.0, 1.0, shape)


def log_mel(rng, shape, configs, feeds):
    return np.clip(rng.normal(-5.0, 2.0, shape), math.log(C.LOG_MEL_CLAMP), 3.0)


def token_ids(rng, shape, configs, feeds):
    """<s> w … w </s> <pad> …: row 0 full length, the others shorter; word ids avoid the specials."""
    cfg = configs["clap_text"]
    b, length = shape
    ids = np.full(shape, cfg.pad_token_id, dtype=np.int64)
    first_word = max(cfg.bos_token_id, cfg.pad_token_id, cfg.eos_token_id) + 1
    for i in range(b):
        n = length if i == 0 else int(rng.integers(2, length + 1))
        ids[i, 0] = cfg.bos_token_id
        ids[i, 1:n - 1] = rng.integers(first_word, cfg.vocab_size, n - 2)
        ids[i, n - 1] = cfg.eos_token_id
    return ids


def attention_mask(rng, shape, configs, feeds):
    return feeds["input_ids"] != configs["clap_text"].pad_token_id


def timesteps(rng, shape, configs, feeds):
    t = rng.integers(0, C.TRAIN_STEPS, shape)
    t[0] = C.TRAIN_STEPS - 1  # the first (largest) DDIM timestep range is always covered
    return t


def film(rng, shape, configs, feeds):
    x = rng.standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)  # CLAP embeddings are L2-normalised


def _vae_encoder(c):
    from training.models.vae import VAEEncoderGraph

    return VAEEncoderGraph(c["vae"])  # moments, unclamped: the posterior is NumPy (rewas_rt.latent)


def _vae_decoder(c):
    from training.models.vae import VAEDecoderGraph

    return VAEDecoderGraph(c["vae"])  # scale factor baked in


def _denoiser(c):
    from training.models.denoiser import Denoiser

    return Denoiser(c["unet"], c["adapter"])  # forward(x_t, timesteps, film, hint)


def _clap_vocab_from_onnx(configs: dict, model) -> dict:
    """The CLAP vocabulary of an exported clap_text graph (its word-embedding rows)."""
    for t in model.graph.initializer:
        if "word_embeddings" in t.name:
            cfg = configs["clap_text"]
            configs["clap_text"] = type(cfg)(**{**cfg.to_dict(), "vocab_size": int(t.dims[0])})
    return configs


@dataclasses.dataclass(frozen=True)
class GraphExport:
    components: tuple[str, ...]
    module: Callable[[Mapping[str, Any]], Any]  # components -> nn.Module of the graph
    inputs: Mapping[str, InputFn]  # one per contract input, in any order; drawn in contract order
    parity_batch: int = PARITY_BATCH
    fp16_batch: int = FP16_BATCH
    # For checking a bare .onnx (no manifest): fix the configs the sample inputs depend on.
    configs_from_onnx: Callable[[dict, Any], dict] | None = None


GRAPH_EXPORTS: dict[str, GraphExport] = {
    # One synchformer item is 14 segments of 16 frames at 224x224 (134 MB): parity at batch 1.
    "synchformer": GraphExport(("synchformer",), lambda c: c["synchformer"], {"video": video}, parity_batch=1),
    "phi": GraphExport(("phi",), lambda c: c["phi"], {"features": normal}),
    "clap_text": GraphExport(("clap_text",), lambda c: c["clap_text"],
                             {"input_ids": token_ids, "attention_mask": attention_mask},
                             configs_from_onnx=_clap_vocab_from_onnx),
    "vae_encoder": GraphExport(("vae",), _vae_encoder, {"mel": log_mel}),
    "unet_adapter": GraphExport(("unet", "adapter"), _denoiser,
                                {"x_t": normal, "timesteps": timesteps, "film": film, "hint": normal}),
    "vae_decoder": GraphExport(("vae",), _vae_decoder, {"latent": normal}),
    "vocoder": GraphExport(("vocoder",), lambda c: c["vocoder"], {"mel": log_mel}),
}
