"""The ReWaS generation pipeline on exported engines (docs/design.md §1), NumPy only.

Differences from the original that do not change the maths (each is tested
against ``training/pipeline.py``): both CFG branches run in one engine call;
the text embeddings, the hint latent and the "" embedding are computed once per
request (the latter once per process); prompts are tokenised unpadded.

Randomness: every candidate has its own generator, ``numpy.random.default_rng
([seed, candidate])``, drawn in the original's order (hint posterior noise, then
x_T, then one draw per DDIM step). A result therefore depends only on the seed
and candidate index, never on what else shared the batch.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rewas_rt import constants as C
from rewas_rt.backends import Engine, select_backend
from rewas_rt.ddim import make_schedule, sample
from rewas_rt.energy import energy_from_phi
from rewas_rt.energy_control import EnergyEdit
from rewas_rt.graphs import DYNAMIC_AXES, GRAPHS
from rewas_rt.latent import scaled_latent
from rewas_rt.manifest import open_engine_dir
from rewas_rt.timings import TimingHook, Timings  # noqa: F401 - part of the pipeline's API
from rewas_rt.tokenizer import PromptTokenizer
from rewas_rt.video import normalize, segments

log = logging.getLogger("rewas_rt")

# Largest batch one engine call may take (the TensorRT profiles' maximum).
MAX_BATCH = min(DYNAMIC_AXES["batch"][2], DYNAMIC_AXES["cfg_batch"][2] // 2)


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    steps: int = C.DDIM_STEPS
    guidance: float = C.GUIDANCE
    eta: float = C.ETA
    candidates: int = 1
    hint_from_mean: bool = False  # the original samples the hint posterior
    energy_edit: EnergyEdit = EnergyEdit()


@dataclasses.dataclass
class Request:
    """One prompt for one clip. ``frames``: (125, 224, 224, 3) uint8 at 25 fps (video.load_video);
    ``energy``: a (512,) curve replacing the one predicted from the video (frames may then be None)."""

    prompt: str
    seed: int
    frames: np.ndarray | None = None
    energy: np.ndarray | None = None


@dataclasses.dataclass
class Result:
    waveforms: np.ndarray  # (candidates, 81920) float32 in [-1, 1], 16 kHz
    energy: np.ndarray  # (512,) the curve that drove generation (after edits)
    seed: int


def candidate_rng(seed: int, candidate: int) -> np.random.Generator:
    return np.random.default_rng([seed, candidate])


def _normal(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


class Pipeline:
    def __init__(self, engine_dir: str | Path, backend: str | None = None, threads: int | None = None,
                 checksums: bool = True, timing_hook: TimingHook | None = None):
        plans = open_engine_dir(engine_dir, backend="onnx", checksums=False).has_engines
        self.backend = select_backend(backend, has_plans=plans, threads=threads)
        is_trt = self.backend.name == "tensorrt"
        self.dir = open_engine_dir(engine_dir, backend="tensorrt" if is_trt else "onnx", checksums=checksums,
                                   tensorrt=self.backend.target() if is_trt else None)
        self.tokenizer = PromptTokenizer(self.dir.tokenizer_path)
        self._engines: dict[str, Engine] = {}
        self._uncond: np.ndarray | None = None
        self.timings = Timings(timing_hook)

    def engine(self, graph: str) -> Engine:
        if graph not in self._engines:
            files = self.dir.graph(graph)
            paths = {"onnx": files.onnx, **({"plan": files.plan} if files.plan else {})}
            spec = GRAPHS[graph].resolved(feature_dim=self.dir.feature_dim)
            with self.timings.stage(f"load {graph}"):
                self._engines[graph] = self.backend.open(graph, paths, spec)
        return self._engines[graph]

    def _run(self, graph: str, **feeds: np.ndarray) -> np.ndarray:
        (out,) = self.engine(graph).run(feeds).values()
        return out

    # ---- stages -------------------------------------------------------------------------

    def predict_energy(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Clips of (125, 224, 224, 3) uint8 frames -> smoothed energy curves (B, 512)."""
        with self.timings.stage("video"):
            video = np.concatenate([normalize(segments(f)) for f in frames])
        with self.timings.stage("synchformer"):
            feats = self._run("synchformer", video=video)
        with self.timings.stage("phi"):
            phi_out = self._run("phi", features=feats.reshape(feats.shape[0], C.ENERGY_STEPS, -1))
        with self.timings.stage("energy_post"):
            return energy_from_phi(phi_out[..., 0])

    def text_embeddings(self, prompts: Sequence[str]) -> np.ndarray:
        ids, mask = self.tokenizer.batch(list(prompts))
        with self.timings.stage("clap_text"):
            return self._run("clap_text", input_ids=ids, attention_mask=mask)

    def unconditional_embedding(self) -> np.ndarray:
        """The CLAP embedding of "" (1, 512), computed once."""
        if self._uncond is None:
            ids = np.asarray([self.dir.unconditional_ids], dtype=np.int64)
            with self.timings.stage("clap_text"):
                self._uncond = self._run("clap_text", input_ids=ids, attention_mask=np.ones_like(ids))
        return self._uncond

    def hint_latents(self, energy: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """(B, 512) energy curves -> scaled hint latents (B, 8, 128, 16)."""
        mel = np.repeat(np.asarray(energy, np.float32)[:, None, :, None], C.N_MELS, axis=-1)
        with self.timings.stage("vae_encoder"):
            moments = self._run("vae_encoder", mel=mel)
        return scaled_latent(moments, self.dir.scale_factor, noise)

    def denoise(self, x: np.ndarray, t: np.ndarray, cond: dict[str, np.ndarray]) -> np.ndarray:
        with self.timings.stage("unet_adapter"):
            return self._run("unet_adapter", x_t=x, timesteps=t, film=cond["film"], hint=cond["hint"])

    def decode(self, latent: np.ndarray) -> np.ndarray:
        """Latents (B, 8, 128, 16) -> waveforms (B, 81920)."""
        with self.timings.stage("vae_decoder"):
            mel = self._run("vae_decoder", latent=latent)
        with self.timings.stage("vocoder"):
            wave = self._run("vocoder", mel=np.ascontiguousarray(mel[:, 0].transpose(0, 2, 1)))
        return wave[:, 0, : C.WAVE_SAMPLES]

    # ---- generation ---------------------------------------------------------------------

    def request_energy(self, requests: Sequence[Request], edit: EnergyEdit) -> list[np.ndarray]:
        """The (512,) curve of each request: given, or predicted from its frames; then edited."""
        need = [r.frames for r in requests if r.energy is None]
        for r in requests:
            if r.energy is None and r.frames is None:
                raise ValueError("a request needs frames or an energy curve")
        predicted = iter(self.predict_energy(need)) if need else iter(())
        return [edit.apply(np.asarray(r.energy, np.float32) if r.energy is not None else next(predicted))
                for r in requests]

    def generate(self, requests: Sequence[Request], options: GenerationOptions = GenerationOptions(),
                 progress: Callable[[int, int], None] | None = None) -> list[Result]:
        """Every request with ``options.candidates`` candidates, batched up to MAX_BATCH per engine call."""
        schedule = make_schedule(options.steps, options.eta)
        energies = self.request_energy(requests, options.energy_edit)
        films = self.text_embeddings([r.prompt for r in requests])
        # One item per (request, candidate), each with its own generator.
        items = [(r, c) for r in range(len(requests)) for c in range(options.candidates)]
        waves = np.empty((len(items), C.WAVE_SAMPLES), np.float32)
        chunks = [items[i:i + MAX_BATCH] for i in range(0, len(items), MAX_BATCH)]
        total = len(chunks) * schedule.steps
        for k, chunk in enumerate(chunks):
            rngs = [candidate_rng(requests[r].seed, c) for r, c in chunk]
            rows = [r for r, _ in chunk]
            hint_noise = np.stack([_normal(g, C.LATENT_SHAPE) for g in rngs])
            hint = self.hint_latents(np.stack([energies[r] for r in rows]),
                                     None if options.hint_from_mean else hint_noise)
            x_T = np.stack([_normal(g, C.LATENT_SHAPE) for g in rngs])
            uncond = {"film": np.repeat(self.unconditional_embedding(), len(chunk), 0), "hint": np.zeros_like(hint)}
            cond = {"film": films[rows], "hint": hint}

            def noise_source(step: int, shape: Sequence[int], rngs=rngs) -> np.ndarray:
                return np.stack([_normal(g, shape[1:]) for g in rngs])

            def callback(step: int, *_, k=k) -> None:
                if progress:
                    progress(k * schedule.steps + step + 1, total)

            latent = sample(self.denoise, x_T, cond, uncond, schedule, options.guidance, noise_source, callback)
            start = k * MAX_BATCH
            waves[start:start + len(chunk)] = self.decode(latent)
        per = options.candidates
        return [Result(waves[i * per:(i + 1) * per], energies[i], r.seed) for i, r in enumerate(requests)]
