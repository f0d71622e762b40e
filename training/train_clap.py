"""Train the CLAP text tower (RoBERTa + projection) contrastively: a demo-model stage.

    python -m training.train_clap --config demo --data DATA/manifest.jsonl --out runs/clap

Tokenizer: a byte-level BPE (``tokenizers``, RoBERTa's pre-tokenizer, post-processor and
special ids: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, so "" → [0, 2]) fitted to every caption
wording of the synthetic vocabulary (``training.synthetic.CAPTIONS``), written to
``<out>/tokenizer.json`` before training (and reused on resume).

Model: the ``clap_text`` component (RoBERTa → CLS → Linear/ReLU/Linear → L2-normalised 512-d)
and, for training only, an audio tower: a small strided CNN over the log-mel window with the
same 512-d normalised output. Loss: CLAP's symmetric contrastive loss with a learnable
temperature (init 1/0.07), where every pair of the same class counts as a positive (targets
spread uniformly over them: with six classes a batch holds many same-class pairs, and calling
them negatives would fight the objective). Each training item pairs a window's audio with one
of its class's caption wordings drawn at random, so every wording is learned.

Validation: text → audio retrieval on the validation windows: the share of validation clips
whose nearest caption embedding (over all wordings) belongs to their class, and the mean cosine
between captions of the same class vs different classes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rewas_rt import constants as C
from training import trainlib
from training.config import ClapTrainerConfig
from training.demo_common import main as demo_main
from training.demo_common import model_config, start_run, val_summary
from training.models.clap_text import ClapText
from training.synthetic import CAPTIONS, CLASSES
from training.tokenizer import fit_bpe

COMPONENT = "clap_text"
TOKENIZER_FILE = "tokenizer.json"
DEFAULTS = ClapTrainerConfig  # the typed config (training/config.py)


def caption_corpus() -> list[str]:
    return [c for label in CLASSES for c in CAPTIONS[label]]


def fit_tokenizer(captions: list[str], vocab_size: int):
    """A byte-level BPE with RoBERTa's conventions fitted to ``captions`` (at most ``vocab_size`` tokens)."""
    tok = fit_bpe(captions, vocab_size)
    if tok.encode("").ids != [0, 2] or tok.get_vocab_size() > vocab_size:
        raise ValueError("fitted tokenizer does not follow RoBERTa's conventions")
    return tok


class AudioTower(nn.Module):
    """log-mel (B, 512, 64) → L2-normalised (B, 512): strided convs, mean over time and frequency."""

    def __init__(self, channels: list[int], dim: int = C.TEXT_EMBED_DIM):
        super().__init__()
        layers, c_in = [], 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(8, c), nn.SiLU()]
            c_in = c
        self.net = nn.Sequential(*layers)
        self.proj = nn.Sequential(nn.Linear(2 * c_in, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        h = self.net((mel[:, None] + 5.0) / 3.0)  # log-mel sits around -5 ± 3
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return F.normalize(self.proj(h), dim=-1)


class Temperature(nn.Module):
    def __init__(self):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))


def encode_texts(model: ClapText, tok, texts: list[str], device) -> torch.Tensor:
    enc = [tok.encode(t).ids for t in texts]
    n = max(map(len, enc))
    ids = torch.full((len(enc), n), 1, dtype=torch.int64)
    mask = torch.zeros((len(enc), n), dtype=torch.int64)
    for i, e in enumerate(enc):
        ids[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), 1
    return model(ids.to(device), mask.to(device))


def run(cfg: dict, out: Path, args=None, log=print) -> dict:
    t = cfg["train"]
    device, manifest, train, val = start_run(cfg, out, log)
    text_cfg = model_config(cfg, COMPONENT)
    tok = fit_tokenizer(caption_corpus(), text_cfg.vocab_size)
    tok.save(str(out / TOKENIZER_FILE))
    log(f"tokenizer: {tok.get_vocab_size()} tokens fitted to {len(caption_corpus())} captions -> {out / TOKENIZER_FILE}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        text = ClapText(text_cfg).to(device)
        audio = AudioTower(cfg["clap"]["audio_channels"]).to(device)
        temp = Temperature().to(device)
    mels, labels = torch.from_numpy(train.log_mel), torch.from_numpy(train.label)
    wordings = {i: list(CAPTIONS[c]) for i, c in enumerate(CLASSES)}

    def micro_step(step: int) -> torch.Tensor:
        idx = torch.randint(len(mels), (t["batch_size"],))
        lab = labels[idx]
        picks = torch.rand(len(idx)).tolist()
        caps = [wordings[int(c)][int(u * len(wordings[int(c)]))] for c, u in zip(lab, picks)]
        a = audio(mels[idx].to(device))
        x = encode_texts(text, tok, caps, device)
        logits = temp.logit_scale.clamp(max=np.log(100.0)).exp() * x @ a.T
        same = (lab[:, None] == lab[None, :]).float().to(device)
        target = same / same.sum(1, keepdim=True)
        return 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                      + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean())

    def validate(step: int) -> dict:
        caps = caption_corpus()
        cap_class = torch.tensor([CLASSES.index(c) for c in CLASSES for _ in CAPTIONS[c]])
        x = encode_texts(text, tok, caps, device)
        a = audio(torch.from_numpy(val.log_mel).to(device))
        nearest = cap_class[(a @ x.T).argmax(1).cpu()]
        sim = x @ x.T
        same = (cap_class[:, None] == cap_class[None, :]).to(device)
        off = ~torch.eye(len(caps), dtype=torch.bool, device=device)
        return {"val_audio_to_text_acc": float((nearest.numpy() == val.label).mean()),
                "val_cos_same_class": float(sim[same & off].mean()), "val_cos_other_class": float(sim[~same].mean())}

    meta = {"trained": {"trainer": "training.train_clap", "seed": cfg["seed"], "data": str(manifest),
                        "tokenizer_vocab": tok.get_vocab_size()}}
    params = [*text.parameters(), *audio.parameters(), *temp.parameters()]
    return trainlib.run(cfg, out, COMPONENT, text, text_cfg, params, device, micro_step, validate, meta, None,
                        args.resume if args else None, None, log, "contrastive vs an audio CNN",
                        also={"audio_tower": (audio, None), "temperature": (temp, None)})


from rewas_rt.errors import cli_main  # noqa: E402


@cli_main
def main(argv: list[str] | None = None) -> int:
    return demo_main(argv, "clap", __doc__, DEFAULTS, run, val_summary)


if __name__ == "__main__":
    sys.exit(main())
