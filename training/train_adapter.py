"""Train the energy adapter (ControlNet) with the base UNet, VAE and CLAP frozen.

    python -m training.train_adapter --config tiny --random-weights --data DIR/manifest.jsonl --out runs/adapter
    python -m training.train_adapter --config rewas-m --checkpoints checkpoints/ --data manifest.jsonl --out runs/adapter

Loss (the paper's L_c): ε-prediction MSE. Per item: x₀ = the VAE latent of the window's
log-mel, hint = the VAE latent of its energy curve (512 frames copied to the 64 mel bins), both
``scale_factor · posterior sample`` (``data.latent = "sample"``, fresh noise every step, as the
original) or ``scale_factor · mean`` (``"mean"``); t ~ U{0, …, 999}; x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε
with ᾱ from ``rewas_rt.ddim.linear_schedule`` (float32, like the original's buffers); the
CLAP text embedding is replaced by the "" embedding with probability ``adapter.cfg_dropout``
(0.3) for classifier-free guidance; loss = ‖ε − ε̂(x_t, t, text, hint)‖² (mean).

Initialisation (``adapter.init = "unet"``), as ControlNet's ``tool_add_control.py`` +
``ControlNet.__init__``: every adapter parameter whose name exists in the UNet (time/FiLM
embeddings, input blocks, middle block) is a copy of the UNet's; the layers only the adapter
has keep their own init, which is zero for the zero convolutions (``zero_convs.*``),
``middle_block_out.*`` and the hint block's last conv (``input_hint_block.4``) and PyTorch's
default for the hint block's Linear. So the fresh adapter adds exactly zero to the UNet.
``"checkpoint"`` fine-tunes the adapter of --checkpoints instead. Only the adapter's
parameters are trainable (asserted); the UNet runs in eval mode without gradients for its
weights. Validation: ε-MSE on the validation windows at fixed timesteps with fixed noise, with
the hint and with an all-zero hint (the gap shows how much the adapter uses the energy).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rewas_rt.ddim import linear_schedule
from rewas_rt.atomic import atomic_write_text
from rewas_rt.errors import ConfigError, cli_main
from training import trainlib
from training.config import AdapterTrainerConfig
from training.components import ComponentSource, freeze, run_on_source
from training.data import FeatureStore, read_manifest, windows
from training.models.adapter import Adapter, AdapterConfig
from training.models.denoiser import Denoiser
from training.models.unet import UNet

COMPONENT = "adapter"
# Layers the adapter has and the UNet has not, and how ControlNet initialises them.
ADAPTER_ONLY_PREFIXES = ("zero_convs.", "middle_block_out.", "input_hint_block.")
DEFAULTS = AdapterTrainerConfig  # the typed config (training/config.py): defaults, and the keys it accepts


def adapter_config(source: ComponentSource, unet_cfg) -> AdapterConfig:
    try:
        return source.config(COMPONENT)
    except Exception:  # noqa: BLE001 - no adapter in the folder: the UNet's encoder sizes
        d = {k: v for k, v in unet_cfg.to_dict().items() if k != "out_channels"}  # legacy included
        return AdapterConfig(**d, hint_channels=1)


def controlnet_init(adapter: Adapter, unet: UNet) -> dict[str, list[str]]:
    """Copy the UNet's weights into the adapter wherever the names match (ControlNet's
    ``tool_add_control.py``); adapter-only layers keep their construction init. Returns the
    names per group. A shared name with another shape, or an unshared name outside the
    adapter-only layers, is an error."""
    unet_sd = unet.state_dict()
    copied, own = [], []
    with torch.no_grad():
        for name, tensor in adapter.state_dict().items():
            if name in unet_sd:
                if unet_sd[name].shape != tensor.shape:
                    raise ConfigError(f"adapter {name} {tuple(tensor.shape)} != unet {tuple(unet_sd[name].shape)}")
                tensor.copy_(unet_sd[name])
                copied.append(name)
            elif name.startswith(ADAPTER_ONLY_PREFIXES):
                own.append(name)
            else:
                raise ConfigError(f"adapter parameter {name} has no UNet counterpart and is not adapter-only")
    zero = [n for n in own if not n.startswith("input_hint_block.") or n.startswith("input_hint_block.4.")]
    for name in zero:
        if adapter.state_dict()[name].any():
            raise AssertionError(f"{name} should be zero-initialised")
    return {"copied": copied, "zero": zero, "own_init": [n for n in own if n not in zero]}


def assert_only_adapter_trainable(denoiser: Denoiser, optimizer_params: list[torch.nn.Parameter]) -> None:
    for name, p in denoiser.named_parameters():
        if p.requires_grad != name.startswith("adapter."):
            raise AssertionError(f"{name}: requires_grad={p.requires_grad}")
    if {id(p) for p in optimizer_params} != {id(p) for p in denoiser.adapter.parameters()}:
        raise AssertionError("the optimizer must hold exactly the adapter's parameters")


class AdapterData:
    """Windows of one split: cached VAE moments of target and hint, CLAP caption embeddings."""

    def __init__(self, store: FeatureStore, wins, device: torch.device):
        self.store, self.wins, self.device = store, wins, device
        groups: dict[int, list[int]] = {}
        for i, (item, _) in enumerate(wins):
            groups.setdefault(id(item), []).append(i)
        self.groups = list(groups.values())

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> list[int]:
        clips = torch.randint(len(self.groups), (batch_size,), generator=generator).tolist()
        picks = torch.rand(batch_size, generator=generator).tolist()
        return [self.groups[c][int(u * len(self.groups[c]))] for c, u in zip(clips, picks)]

    def batch(self, idx: list[int]) -> dict[str, torch.Tensor]:
        moments = [self.store.vae_moments(*self.wins[i]) for i in idx]
        text = np.stack([self.store.text_embedding(self.wins[i][0].caption) for i in idx])
        t = lambda a: torch.from_numpy(np.stack(a)).to(self.device)  # noqa: E731
        return {"target": t([m["target"] for m in moments]), "hint": t([m["hint"] for m in moments]),
                "text": torch.from_numpy(text).to(self.device)}


def latent(moments: torch.Tensor, scale: float, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    mean, std = torch.chunk(moments, 2, dim=1)
    std = torch.exp(0.5 * torch.clamp(std, -30.0, 20.0))  # the chunk holds logvar
    if mode == "mean":
        return scale * mean
    if mode != "sample":
        raise ConfigError(f"data.latent {mode!r}: 'sample' or 'mean'")
    noise = torch.randn(mean.shape, generator=generator).to(mean.device)  # drawn on the CPU: device-independent
    return scale * (mean + std * noise)


def run(cfg: dict, out: Path, source: ComponentSource, resume: str | None = None, export_dir: Path | None = None,
        store: FeatureStore | None = None, log=print) -> dict:
    """Train the adapter with ``cfg`` (a resolved config) into ``out``; returns a summary (also ``out/result.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps({**cfg, "base": source.describe()}, indent=1) + "\n")
    t, a = cfg["train"], cfg["adapter"]
    device = trainlib.pick_device(t["device"])
    trainlib.setup_threads(cfg)
    items = read_manifest(Path(cfg["data"]["manifest"]))
    store = store or FeatureStore(source, Path(cfg["data"]["cache_dir"]), device, cfg["data"]["memory_items"], log=log)
    grid = cfg["data"]["window_grid_s"]
    train_w, val_w = windows(items, "train", grid), windows(items, "val", grid)
    if not train_w:
        raise ConfigError(f"{cfg['data']['manifest']}: no training items")
    log(f"data: {len({id(i) for i, _ in train_w})} train clips ({len(train_w)} windows), {len(val_w)} val windows")
    stats = store.precompute(train_w + val_w, ("vae",), captions=True)
    log(f"feature cache: {stats['computed']} computed, {stats['cached']} reused ({stats['seconds']:.1f} s)")
    uncond = torch.from_numpy(store.text_embedding("")).to(device)
    scale = float(source.config("vae").scale_factor)

    unet = freeze(source.load("unet")).to(device)
    adapter_cfg = adapter_config(source, unet.config)
    if a["init"] == "unet":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg["seed"])
            adapter = Adapter(adapter_cfg)
        report = controlnet_init(adapter, unet)
        log(f"adapter init from the UNet: {len(report['copied'])} tensors copied, {len(report['zero'])} zero, "
            f"{len(report['own_init'])} own init")
    elif a["init"] == "checkpoint":
        adapter = source.load(COMPONENT)
    else:
        raise ConfigError(f"adapter.init {a['init']!r}: 'unet' or 'checkpoint'")
    adapter = adapter.to(device).train()
    denoiser = Denoiser(unet, adapter)
    params = list(adapter.parameters())
    assert_only_adapter_trainable(denoiser, params)

    _, acp = linear_schedule()
    alphas_cumprod = torch.tensor(acp, dtype=torch.float32, device=device)
    train_data, val_data = AdapterData(store, train_w, device), AdapterData(store, val_w, device)
    mode = cfg["data"]["latent"]

    def draw(batch: dict, generator: torch.Generator | None = None) -> dict:
        """Everything random about a training batch, from the global RNG or a generator."""
        n = batch["target"].shape[0]
        x0 = latent(batch["target"], scale, mode, generator)
        hint = latent(batch["hint"], scale, mode, generator)
        drop = torch.rand(n, generator=generator).to(device) < a["cfg_dropout"]
        film = torch.where(drop[:, None], uncond[None], batch["text"])
        steps = torch.randint(0, len(acp), (n,), generator=generator).to(device)
        eps = torch.randn(x0.shape, generator=generator).to(device)
        return {"x0": x0, "hint": hint, "film": film, "t": steps, "eps": eps}

    def loss_of(d: dict, hint: torch.Tensor | None = None) -> torch.Tensor:
        ab = alphas_cumprod[d["t"]][:, None, None, None]
        x_t = ab.sqrt() * d["x0"] + (1 - ab).sqrt() * d["eps"]
        pred = denoiser(x_t, d["t"], d["film"], d["hint"] if hint is None else hint)
        return F.mse_loss(pred.float(), d["eps"])

    fixed: dict = {}
    if t["overfit_batch"]:
        g = torch.Generator().manual_seed(cfg["seed"] + 1)
        fixed = draw(train_data.batch(train_data.sample(t["batch_size"], g)), g)

    def micro_step(step: int) -> torch.Tensor:
        d = fixed or draw(train_data.batch(train_data.sample(t["batch_size"])))
        return loss_of(d)

    def validate(step: int) -> dict:
        if not val_w:
            return {}
        g = torch.Generator().manual_seed(cfg["seed"] + 2)  # the same noise at every validation
        total, total_zero, n = 0.0, 0.0, 0
        for i in range(len(val_w)):
            b = val_data.batch([i] * len(a["val_timesteps"]))
            x0 = latent(b["target"][:1], scale, mode, g).expand_as(b["target"][:, :8])
            hint = latent(b["hint"][:1], scale, mode, g).expand_as(x0)
            steps = torch.tensor(a["val_timesteps"], dtype=torch.int64, device=device)
            eps = torch.randn(x0.shape, generator=g).to(device)
            d = {"x0": x0, "hint": hint, "film": b["text"], "t": steps, "eps": eps}
            total += loss_of(d).item()
            total_zero += loss_of(d, torch.zeros_like(hint)).item()
            n += 1
        return {"val_loss": total / n, "val_loss_zero_hint": total_zero / n}

    meta = {"trained": {"trainer": "training.train_adapter", "init": a["init"], "seed": cfg["seed"]}}

    frozen = sum(p.numel() for p in unet.parameters())
    return trainlib.run(cfg, out, COMPONENT, adapter, adapter_cfg, params, device, micro_step, validate, meta, source,
                        resume, export_dir, log, f"UNet {frozen:,} frozen, latent {mode}")


@cli_main
def main(argv: list[str] | None = None) -> int:
    def summary(result: dict) -> str:
        val = result.get("val") or {}
        return f"val loss {val['val_loss']:.4f} (zero hint {val['val_loss_zero_hint']:.4f})" if val else ""

    return trainlib.trainer_main(argv, "adapter", __doc__, DEFAULTS, run_on_source(run), summary)


if __name__ == "__main__":
    sys.exit(main())
