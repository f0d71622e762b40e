"""Arrays the demo trainers share, decoded once per data set and cached beside the manifest.

The demo trainers (``train_vae``, ``train_vocoder``, ``train_clap``, ``train_unet``,
``train_video``) train *every* component, so they cannot use ``FeatureStore``'s
frozen-encoder cache; what they need are the raw targets of each 5.12 s window:

* ``AudioArrays``: per window the normalised waveform (81 920 samples, ``normalize_wav``, the
  vocoder's target), its log-mel (512, 64) (``rewas_rt.energy.log_mel``: the VAE's input and
  target), ``energy_112`` / ``energy_512`` (``training.data.audio_targets``), the class index
  and the caption. Windows are ``training.data.windows`` (all 0.32 s grid starts for train,
  the fixed start for val/test). File: ``<cache>/demo-audio-<split>-<key>.npz``.
* ``FrameArrays``: the 224×224 RGB frames of every clip at 25 fps (``rewas_rt.video.load_video``
  over the whole clip) in a uint8 memory map, ``<cache>/demo-frames-<split>-<key>.u8``; the
  window at grid start ``s`` is frames ``[25 s, 25 s + 125)`` (grid starts are whole frames).

The key is a hash of the manifest's lines and the preprocessing, so a changed data set or
preprocessing never reads stale arrays.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from rewas_rt import constants as C
from rewas_rt import energy as E
from rewas_rt.atomic import atomic_path
from training.data import AUDIO_PREP, VIDEO_PREP, Item, read_manifest, windows
from training.synthetic import CLASSES

DEMO_DATA_VERSION = 1


def _key(manifest: Path, split: str, what: dict) -> str:
    blob = json.dumps({"manifest": Path(manifest).read_text(), "split": split, "v": DEMO_DATA_VERSION, **what},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir(manifest: Path) -> Path:
    d = Path(manifest).resolve().parent / "cache"
    d.mkdir(parents=True, exist_ok=True)
    return d


def split_windows(items: list[Item], split: str) -> list[tuple[Item, float]]:
    if split == "test":  # `windows` only knows the trained splits; test clips use their fixed start
        return [(it, it.start) for it in items if it.split == "test"]
    return windows(items, split)


class AudioArrays:
    def __init__(self, manifest: Path, split: str, log=print):
        items = read_manifest(manifest)
        self.windows = split_windows(items, split)
        if not self.windows:
            raise ValueError(f"{manifest}: no '{split}' items")
        path = cache_dir(manifest) / f"demo-audio-{split}-{_key(manifest, split, {'audio': AUDIO_PREP})}.npz"
        if not path.is_file():
            self._build(path, log)
        with np.load(path) as z:
            self.wave, self.log_mel = z["wave"], z["log_mel"]
            self.energy_112, self.energy_512 = z["energy_112"], z["energy_512"]
            self.label = z["label"]
        self.captions = [it.caption for it, _ in self.windows]
        self.labels = [it.label for it, _ in self.windows]

    def _build(self, path: Path, log) -> None:
        from rewas_rt.audio import load_audio

        from training.data import audio_targets

        out: dict[str, list] = {"wave": [], "log_mel": [], "energy_112": [], "energy_512": [], "label": []}
        full: dict[Path, np.ndarray] = {}
        for n, (item, start) in enumerate(self.windows, start=1):
            if item.video not in full:
                full = {item.video: np.asarray(load_audio(item.video, sr=C.SAMPLE_RATE), np.float32).reshape(-1)}
            i0 = round(start * C.SAMPLE_RATE)
            wave = full[item.video][i0: i0 + C.WAVE_SAMPLES]
            wave = np.pad(wave, (0, C.WAVE_SAMPLES - len(wave)))
            t = audio_targets(wave)
            out["wave"].append(E.normalize_wav(wave).astype(np.float32))
            for k in ("log_mel", "energy_112", "energy_512"):
                out[k].append(t[k])
            out["label"].append(CLASSES.index(item.label) if item.label in CLASSES else -1)
            if n % 100 == 0 or n == len(self.windows):
                log(f"audio arrays: {n}/{len(self.windows)} windows")
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{k: np.stack(v) for k, v in out.items()})

    def __len__(self) -> int:
        return len(self.windows)


class FrameArrays:
    """Frames of every clip of a split (uint8 memmap) and the window → (clip, first frame) map."""

    def __init__(self, manifest: Path, split: str, log=print):
        items = read_manifest(manifest)
        self.windows = split_windows(items, split)
        clips = sorted({it.id: it for it, _ in self.windows}.values(), key=lambda it: it.id)
        self.clip_index = {it.id: i for i, it in enumerate(clips)}
        self.n_frames = max(round((it.duration or C.VIDEO_SECONDS) * C.FPS) for it in clips)
        key = _key(manifest, split, {"video": VIDEO_PREP, "frames": self.n_frames})
        path = cache_dir(manifest) / f"demo-frames-{split}-{key}.u8"
        shape = (len(clips), self.n_frames, C.CROP, C.CROP, 3)
        if not path.is_file():
            from rewas_rt.video import load_video

            with atomic_path(path) as tmp:
                mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
                for i, it in enumerate(clips):
                    mm[i] = load_video(it.video, 0.0, self.n_frames / C.FPS).frames
                    if (i + 1) % 20 == 0 or i + 1 == len(clips):
                        log(f"frames: {i + 1}/{len(clips)} clips")
                mm.flush()
                del mm
        self.frames = np.load(path, mmap_mode="r")

    def window_frames(self, w: int) -> np.ndarray:
        """(125, 224, 224, 3) uint8 of window ``w``."""
        item, start = self.windows[w]
        f0 = round(start * C.FPS)
        return np.asarray(self.frames[self.clip_index[item.id], f0: f0 + C.FRAMES])
