"""Train φ: Synchformer features (112, D) → energy curve (112,).

    python -m training.train_phi --config tiny --random-weights --data DIR/manifest.jsonl --out runs/phi
    python -m training.train_phi --config rewas-m --checkpoints checkpoints/ --data manifest.jsonl --out runs/phi

Loss (the paper's L_e): mean squared error between φ(E_v) and the 112-step energy target
(``energy_112``: the real audio's energy resized to 112 and Savitzky–Golay'd, see
``training.data``). Validation: energy MAE (``training.data.energy_mae``: φ's output
post-processed as at generation vs the 512-frame energy of the real audio, fixed windows) and
the validation loss; also the MAE of the best constant curve (the training targets' mean), so
a model that ignores the video is easy to spot.

φ's attention layout is ``phi.attention`` in the config: ``"time"`` (attend over the 112 steps;
the default for new models) or ``"batch"`` (the released model's B=1 behaviour: no temporal
context). ``init``: ``"random"`` (seeded) or ``"checkpoint"`` (fine-tune the φ of --checkpoints).
The Synchformer stays frozen; its features come from the feature cache.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rewas_rt import constants as C
from rewas_rt.atomic import atomic_write_text
from rewas_rt.errors import ConfigError, cli_main
from training import trainlib
from training.config import PhiTrainerConfig
from training.components import ComponentSource, run_on_source
from training.data import FeatureStore, energy_mae, read_manifest, windows
from training.models.phi import Phi, PhiConfig

COMPONENT = "phi"
DEFAULTS = PhiTrainerConfig  # the typed config (training/config.py): defaults, and the keys it accepts


def base_phi_config(source: ComponentSource) -> PhiConfig:
    try:
        return source.config(COMPONENT)
    except Exception:  # noqa: BLE001 - a checkpoint folder without φ: take the preset's sizes
        from training.models import presets

        return presets.preset("rewas-m")[COMPONENT]


def phi_config(cfg: dict, source: ComponentSource) -> PhiConfig:
    base = base_phi_config(source).to_dict()
    phi_cfg = PhiConfig.from_dict({**base, **cfg["phi"]})
    width = source.config("synchformer").embed_dim
    if phi_cfg.width != width:
        raise ConfigError(f"phi width {phi_cfg.width} != synchformer embed_dim {width}")
    return phi_cfg


class PhiData:
    """Windows of one split with their cached features and targets, batched as tensors."""

    def __init__(self, store: FeatureStore, wins, device: torch.device):
        self.store, self.wins, self.device = store, wins, device
        self.by_item: dict[int, list[int]] = {}
        for i, (item, _) in enumerate(wins):
            self.by_item.setdefault(id(item), []).append(i)
        self.groups = list(self.by_item.values())  # windows grouped by clip

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> list[int]:
        """Clips uniformly, then one of the clip's windows uniformly (global RNG unless a generator)."""
        clips = torch.randint(len(self.groups), (batch_size,), generator=generator).tolist()
        picks = torch.rand(batch_size, generator=generator).tolist()
        return [self.groups[c][int(u * len(self.groups[c]))] for c, u in zip(clips, picks)]

    def batch(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        feats = np.stack([self.store.video_features(*self.wins[i]) for i in idx])
        audio = [self.store.audio(*self.wins[i]) for i in idx]
        e112 = np.stack([a["energy_112"] for a in audio])
        e512 = np.stack([a["energy_512"] for a in audio])
        return torch.from_numpy(feats).to(self.device), torch.from_numpy(e112).to(self.device), e512


def build_phi(cfg: dict, source: ComponentSource, phi_cfg: PhiConfig, mean_target: float = 0.0) -> Phi:
    """The model to train. A random init starts the output bias at the training targets' mean:
    energies sit around −5 (log units), and learning that offset through the ReLU stack first
    kills units; this way the gradients are about the curve's shape from the first step."""
    if cfg["init"] == "checkpoint":
        model = source.load(COMPONENT)
        if model.config.to_dict() != phi_cfg.to_dict():  # e.g. released weights retrained with time attention
            fresh = Phi(phi_cfg)
            fresh.load_state_dict(model.state_dict(), strict=True)
            model = fresh
        return model
    if cfg["init"] != "random":
        raise ConfigError(f"init {cfg['init']!r}: 'random' or 'checkpoint'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        model = Phi(phi_cfg)
    with torch.no_grad():
        model.projection2[-1].bias.fill_(mean_target)
    return model


def run(cfg: dict, out: Path, source: ComponentSource, resume: str | None = None, export_dir: Path | None = None,
        store: FeatureStore | None = None, log=print) -> dict:
    """Train φ with ``cfg`` (a resolved config) into ``out``; returns a summary (also ``out/result.json``).
    ``store`` lets several runs share one feature store (the attention comparison)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps({**cfg, "base": source.describe()}, indent=1) + "\n")
    t = cfg["train"]
    device = trainlib.pick_device(t["device"])
    trainlib.setup_threads(cfg)
    items = read_manifest(Path(cfg["data"]["manifest"]))
    store = store or FeatureStore(source, Path(cfg["data"]["cache_dir"]), device, cfg["data"]["memory_items"], log=log)
    grid = cfg["data"]["window_grid_s"]
    train_w, val_w = windows(items, "train", grid), windows(items, "val", grid)
    if not train_w:
        raise ConfigError(f"{cfg['data']['manifest']}: no training items")
    log(f"data: {len({id(i) for i, _ in train_w})} train clips ({len(train_w)} windows), {len(val_w)} val windows")
    stats = store.precompute(train_w + val_w, ("audio", "video"))
    log(f"feature cache: {stats['computed']} computed, {stats['cached']} reused ({stats['seconds']:.1f} s)")

    mean_target = float(np.mean([store.audio(*w)["energy_112"] for w in train_w]))
    phi_cfg = phi_config(cfg, source)
    model = build_phi(cfg, source, phi_cfg, mean_target).to(device)
    params = list(model.parameters())
    train_data, val_data = PhiData(store, train_w, device), PhiData(store, val_w, device)
    fixed: dict[str, tuple] = {}
    if t["overfit_batch"]:
        g = torch.Generator().manual_seed(cfg["seed"] + 1)
        fixed["batch"] = train_data.batch(train_data.sample(t["batch_size"], g))

    def micro_step(step: int) -> torch.Tensor:
        feats, e112, _ = fixed["batch"] if fixed else train_data.batch(train_data.sample(t["batch_size"]))
        return F.mse_loss(model(feats).squeeze(-1).float(), e112)

    def validate(step: int) -> dict:
        if not val_w:
            return {}
        preds, targets, losses = [], [], []
        for lo in range(0, len(val_w), t["batch_size"]):
            idx = list(range(lo, min(lo + t["batch_size"], len(val_w))))
            feats, e112, e512 = val_data.batch(idx)
            pred = model(feats).squeeze(-1).float()
            losses.append(F.mse_loss(pred, e112, reduction="sum").item())
            preds.append(pred.cpu().numpy())
            targets.append(e512)
        pred, target = np.concatenate(preds), np.concatenate(targets)
        return {"val_energy_mae": energy_mae(pred, target),
                "val_loss": sum(losses) / (len(val_w) * C.ENERGY_STEPS),
                "val_mae_constant_baseline": energy_mae(np.full_like(pred, mean_target), target)}

    meta = {"trained": {"trainer": "training.train_phi", "attention": phi_cfg.attention, "seed": cfg["seed"]}}

    return trainlib.run(cfg, out, COMPONENT, model, phi_cfg, params, device, micro_step, validate, meta, source,
                        resume, export_dir, log, f"attention={phi_cfg.attention}", {"attention": phi_cfg.attention})


@cli_main
def main(argv: list[str] | None = None) -> int:
    def run_from_args(cfg: dict, args) -> dict:
        if args.attention:
            cfg["phi"]["attention"] = args.attention
        return run_on_source(run)(cfg, args)

    def summary(result: dict) -> str:
        val = result.get("val") or {}
        return f"val energy MAE {val['val_energy_mae']:.4f}" if val else ""

    return trainlib.trainer_main(argv, "phi", __doc__, DEFAULTS, run_from_args, summary, lambda p: p.add_argument(
        "--attention", choices=["time", "batch"], help="overrides phi.attention"))


if __name__ == "__main__":
    sys.exit(main())
