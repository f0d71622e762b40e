"""Training data: manifest, 5.12 s windows, energy targets and the frozen-encoder feature cache.

Manifest (``.jsonl``, one object per line, or ``.csv`` with a header), fields:

* ``video`` (required): path of the video file, relative to the manifest's folder;
* ``caption`` (or, when absent, ``label``): the text prompt;
* ``split``: ``train`` (default), ``val`` or ``test`` (held out: no trainer reads it);
* ``start``: seconds, the validation window's start and the earliest training start (default 0);
* ``duration``: seconds of usable media (probed with PyAV when absent);
* ``id``: a name for logs (default: the video's file name).

Other fields (the synthetic set's ``events``) are kept in ``Item.extra``.

Windows. Audio comes from the video file itself (``rewas_rt.audio.load_audio``, 16 kHz mono).
A window starting at ``s`` pairs the **5 s video window** [s, s+5) (125 frames at 25 fps, the
Synchformer's input) with the **5.12 s audio window** [s, s+5.12) (81 920 samples = 512 mel
frames = 128 latent frames), as the original does: the latent length fixes 5.12 s, and the 112
φ steps of the 5 s video are compared with the 5.12 s energy curve resized to 112 steps (a 2.4 %
stretch the original accepts; generation trims the audio back to 5 s). Audio past the end of the
file is zero-padded. Training draws the start at random from a grid (``window_grid_s``, default
0.32 s = 8 video frames = 8 latent frames) over [start, duration − 5.12]; validation always
uses ``start``. The grid keeps the number of distinct windows finite so that every window's
features are computed once and cached.

Targets (docs/design.md §4, energy of real audio, via ``rewas_rt.energy``):
log-mel (512, 64) of the normalised waveform; energy = mean over mel bins (512,) →
nearest resize to 112 → Savitzky–Golay(9, 2) = ``energy_112`` (φ's target) → nearest resize to
512 = ``energy_512`` (= ``energy_target(wave)``: the adapter's hint and the reference of the
validation energy MAE).

Feature cache (``FeatureStore``). Four kinds of entries, each under its own key folder
``<cache>/<kind>-<key>/``; the key is a sha256 over everything the entry depends on, so a
change of weights or preprocessing selects a new folder and stale features are never read:

* ``video``: Synchformer features (112, D) float32 — key: Synchformer weights (sha256 of the
  safetensors file + config, or of the tensors for random weights) + video preprocessing
  parameters;
* ``audio``: ``energy_112``, ``energy_512`` — key: audio preprocessing parameters;
* ``vae``: VAE posterior moments (mean ‖ logvar, (16, 128, 16)) of the target log-mel and of
  the energy hint (energy_512 copied to all 64 bins) — key: VAE weights + audio preprocessing.
  The *moments* are cached, not a latent: the trainer draws the posterior sample
  ``scale·(mean + std·n)`` with fresh noise at every step, as the original's ``get_input`` does
  (``data.latent = "sample"``), or uses ``scale·mean`` (``"mean"``; the tiny configs use it
  because a random-weight VAE has posteriors far wider than its means);
* ``clap``: L2-normalised CLAP text embedding (512,) per caption — key: CLAP weights +
  tokenizer.

Entries of one window are named by the clip (resolved path, size, mtime) and the start in ms.
Encoders are loaded only when an entry is missing, so a fully cached run never loads them.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from rewas_rt import constants as C
from rewas_rt import energy as E
from rewas_rt.atomic import atomic_path
from rewas_rt.errors import RewasError
from training.components import ComponentSource, fingerprint

CACHE_VERSION = 1
DEFAULT_GRID_S = 0.32

# Everything the cached arrays depend on besides the encoder weights. Change the code behind
# one of these and its value here (or CACHE_VERSION) with it.
VIDEO_PREP = {
    "loader": "rewas_rt.video.load_video/normalize/segments",
    "fps": C.FPS, "seconds": C.VIDEO_SECONDS, "frames": C.FRAMES, "short_side": C.SHORT_SIDE, "crop": C.CROP,
    "mean": C.VIDEO_MEAN, "std": C.VIDEO_STD, "segments": C.SEGMENTS, "segment_len": C.SEGMENT_LEN,
    "segment_stride": C.SEGMENT_STRIDE, "segment_start": C.SEGMENT_START,
}
AUDIO_PREP = {
    "loader": "rewas_rt.audio.load_audio", "sample_rate": C.SAMPLE_RATE, "window_seconds": C.WINDOW_SECONDS,
    "wave_samples": C.WAVE_SAMPLES, "pad": "zeros", "n_fft": C.N_FFT, "hop": C.HOP, "win": C.WIN,
    "n_mels": C.N_MELS, "fmin": C.FMIN, "fmax": C.FMAX, "stft_pad": C.STFT_PAD, "log_clamp": C.LOG_MEL_CLAMP,
    "wav_peak": C.WAV_PEAK, "wav_eps": C.WAV_NORM_EPS, "energy_steps": C.ENERGY_STEPS,
    "savgol": [C.SAVGOL_WINDOW, C.SAVGOL_ORDER], "mel_frames": C.MEL_FRAMES,
}


class DataError(RewasError, ValueError):
    """A manifest or media problem; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Item:
    id: str
    video: Path
    caption: str
    split: str = "train"
    start: float = 0.0
    duration: float | None = None
    label: str = ""
    extra: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)


