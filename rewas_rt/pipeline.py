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
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from rewas_rt import constants as C
from rewas_rt import media
from rewas_rt.backends import Backend, Engine, select_backend
from rewas_rt.ddim import Constraint
from rewas_rt.energy import energy_from_phi, energy_to_vae_input, resize_nearest
from rewas_rt.energy_control import EnergyEdit
from rewas_rt.errors import InputError, RewasError
from rewas_rt.graphs import DYNAMIC_AXES, GRAPHS
from rewas_rt.latent import scaled_latent
from rewas_rt.manifest import EngineDirectory, open_engine_dir, plan_mismatch
from rewas_rt.options import GenerationOptions  # its home is rewas_rt.options; kept importable from here
from rewas_rt.samplers import model_calls, sample_with
from rewas_rt.timings import TimingHook, Timings  # noqa: F401 - part of the pipeline's API
from rewas_rt.typed_json import to_json
from rewas_rt.tokenizer import PromptTokenizer
from rewas_rt.video import frames_available, iter_windows, load_video, normalized_segments
from rewas_rt.windows import (MEL_PER_FRAME, WINDOW, WindowOptions, WindowPlan, join_curves,
                              overlap_constraint, plan_windows, window_curves)

log = logging.getLogger("rewas_rt")

# Largest batch one engine call may take (the TensorRT profiles' maximum).
MAX_BATCH = min(DYNAMIC_AXES["batch"][2], DYNAMIC_AXES["cfg_batch"][2] // 2)


@dataclasses.dataclass
class Request:
    """One prompt for one clip. ``frames``: (125, 224, 224, 3) uint8 at 25 fps (video.load_video);
    ``energy``: a (512,) curve replacing the one predicted from the video (frames may then be None).
    ``candidates`` / ``energy_edit``, when set, replace the GenerationOptions' for this request, so
    requests that differ only in those still share one sampling loop (rewas_rt.serve batching)."""

    prompt: str
    seed: int
    frames: np.ndarray | None = None
    energy: np.ndarray | None = None
    candidates: int | None = None
    energy_edit: EnergyEdit | None = None


@dataclasses.dataclass
class VideoRequest:
    """One prompt for a video file, whole (``duration`` None) or ``duration`` seconds from ``start``.
    ``energy``: a curve for the whole clip (any length, resampled by nearest neighbour) replacing
    the one predicted from the video, which is then read for its length only."""

    prompt: str
    seed: int
    video: str | os.PathLike
    start: float = 0.0
    duration: float | None = None
    energy: np.ndarray | None = None


@dataclasses.dataclass
class Result:
    waveforms: np.ndarray  # (candidates, 81920) float32 in [-1, 1], 16 kHz; generate_video: (candidates, clip samples)
    energy: np.ndarray  # (512,) the curve that drove generation (after edits); generate_video: the whole clip's
    seed: int


def candidate_rng(seed: int, candidate: int) -> np.random.Generator:
    return np.random.default_rng([seed, candidate])


def _normal(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


class Pipeline:
    def __init__(self, engine_dir: str | Path, backend: str | Backend | None = None, threads: int | None = None,
                 checksums: bool = True, timing_hook: TimingHook | None = None, int8: Sequence[str] = ()):
        """backend: a name (or None / "auto": the automatic choice), or a ``Backend`` object
        (e.g. ``OnnxRuntimeBackend("cpu", precision="fp16")`` to run the FP16 graphs).
        timing_hook: called with (stage, seconds) after every timed stage (benchmarks).
        int8: graphs whose opt-in INT8 variant to run (ONNX Runtime CPU; ``build_engines --int8``)."""
        listed = open_engine_dir(engine_dir, backend="onnx", checksums=False)
        if isinstance(backend, Backend):
            chosen = backend
        else:
            chosen = select_backend(backend, has_plans=listed.has_engines, threads=threads,
                                    plans_for=lambda target: plan_mismatch(listed.manifest, target))
        is_trt = chosen.name == "tensorrt"
        self._setup(open_engine_dir(engine_dir, backend="tensorrt" if is_trt else "onnx", checksums=checksums,
                                    tensorrt=chosen.target() if is_trt else None), chosen, timing_hook, int8)

    @classmethod
    def from_backend(cls, directory: EngineDirectory, backend: Backend,
                     timing_hook: TimingHook | None = None) -> "Pipeline":
        """A pipeline on an already opened directory and a backend object whose engines live
        elsewhere than the directory, e.g. the Triton BLS backend (``rewas_rt.triton``)."""
        self = cls.__new__(cls)
        self._setup(directory, backend, timing_hook)
        return self

    def _setup(self, directory: EngineDirectory, backend: Backend, timing_hook: TimingHook | None,
               int8: Sequence[str] = ()) -> None:
        self.backend = backend
        self.dir = directory
        self.tokenizer = PromptTokenizer(self.dir.tokenizer_path)
        # Opt-in INT8 variants (export/quantize.py), ONNX Runtime CPU only; FP32 otherwise.
        self.int8 = tuple(dict.fromkeys(int8))
        for g in self.int8:
            if g not in GRAPHS or self.dir.graph(g).int8 is None:
                raise InputError(f"graph {g} has no INT8 variant in {directory.root}; rebuild with "
                                 f"`python export/build_engines.py ... --int8 {g}`")
        if self.int8 and self.backend.name != "onnxruntime-cpu":
            raise InputError(f"INT8 variants run on the onnxruntime-cpu backend only, not {self.backend.name}")
        self._engines: dict[str, Engine] = {}
        self._uncond: np.ndarray | None = None
        self._video_buffer: np.ndarray | None = None
        self.timings = Timings(timing_hook)
        # Windows per engine call for generate_video's independent stages (Synchformer input is
        # 135 MB a window). Batching pays on a GPU; on the CPU it only costs memory, and the
        # memory arenas keep the largest batch's (benchmarks/long_video.py).
        self.window_batch = 1 if self.backend.name == "onnxruntime-cpu" else 4

    def engine(self, graph: str) -> Engine:
        if graph not in self._engines:
            files = self.dir.graph(graph)
            spec = GRAPHS[graph].resolved(feature_dim=self.dir.feature_dim)
            with self.timings.stage(f"load {graph}"):
                paths = {"onnx": files.int8} if graph in self.int8 else files.files()
                self._engines[graph] = self.backend.open(graph, paths, spec, info=to_json(files.entry))
        return self._engines[graph]

    def _run(self, graph: str, **feeds: np.ndarray) -> np.ndarray:
        (out,) = self.engine(graph).run(feeds).values()
        return out

    # ---- stages -------------------------------------------------------------------------

    def predict_energy(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Clips of (125, 224, 224, 3) uint8 frames -> smoothed energy curves (B, 512)."""
        with self.timings.stage("video"):
            # The normalised segments of every clip go straight into one buffer kept between requests
            # (134 MB per clip of the largest batch seen; it replaces a fresh array plus a concatenated copy).
            n = len(frames)
            if self._video_buffer is None or len(self._video_buffer) < n:
                self._video_buffer = None  # free the old one before allocating
                self._video_buffer = np.empty((n, C.SEGMENTS, 3, C.SEGMENT_LEN, C.CROP, C.CROP), np.float32)
            video = normalized_segments(frames, out=self._video_buffer[:n])
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
        """Latents (B, 8, 128, 16) -> waveforms (B, 81920): ``vocode(decode_mel(latent))``."""
        return self.vocode(self.decode_mel(latent))

    def decode_mel(self, latent: np.ndarray) -> np.ndarray:
        """Latents (B, 8, 128, 16) -> log-mels (B, 512, 64) (frames × mel bins; the VAE decoder)."""
        with self.timings.stage("vae_decoder"):
            return self._run("vae_decoder", latent=np.ascontiguousarray(latent))[:, 0]

    def vocode(self, mel: np.ndarray) -> np.ndarray:
        """Log-mels (B, 512, 64) -> waveforms (B, 81920) (the HiFi-GAN vocoder)."""
        with self.timings.stage("vocoder"):
            wave = self._run("vocoder", mel=np.ascontiguousarray(np.asarray(mel, np.float32).transpose(0, 2, 1)))
        return wave[:, 0, : C.WAVE_SAMPLES]

    # ---- generation ---------------------------------------------------------------------

    def request_energy(self, requests: Sequence[Request], edit: EnergyEdit) -> list[np.ndarray]:
        """The (512,) curve of each request: given, or predicted from its frames; then edited
        (by the request's own edit when it has one)."""
        need = [r.frames for r in requests if r.energy is None]
        for r in requests:
            if r.energy is None and r.frames is None:
                raise ValueError("a request needs frames or an energy curve")
        predicted = iter(self.predict_energy(need)) if need else iter(())
        return [(r.energy_edit or edit).apply(np.asarray(r.energy, np.float32) if r.energy is not None
                                              else next(predicted))
                for r in requests]

    def generate(self, requests: Sequence[Request], options: GenerationOptions = GenerationOptions(),
                 progress: Callable[[int, int], None] | None = None) -> list[Result]:
        """Every request with its candidates (``options.candidates`` unless the request sets its own),
        batched up to MAX_BATCH per engine call."""
        steps = model_calls(options.sampler, options.steps)
        counts = [options.candidates if r.candidates is None else r.candidates for r in requests]
        energies = self.request_energy(requests, options.energy_edit)
        films = self.text_embeddings([r.prompt for r in requests])
        # One item per (request, candidate), each with its own generator.
        items = [(r, c) for r in range(len(requests)) for c in range(counts[r])]
        waves = np.empty((len(items), C.WAVE_SAMPLES), np.float32)
        chunks = [items[i:i + MAX_BATCH] for i in range(0, len(items), MAX_BATCH)]
        total = len(chunks) * steps
        for k, chunk in enumerate(chunks):
            rngs = [candidate_rng(requests[r].seed, c) for r, c in chunk]
            rows = [r for r, _ in chunk]
            hint_noise = np.stack([_normal(g, C.LATENT_SHAPE) for g in rngs])
            hint = self.hint_latents(np.stack([energies[r] for r in rows]),
                                     None if options.hint_from_mean else hint_noise)

            def callback(step: int, *_, k=k) -> None:
                if progress:
                    progress(k * steps + step + 1, total)

            latent = self._sample(rngs, hint, films[rows], options, callback)
            start = k * MAX_BATCH
            waves[start:start + len(chunk)] = self.decode(latent)
        if not np.isfinite(waves).all():  # valid options keep it finite; never hand out NaN audio
            raise RewasError("generation produced non-finite audio (engine or option range problem); nothing written")
        ends = np.cumsum([0, *counts])
        return [Result(waves[ends[i]:ends[i + 1]], energies[i], r.seed) for i, r in enumerate(requests)]

    def _sample(self, rngs: Sequence[np.random.Generator], hint: np.ndarray, film: np.ndarray,
                options: GenerationOptions, callback: Callable | None = None,
                constrain: Constraint | None = None) -> np.ndarray:
        """``options.sampler`` with CFG for one batch whose rows draw x_T and step noise from ``rngs``."""
        x_T = np.stack([_normal(g, C.LATENT_SHAPE) for g in rngs])
        same = self.dir.manifest.scheduler.unconditional_hint == "same"  # else "zeros", the original's
        uncond = {"film": np.repeat(self.unconditional_embedding(), len(rngs), 0),
                  "hint": hint if same else np.zeros_like(hint)}
        cond = {"film": film, "hint": hint}

        def noise_source(step: int, shape: Sequence[int]) -> np.ndarray:
            return np.stack([_normal(g, shape[1:]) for g in rngs])

        return sample_with(options.sampler, self.denoise, x_T, cond, uncond, options.steps, options.guidance,
                           noise_source, callback, eta=options.eta, guidance_interval=options.guidance_interval,
                           constrain=constrain)

    # ---- whole videos (rewas_rt/windows.py) ---------------------------------------------

    def clip_energy(self, request: VideoRequest, plan: WindowPlan) -> np.ndarray:
        """The unedited (plan.covered·4,) curve: the request's (resampled), or φ's over every window,
        Synchformer and φ batched ``window_batch`` windows at a time and blended (windows.join_curves)."""
        if request.energy is not None:
            curve = np.asarray(request.energy, np.float32).reshape(-1)
            return resize_nearest(curve, plan.covered * MEL_PER_FRAME)
        curves, batch = [], []
        for frames, _ in iter_windows(request.video, plan.starts, request.start):
            batch.append(frames)
            if len(batch) == self.window_batch:
                curves += list(self.predict_energy(batch))
                batch = []
        if batch:
            curves += list(self.predict_energy(batch))
        return join_curves(np.stack(curves), plan)

    def generate_video(self, request: VideoRequest, options: GenerationOptions = GenerationOptions(),
                       progress: Callable[[int, int, str], None] | None = None) -> Result:
        """Sound for a whole video (or ``start``/``duration`` of it): ``Result.waveforms`` is
        (candidates, frames·640), one sample row per 1/16000 s of the clip at 25 fps.

        A clip of one window (≤ 5.12 s) is generated exactly as ``generate`` does. Longer ones
        go window by window (rewas_rt/windows.py); candidates are batched within a window, the
        windows run in order because each continues the previous one. ``progress(done, total,
        label)`` counts windows × steps. Memory does not grow with the length except for the
        output sound and the energy curve (a few bytes per sample).
        """
        w = options.windows
        plan = plan_clip(request, w)
        if len(plan) == 1:
            return self._generate_one_window(request, options, plan, progress)
        energy = options.energy_edit.apply(self.clip_energy(request, plan))
        joiner = w.joiner(plan, options.candidates)
        for k, waves in self.window_waves(request, options, plan, energy, progress):
            joiner.add(k, waves)
        return Result(joiner.result(), energy, request.seed)

    def window_waves(self, request: VideoRequest, options: GenerationOptions, plan: WindowPlan, energy: np.ndarray,
                     progress: Callable[[int, int, str], None] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(k, waveforms (candidates, 81920)) of window k = 0, 1, … of ``plan`` driven by the whole
        clip's ``energy`` curve, before they are joined (generate_video joins them).

        Sampling runs window after window (each continues the previous one), candidates batched;
        the independent stages are batched across windows, up to MAX_BATCH rows per engine call:
        the hint encoder over the curves, the decoder and vocoder over finished latents."""
        w = options.windows
        curves = window_curves(energy, plan)
        film = self.text_embeddings([request.prompt])
        steps = model_calls(options.sampler, options.steps)
        chunks = [list(range(i, min(i + MAX_BATCH, options.candidates)))
                  for i in range(0, options.candidates, MAX_BATCH)]
        total, done = len(plan) * len(chunks) * steps, 0
        previous = np.empty((options.candidates, *C.LATENT_SHAPE), np.float32)
        per_decode = max(1, min(self.window_batch, MAX_BATCH // options.candidates))  # windows decoded together
        pending: list[tuple[int, np.ndarray]] = []
        for k in range(len(plan)):
            if k % self.window_batch == 0:
                with self.timings.stage("vae_encoder"):
                    block = self._run("vae_encoder", mel=energy_to_vae_input(curves[k:k + self.window_batch]))
            moments = block[k % self.window_batch:k % self.window_batch + 1]
            for chunk in chunks:
                rngs = [window_rng(request.seed, c, k) for c in chunk]
                hint_noise = np.stack([_normal(g, C.LATENT_SHAPE) for g in rngs])
                hint = scaled_latent(np.repeat(moments, len(chunk), 0), self.dir.scale_factor,
                                     None if options.hint_from_mean else hint_noise)
                constrain = None
                if k > 0 and w.join == "repaint":
                    known = previous[chunk][:, :, WINDOW - plan.overlap(k):]

                    def noise(shape: Sequence[int], rngs=rngs) -> np.ndarray:
                        return np.stack([_normal(g, shape[1:]) for g in rngs])

                    constrain = overlap_constraint(known, noise, w.ramp_frames(plan.overlap(k)))

                def callback(step: int, *_, base=done, label=f"window {k + 1}/{len(plan)}") -> None:
                    if progress:
                        progress(base + step + 1, total, label)

                latent = self._sample(rngs, hint, np.repeat(film, len(chunk), 0), options, callback, constrain)
                done += steps
                previous[chunk] = latent
            pending.append((k, previous.copy()))
            if len(pending) == per_decode or k == len(plan) - 1:
                latents = np.concatenate([lat for _, lat in pending])
                waves = np.concatenate([self.decode(latents[i:i + MAX_BATCH])
                                        for i in range(0, len(latents), MAX_BATCH)])
                for j, (done_k, _) in enumerate(pending):
                    yield done_k, waves[j * options.candidates:(j + 1) * options.candidates]
                pending = []

    def _generate_one_window(self, request: VideoRequest, options: GenerationOptions, plan: WindowPlan,
                             progress: Callable[[int, int, str], None] | None) -> Result:
        (res,) = self.generate([window_request(request)], options,
                               None if progress is None else lambda d, t: progress(d, t, "window 1/1"))
        return Result(res.waveforms[:, :plan.samples], res.energy, res.seed)


def window_request(request: VideoRequest, candidates: int | None = None,
                   energy_edit: EnergyEdit | None = None) -> Request:
    """The one-window ``Request`` of a clip that fits in one window (``plan_clip`` gave one): the
    window's frames decoded from ``start`` (none when a curve replaces them), the curve resampled
    to the window's 512 frames. ``generate`` of it is ``generate_video`` of the clip, uncut."""
    frames = None if request.energy is not None else load_video(request.video, request.start).frames
    energy = None if request.energy is None else resize_nearest(
        np.asarray(request.energy, np.float32).reshape(-1), C.MEL_FRAMES)
    return Request(request.prompt, request.seed, frames=frames, energy=energy, candidates=candidates,
                   energy_edit=energy_edit)


def window_rng(seed: int, candidate: int, window: int) -> np.random.Generator:
    """Window 0 draws as a single-window request does; window k > 0 from its own stream."""
    return candidate_rng(seed, candidate) if window == 0 else np.random.default_rng([seed, candidate, window])


def plan_clip(request: VideoRequest, windows: WindowOptions = WindowOptions()) -> WindowPlan:
    """The clip a request asks for, checked against the video (its packets only, nothing is decoded)
    and the options, cut into windows. Every problem is a one-line InputError."""
    path = os.fspath(request.video)
    media.check_start(request.start)
    if request.duration is not None:
        if not (math.isfinite(request.duration) and request.duration > 0):
            raise InputError(f"duration must be a number of seconds > 0 or full, got {request.duration}")
        if round(request.duration * C.FPS) < 1:
            raise InputError(f"duration {request.duration:g} s is shorter than one video frame (1/{C.FPS} s)")
    available = frames_available(path, request.start)
    if available == 0:
        end = float(media.video_end(path))
        raise InputError(f"{path}: start {request.start:g} s leaves no video (the video ends at {end:.2f} s)")
    frames = available if request.duration is None else min(round(request.duration * C.FPS), available)
    if frames / C.FPS > windows.max_duration:
        raise InputError(
            f"{path}: {frames / C.FPS:.2f} s of video from {request.start:g} s is over the "
            f"{windows.max_duration:g} s limit (max-duration); choose a part with start/duration or raise the limit")
    if request.duration is not None and frames < round(request.duration * C.FPS) and frames > WINDOW:
        warnings.warn(f"{path}: only {frames / C.FPS:.2f} s of video from {request.start:g} s; "
                      f"generating {frames / C.FPS:.2f} s", stacklevel=2)
    return plan_windows(frames, windows.overlap_frames)
