"""Train the video encoder (Synchformer architecture) together with φ: a demo-model stage.

    python -m training.train_video --config demo --data DATA/manifest.jsonl --out runs/video

The released model uses a pretrained, frozen Synchformer and trains only φ
(``training.train_phi``); the demo has no pretrained encoder, so both learn together, end to
end, from the energy target alone: video window → ``rewas_rt.video.normalize``/``segments``
(14 segments × 16 frames, 224²) → Synchformer (B, 14, 8, D) → 112 steps → φ (attention over
time) → energy (112,); loss = MSE against ``energy_112`` of the window's real audio (the same
target as ``train_phi``). To keep a CPU step cheap, a step sees ``video.segments`` consecutive
segments of each window (8 steps of the target per segment): the encoder treats segments
independently, and φ's attention has no position embedding, so the full 14 segments at
generation are the same computation over a longer sequence.

Initialisation: the Synchformer's CLS token and position/temporal embeddings (zeros in the
module, loaded from the release otherwise) are drawn N(0, 0.02²), as ViTs are initialised;
φ's output bias starts at the targets' mean (see ``train_phi.build_phi``). Validation: on the
validation windows with all 14 segments, energy MAE (``training.data.energy_mae``), the median
Pearson r between predicted and real energy (512 frames) and the constant-curve MAE baseline.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rewas_rt import constants as C
from rewas_rt import energy as E
from rewas_rt.video import normalize, segments
from training import trainlib
from training.config import VideoTrainerConfig
from training.data import energy_mae
from training.demo_common import main as demo_main
from training.demo_common import model_config, start_run, val_summary
from training.demo_data import FrameArrays
from training.models.phi import Phi
from training.models.synchformer import SynchformerVideoEncoder

COMPONENT = "phi"
DEFAULTS = VideoTrainerConfig  # the typed config (training/config.py)


def window_segments(frames: FrameArrays, w: int) -> np.ndarray:
    """(14, 3, 16, 224, 224) float32 of window ``w``."""
    return segments(normalize(frames.window_frames(w)))[0]


def run(cfg: dict, out: Path, args=None, log=print) -> dict:
    t, k = cfg["train"], int(cfg["video"]["segments"])
    if not 1 <= k <= C.SEGMENTS:
        raise ValueError(f"video.segments {k}: between 1 and {C.SEGMENTS}")
    device, manifest, train_a, val_a = start_run(cfg, out, log)
    train_f, val_f = FrameArrays(manifest, "train", log), FrameArrays(manifest, "val", log)
    assert [w[1] for w in train_f.windows] == [w[1] for w in train_a.windows]
    sf_cfg, phi_cfg = model_config(cfg, "synchformer"), model_config(cfg, COMPONENT)
    if phi_cfg.width != sf_cfg.embed_dim:
        raise ValueError(f"phi width {phi_cfg.width} != synchformer embed_dim {sf_cfg.embed_dim}")
    mean_target = float(train_a.energy_112.mean())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        enc = SynchformerVideoEncoder(sf_cfg)
        with torch.no_grad():
            for p in (enc.cls_token, enc.pos_embed, enc.temp_embed, enc.spatial_attn_agg.cls_token):
                p.normal_(0.0, 0.02)
        phi = Phi(phi_cfg)
        with torch.no_grad():
            phi.projection2[-1].bias.fill_(mean_target)
    enc, phi = enc.to(device), phi.to(device)
    steps_per_seg = C.ENERGY_STEPS // C.SEGMENTS

    def micro_step(step: int) -> torch.Tensor:
        idx = torch.randint(len(train_f.windows), (t["batch_size"],)).tolist()
        first = torch.randint(0, C.SEGMENTS - k + 1, (len(idx),)).tolist()
        video = np.stack([window_segments(train_f, w)[s:s + k] for w, s in zip(idx, first)])
        target = np.stack([train_a.energy_112[w, s * steps_per_seg:(s + k) * steps_per_seg]
                           for w, s in zip(idx, first)])
        feats = enc(torch.from_numpy(video).to(device)).flatten(1, 2)  # (B, k·8, D)
        return F.mse_loss(phi(feats).squeeze(-1), torch.from_numpy(target).to(device))

    def validate(step: int) -> dict:
        preds = []
        for w in range(len(val_f.windows)):
            feats = enc(torch.from_numpy(window_segments(val_f, w)[None]).to(device)).flatten(1, 2)
            preds.append(phi(feats).squeeze(-1)[0].cpu().numpy())
        pred = np.stack(preds)
        target = val_a.energy_512
        rs = [E.pearson(E.energy_from_phi(p[None])[0], tg) for p, tg in zip(pred, target)]
        return {"val_energy_mae": energy_mae(pred, target), "val_energy_r_median": float(np.nanmedian(rs)),
                "val_mae_constant_baseline": energy_mae(np.full_like(pred, mean_target), target)}

    meta = {"trained": {"trainer": "training.train_video", "seed": cfg["seed"], "data": str(manifest),
                        "with": "synchformer"}}
    return trainlib.run(cfg, out, COMPONENT, phi, phi_cfg, [*enc.parameters(), *phi.parameters()], device,
                        micro_step, validate, meta, None, args.resume if args else None, None, log,
                        f"Synchformer + φ end to end, {k} segments per step",
                        also={"synchformer": (enc, sf_cfg)})


from rewas_rt.errors import cli_main  # noqa: E402


@cli_main
def main(argv: list[str] | None = None) -> int:
    return demo_main(argv, "video", __doc__, DEFAULTS, run, val_summary)


if __name__ == "__main__":
    sys.exit(main())