_KNOWN = {"id", "video", "caption", "label", "split", "start", "duration"}


def _item(row: dict, base: Path, where: str) -> Item:
    row = {k: v for k, v in row.items() if v not in (None, "")}
    if "video" not in row:
        raise DataError(f"{where}: no 'video' field")
    caption = row.get("caption", row.get("label"))
    if caption is None:
        raise DataError(f"{where}: needs a 'caption' or a 'label'")
    split = row.get("split", "train")
    if split not in ("train", "val", "test"):
        raise DataError(f"{where}: split {split!r} is not 'train', 'val' or 'test'")
    video = Path(row["video"])
    video = video if video.is_absolute() else base / video
    try:
        start = float(row.get("start", 0.0))
        duration = float(row["duration"]) if "duration" in row else None
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None
    if start < 0:
        raise DataError(f"{where}: negative start {start}")
    extra = {k: v for k, v in row.items() if k not in _KNOWN}
    return Item(str(row.get("id", video.stem)), video, str(caption), split, start, duration,
                str(row.get("label", "")), extra)


def read_manifest(path: Path) -> list[Item]:
    """Read a ``.jsonl`` (or ``.json`` lines) or ``.csv`` manifest; paths resolve against its folder."""
    path = Path(path)
    base = path.resolve().parent
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    items = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            for n, row in enumerate(csv.DictReader(f), start=2):
                items.append(_item(row, base, f"{path}:{n}"))
    else:
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
            items.append(_item(row, base, f"{path}:{n}"))
    if not items:
        raise DataError(f"{path}: no items")
    return items


def write_manifest(path: Path, rows: Iterable[dict]) -> None:
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))


def probe_duration(path: Path) -> float:
    """Seconds of media in the file (the container's duration, else the longest stream's)."""
    import av

    with av.open(str(path)) as c:
        if c.duration:
            return c.duration / 1e6
        best = 0.0
        for s in c.streams:
            if s.duration and s.time_base:
                best = max(best, float(s.duration * s.time_base))
        return best


def item_duration(item: Item) -> float:
    return item.duration if item.duration is not None else probe_duration(item.video)


def train_starts(item: Item, grid: float = DEFAULT_GRID_S) -> list[float]:
    """Candidate training starts: ``start + k·grid`` while the 5.12 s audio window fits (at least one)."""
    room = item_duration(item) - C.WINDOW_SECONDS - item.start
    n = max(0, math.floor(room / grid + 1e-6)) if grid > 0 else 0
    return [round(item.start + k * grid, 3) for k in range(n + 1)]


def val_start(item: Item) -> float:
    return item.start


# --- audio and video of one window ------------------------------------------------------

def audio_window(path: Path, start: float) -> np.ndarray:
    """(81920,) float32 mono 16 kHz from ``start``; zero-padded past the end of the file."""
    from rewas_rt.audio import load_audio

    wave = np.asarray(load_audio(path, start=start, duration=C.WINDOW_SECONDS, sr=C.SAMPLE_RATE), np.float32)
    wave = wave.reshape(-1)[: C.WAVE_SAMPLES]
    if len(wave) < C.WAVE_SAMPLES:
        wave = np.pad(wave, (0, C.WAVE_SAMPLES - len(wave)))
    return wave


def audio_targets(wave: np.ndarray) -> dict[str, np.ndarray]:
    """log_mel (512, 64), energy_112 (Savitzky–Golay'd, φ's target), energy_512 (the hint)."""
    log_mel = E.log_mel(E.normalize_wav(wave))
    energy_112 = E.savgol(E.resize_nearest(E.energy_from_log_mel(log_mel), C.ENERGY_STEPS))
    energy_512 = E.resize_nearest(energy_112, C.MEL_FRAMES)
    return {"log_mel": log_mel.astype(np.float32), "energy_112": energy_112.astype(np.float32),
            "energy_512": energy_512.astype(np.float32)}


def video_segments(path: Path, start: float) -> np.ndarray:
    """(1, 14, 3, 16, 224, 224) float32: the Synchformer's input for the 5 s window at ``start``."""
    from rewas_rt.video import load_video, normalize, segments

    clip = load_video(path, start, float(C.VIDEO_SECONDS))
    return np.ascontiguousarray(segments(normalize(clip.frames)), dtype=np.float32)


# --- the cache --------------------------------------------------------------------------

def _atomic_save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def clip_key(path: Path) -> str:
    """Names a media file by resolved path, size and modification time (no full read of big files)."""
    st = Path(path).stat()
    return hashlib.sha256(f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]


class FeatureCache:
    """``<root>/<kind>-<key16>/<entry>.npz`` with atomic writes and a small in-memory LRU."""

    def __init__(self, root: Path, memory_items: int = 4096):
        self.root = Path(root)
        self.memory_items = memory_items
        self._memory: OrderedDict[tuple[str, str], dict[str, np.ndarray]] = OrderedDict()
        self.hits = self.misses = 0

    def folder(self, kind: str, key: str, describe: dict | None = None) -> Path:
        d = self.root / f"{kind}-{key[:16]}"
        if not d.is_dir():
            d.mkdir(parents=True, exist_ok=True)
            if describe is not None:
                (d / "key.json").write_text(json.dumps({"key": key, **describe}, indent=1, default=str) + "\n")
        return d

    def get(self, folder: Path, entry: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        mkey = (str(folder), entry)
        if mkey in self._memory:
            self._memory.move_to_end(mkey)
            self.hits += 1
            return self._memory[mkey]
        path = folder / f"{entry}.npz"
        if path.is_file():
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
            self.hits += 1
        else:
            arrays = {k: np.ascontiguousarray(v) for k, v in compute().items()}
            _atomic_save(path, arrays)
            self.misses += 1
        self._memory[mkey] = arrays
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)
        return arrays


class FeatureStore:
    """Frozen-encoder features and audio targets of (item, start) windows, computed once and cached.

    ``video_prep`` / ``audio_prep`` override the preprocessing descriptions that enter the keys
    (tests use them to show a key change); the computation itself is always this module's.
    """

    def __init__(self, source: ComponentSource, cache_dir: Path, device: str | torch.device = "cpu",
                 memory_items: int = 4096, video_prep: dict | None = None, audio_prep: dict | None = None,
                 log: Callable[[str], None] | None = None):
        self.source = source
        self.cache = FeatureCache(cache_dir, memory_items)
        self.device = torch.device(device)
        self.video_prep = {**VIDEO_PREP, **(video_prep or {})}
        self.audio_prep = {**AUDIO_PREP, **(audio_prep or {})}
        self._models: dict[str, torch.nn.Module] = {}
        self._folders: dict[str, Path] = {}
        self.loads: dict[str, int] = {}  # encoder name -> times loaded (tests: 0 when all cached)
        self.log = log or (lambda msg: None)

    # keys
    def key(self, kind: str) -> str:
        return self._key_and_description(kind)[0]

    def _key_and_description(self, kind: str) -> tuple[str, dict]:
        if kind == "video":
            d = {"synchformer": self.source.fingerprint("synchformer"), "prep": self.video_prep}
        elif kind == "audio":
            d = {"prep": self.audio_prep}
        elif kind == "vae":
            d = {"vae": self.source.fingerprint("vae"), "prep": self.audio_prep}
        elif kind == "clap":
            d = {"clap_text": self.source.fingerprint("clap_text"), "tokenizer": self.source.tokenizer_fingerprint()}
        else:
            raise KeyError(kind)
        d = {"kind": kind, "version": CACHE_VERSION, **d}
        return fingerprint(d), d

    def folder(self, kind: str) -> Path:
        if kind not in self._folders:
            key, describe = self._key_and_description(kind)
            self._folders[kind] = self.cache.folder(kind, key, describe)
        return self._folders[kind]

    def model(self, name: str) -> torch.nn.Module:
        if name not in self._models:
            t0 = time.perf_counter()
            m = self.source.load(name)
            for p in m.parameters():
                p.requires_grad_(False)
            self._models[name] = m.eval().to(self.device)
            self.loads[name] = self.loads.get(name, 0) + 1
            self.log(f"loaded frozen {name} from {self.source.name} ({time.perf_counter() - t0:.1f} s)")
        return self._models[name]

    @staticmethod
    def window_entry(item: Item, start: float) -> str:
        return f"{clip_key(item.video)}_{round(start * 1000):08d}"

    # entries
    def audio(self, item: Item, start: float) -> dict[str, np.ndarray]:
        def compute():
            t = audio_targets(audio_window(item.video, start))
            return {"energy_112": t["energy_112"], "energy_512": t["energy_512"]}

        return self.cache.get(self.folder("audio"), self.window_entry(item, start), compute)

    def video_features(self, item: Item, start: float) -> np.ndarray:
        def compute():
            seg = torch.from_numpy(video_segments(item.video, start)).to(self.device)
            with torch.no_grad():
                feats = self.model("synchformer")(seg)  # (1, 14, 8, D)
            return {"features": feats.reshape(C.ENERGY_STEPS, -1).float().cpu().numpy()}

        return self.cache.get(self.folder("video"), self.window_entry(item, start), compute)["features"]

    def vae_moments(self, item: Item, start: float) -> dict[str, np.ndarray]:
        def compute():
            t = audio_targets(audio_window(item.video, start))
            mel = torch.from_numpy(t["log_mel"])[None, None]
            hint = torch.from_numpy(E.energy_to_vae_input(t["energy_512"][None]))
            with torch.no_grad():
                moments = self.model("vae").encode_moments(torch.cat([mel, hint]).to(self.device)).float().cpu()
            return {"target": moments[0].numpy(), "hint": moments[1].numpy()}

        return self.cache.get(self.folder("vae"), self.window_entry(item, start), compute)

    def text_embedding(self, caption: str) -> np.ndarray:
        def compute():
            ids = self.source.tokenizer().encode(caption).ids
            ids_t = torch.tensor([ids], dtype=torch.int64, device=self.device)
            with torch.no_grad():
                emb = self.model("clap_text")(ids_t, torch.ones_like(ids_t))
            return {"embedding": emb[0].float().cpu().numpy()}

        entry = hashlib.sha256(caption.encode()).hexdigest()[:20]
        return self.cache.get(self.folder("clap"), entry, compute)["embedding"]

    def precompute(self, windows: list[tuple[Item, float]], kinds: tuple[str, ...], captions: bool = False,
                   every: int = 10) -> dict:
        """Fill the cache for these windows; logs progress. Returns counts and timing."""
        t0, hits0, misses0 = time.perf_counter(), self.cache.hits, self.cache.misses
        get = {"audio": self.audio, "video": self.video_features, "vae": self.vae_moments}
        for n, (item, start) in enumerate(windows, start=1):
            for kind in kinds:
                get[kind](item, start)
            if n % every == 0 or n == len(windows):
                self.log(f"features {n}/{len(windows)} windows ({', '.join(kinds)}): "
                         f"{self.cache.misses - misses0} entries computed, {self.cache.hits - hits0} cached, "
                         f"{time.perf_counter() - t0:.1f} s")
        if captions:
            for caption in sorted({item.caption for item, _ in windows} | {""}):
                self.text_embedding(caption)
        return {"windows": len(windows), "computed": self.cache.misses - misses0,
                "cached": self.cache.hits - hits0, "seconds": time.perf_counter() - t0}


def windows(items: list[Item], split: str, grid: float = DEFAULT_GRID_S) -> list[tuple[Item, float]]:
    """Every window of a split: all grid starts for training, the fixed start for validation."""
    out = []
    for item in items:
        if item.split != split:
            continue
        starts = train_starts(item, grid) if split == "train" else [val_start(item)]
        out.extend((item, s) for s in starts)
    return out


def energy_mae(pred_112: np.ndarray, target_512: np.ndarray) -> float:
    """Validation energy MAE (the one number the φ reports use): φ's (B, 112) output is
    post-processed exactly as at generation (``energy_from_phi``: Savitzky–Golay, nearest resize
    to 512) and compared with the real audio's energy curve (``energy_target``, (B, 512));
    mean absolute difference over frames and windows, in log-mel units (nats)."""
    pred = E.energy_from_phi(np.asarray(pred_112, np.float32).reshape(len(target_512), -1))
    return float(np.mean(np.abs(pred - np.asarray(target_512, np.float32))))
