"""The pipeline inside NVIDIA Triton: each graph a Triton model, the loop a Python-backend
model (``rewas``) that calls them through BLS (business logic scripting).

``export/triton_repository.py`` writes the model repository. Its ``rewas/1/model.py`` is
a shim that puts a copy of this package on ``sys.path`` and subclasses ``RewasModel``.
The loop is ``rewas_rt.pipeline.Pipeline`` itself: only the ``Engine`` differs —
``BlsEngine.run`` sends one graph call to the Triton model of that graph — so the
tokenizer, energy post-processing, hint latent, DDIM sampler and seeding are the
runtime's own code, tested once.

Shapes on the wire: every graph model has ``max_batch_size > 0``, so Triton's ``dims``
leave out the first (batch) axis of the contract; a tensor that is only a batch axis
(``unet_adapter``'s ``timesteps``) is declared ``dims: [1]`` with ``reshape: {shape: []}``
and sent as (B, 1). ``triton_dims`` is that rule, shared with the repository writer.

``triton_python_backend_utils`` exists only inside Triton's Python backend; it is
passed in (``RewasModel.initialize`` imports it), never imported at module level.
Tests drive this module with a stand-in of it that answers BLS calls from ONNX Runtime.
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rewas_rt import constants as C
from rewas_rt.backends.base import Backend, BackendError, Engine
from rewas_rt.energy import resize_nearest
from rewas_rt.errors import InputError, RewasError
from rewas_rt.graphs import GraphSpec, TensorSpec
from rewas_rt.manifest import MANIFEST_NAME, EngineDirectory, ManifestError, contract_problems, read_manifest

PIPELINE_MODEL = "rewas"

# numpy dtype name -> Triton ModelConfig DataType
TRITON_DTYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
    "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL", "object": "TYPE_STRING",
}


def triton_dims(t: TensorSpec) -> tuple[list[int], list[int] | None]:
    """(Triton ``dims`` of a contract tensor without its batch axis, -1 for a dynamic axis;
    ``reshape`` shape, or None). A batch-only tensor becomes dims [1] reshaped to []."""
    rest = t.shape[1:]
    if not rest:
        return [1], []
    return [d if isinstance(d, int) else -1 for d in rest], None


# ------------------------------------------------------------------------------ BLS engines


class BlsBackend(Backend):
    """Engines that call Triton models through BLS. ``pb_utils``: the
    ``triton_python_backend_utils`` module; ``models``: graph -> Triton model name
    (default: the graph's name)."""

    name = "triton-bls"

    def __init__(self, pb_utils: Any, models: Mapping[str, str] | None = None):
        self.pb = pb_utils
        self.models = dict(models or {})

    def available(self) -> tuple[bool, str]:
        return True, "BLS calls from Triton's Python backend"

    def open(self, graph: str, files: Mapping[str, str | os.PathLike], spec: GraphSpec,
             info: Mapping[str, Any] | None = None) -> Engine:
        model = self.models.get(graph, graph)
        return BlsEngine(spec, self.pb, model, {"backend": self.name, "triton_model": model})


class BlsEngine(Engine):
    def __init__(self, spec: GraphSpec, pb_utils: Any, model: str, metadata: dict[str, Any]):
        super().__init__(spec, metadata)
        self.pb = pb_utils
        self.model = model
        # Outputs to host memory (Triton >= 23.04): the pipeline's maths is NumPy.
        memory = getattr(pb_utils, "PreferredMemory", None)
        self._memory = {"preferred_memory": memory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)} if memory else {}

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = []
        for t in self.spec.inputs:
            array = feeds[t.name]
            if triton_dims(t)[1] is not None:  # batch-only tensor: (B,) travels as (B, 1)
                array = array.reshape(-1, 1)
            inputs.append(self.pb.Tensor(t.name, array))
        request = self.pb.InferenceRequest(model_name=self.model, requested_output_names=list(self.output_names),
                                           inputs=inputs, **self._memory)
        response = request.exec()
        if response.has_error():
            raise BackendError(f"graph {self.name}: Triton model {self.model} failed: {response.error().message()}")
        out = {}
        for t in self.spec.outputs:
            tensor = self.pb.get_output_tensor_by_name(response, t.name)
            if tensor is None:
                raise BackendError(f"graph {self.name}: Triton model {self.model} returned no output {t.name}")
            array = tensor.as_numpy()
            out[t.name] = array.reshape(-1) if triton_dims(t)[1] is not None else array
        return out


def pipeline_directory(path: str | os.PathLike) -> EngineDirectory:
    """The ``rewas`` model's folder as an engine directory: its manifest (layout and graph contract
    checked) and tokenizer; the graphs themselves are the repository's other models."""
    root = Path(path)
    m = read_manifest(root)  # ManifestError for a missing, corrupt or mis-laid-out manifest
    problems = contract_problems(m)
    if not problems and not (root / m.tokenizer.path).is_file():
        problems = [f"tokenizer {m.tokenizer.path} is missing"]
    if problems:
        raise ManifestError(f"{root / MANIFEST_NAME}: {'; '.join(problems)}; rewrite the repository with "
                            "python export/triton_repository.py --engines ENGINE_DIR --out REPO")
    return EngineDirectory(root, m, "onnx")


# ------------------------------------------------------------------------------ the rewas model

# Keys of the OPTIONS JSON: the HTTP service's form fields and `rewas-rt infer`'s flags, same names.
OPTION_KEYS = ("steps", "guidance", "eta", "candidates", "hint_mean", "energy_scale", "energy_offset",
               "energy_clip_min", "energy_clip_max")
# Inputs of the `rewas` model (its config.pbtxt is written from this table):
# name -> (numpy dtype name, dims, optional, what)
MODEL_INPUTS: dict[str, tuple[str, list[int], bool, str]] = {
    "PROMPT": ("object", [1], False, "UTF-8 text prompt"),
    "SEED": ("int64", [1], True, "random seed >= 0 (default: random, returned in SEED_USED)"),
    "VIDEO": ("object", [1], True, "an encoded video file (mp4, mov, mkv, webm ...), whole or START/DURATION"),
    "START": ("float32", [1], True, "where the clip starts in VIDEO, seconds (default 0)"),
    "DURATION": ("float32", [1], True, "seconds of VIDEO from START (default: to the end; long clips in windows)"),
    "FRAMES": ("uint8", [C.FRAMES, C.CROP, C.CROP, 3], True, "one window of RGB frames at 25 fps instead of VIDEO"),
    "ENERGY": ("float32", [-1], True, "an energy curve (any length, resampled) replacing the predicted one"),
    "OPTIONS": ("object", [1], True, "JSON object of generation options: " + ", ".join(OPTION_KEYS)),
}
MODEL_OUTPUTS: dict[str, tuple[str, list[int], str]] = {
    "WAVEFORM": ("float32", [-1, -1], "(candidates, samples) 16 kHz float in [-1, 1], as long as the clip"),
    "ENERGY_USED": ("float32", [-1], "the energy curve that drove generation (after edits), 4 values per video frame"),
    "SEED_USED": ("int64", [1], "the seed"),
}


def _scalar(name: str, value: np.ndarray) -> Any:
    flat = np.asarray(value).reshape(-1)
    if flat.size != 1:
        raise InputError(f"{name} must hold one value, got {flat.size}")
    return flat[0]


def _text(name: str, value: np.ndarray) -> str:
    v = _scalar(name, value)
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{name} is not valid UTF-8") from None
    return str(v)


def parse_options(text: str | None):
    """The OPTIONS JSON -> ``GenerationOptions``, each value checked by ``rewas_rt.options`` (the
    ranges and messages of the CLI and the HTTP service); a one-line ``InputError`` otherwise."""
    from rewas_rt.options import OPTIONS, GenerationOptions, energy_edit

    d: dict[str, Any] = {}
    if text is not None:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"OPTIONS is not valid JSON ({e.msg} at character {e.pos})") from None
        if not isinstance(d, dict):
            raise InputError("OPTIONS must be a JSON object")
    unknown = sorted(set(d) - set(OPTION_KEYS))
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTION_KEYS)}")
    v = {k: OPTIONS[k].parse(d[k]) if k in d else OPTIONS[k].default for k in OPTION_KEYS}
    return GenerationOptions(steps=v["steps"], guidance=v["guidance"], eta=v["eta"], candidates=v["candidates"],
                             hint_from_mean=v["hint_mean"],
                             energy_edit=energy_edit(v["energy_scale"], v["energy_offset"], v["energy_clip_min"],
                                                     v["energy_clip_max"]))


class RewasModel:
    """The ``rewas`` Python-backend model; ``directory`` (set by the repository's shim) holds
    ``manifest.json`` and ``tokenizer.json``. One response per request; a bad request gets an
    error response with a one-line message and does not disturb the others."""

    directory: Path

    def initialize(self, args: Mapping[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton (or a test's stand-in)

        from rewas_rt.pipeline import Pipeline

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        models = json.loads(params.get("graph_models", "{}"))
        self.pipeline = Pipeline.from_backend(pipeline_directory(self.directory), BlsBackend(pb_utils, models))

    def execute(self, requests: list) -> list:
        """VIDEO requests run one by one through ``Pipeline.generate_video`` (the whole clip or
        START/DURATION of it, in windows, as `rewas-rt infer`); FRAMES / ENERGY-only requests are
        batched through ``Pipeline.generate``, grouped by options, at most MAX_BATCH per call."""
        from rewas_rt.pipeline import MAX_BATCH

        responses: list = [None] * len(requests)
        batched: dict[Any, list[tuple[int, Any]]] = {}  # options -> [(index, Request)]
        for i, r in enumerate(requests):
            try:
                options, job = self._parse(r)
                if isinstance(job, _VideoJob):
                    responses[i] = self._respond(self._generate_video(job, options))
                else:
                    batched.setdefault(options, []).append((i, job))
            except (RewasError, ValueError) as e:
                responses[i] = self._error(e)
        for options, items in batched.items():
            for k in range(0, len(items), MAX_BATCH):  # the graphs' batch axis holds MAX_BATCH requests
                chunk = items[k:k + MAX_BATCH]
                try:
                    results = self.pipeline.generate([req for _, req in chunk], options)
                except (RewasError, ValueError) as e:
                    for i, _ in chunk:
                        responses[i] = self._error(e)
                    continue
                for (i, _), res in zip(chunk, results):
                    responses[i] = self._respond(res)
        return responses

    def _respond(self, res: Any) -> Any:
        return self.pb.InferenceResponse(output_tensors=[
            self.pb.Tensor("WAVEFORM", np.ascontiguousarray(res.waveforms, np.float32)),
            self.pb.Tensor("ENERGY_USED", np.ascontiguousarray(res.energy, np.float32)),
            self.pb.Tensor("SEED_USED", np.asarray([res.seed], np.int64)),
        ])

    def _generate_video(self, job: "_VideoJob", options: Any) -> Any:
        """The video bytes live in a private temporary file while generation reads them."""
        from rewas_rt.pipeline import VideoRequest

        with tempfile.TemporaryDirectory(prefix="rewas-triton-") as tmp:
            path = Path(tmp) / "video"
            path.write_bytes(job.data)
            request = VideoRequest(prompt=job.prompt, seed=job.seed, video=path, start=job.start,
                                   duration=job.duration, energy=job.energy)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    result = self.pipeline.generate_video(request, options)
            except RewasError as e:  # name the input, not the temporary file
                raise InputError(str(e).replace(str(path), "VIDEO")) from None
        for w in caught:  # e.g. "only 3.00 s of video": passed on, naming the input
            warnings.warn(str(w.message).replace(str(path), "VIDEO"), w.category, stacklevel=2)
        return result

    def finalize(self) -> None:
        self.pipeline = None

    def _error(self, e: BaseException) -> Any:
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(str(e).splitlines()[0]))

    def _input(self, request: Any, name: str) -> np.ndarray | None:
        t = self.pb.get_input_tensor_by_name(request, name)
        return None if t is None else t.as_numpy()

    def _parse(self, r: Any):
        """One Triton request -> (GenerationOptions, a pipeline Request or a _VideoJob)."""
        from rewas_rt.options import OPTIONS
        from rewas_rt.pipeline import Request

        prompt_in = self._input(r, "PROMPT")
        if prompt_in is None:
            raise InputError("PROMPT is required")
        prompt = _text("PROMPT", prompt_in)
        self.pipeline.tokenizer.ids(prompt)  # rejects an empty prompt
        seed_in = self._input(r, "SEED")
        seed = OPTIONS["seed"].parse(_scalar("SEED", seed_in)) if seed_in is not None else None
        seed = secrets.randbelow(2**31) if seed is None else seed
        options_in = self._input(r, "OPTIONS")
        options = parse_options(_text("OPTIONS", options_in) if options_in is not None else None)

        video, frames, energy = (self._input(r, n) for n in ("VIDEO", "FRAMES", "ENERGY"))
        start_in, duration_in = self._input(r, "START"), self._input(r, "DURATION")
        if video is not None and frames is not None:
            raise InputError("send VIDEO or FRAMES, not both")
        if video is None and frames is None and energy is None:
            raise InputError("send VIDEO, FRAMES or ENERGY")
        if (start_in is not None or duration_in is not None) and video is None:
            raise InputError("START and DURATION apply to VIDEO only")
        if energy is not None:
            energy = np.asarray(energy, np.float32).reshape(-1)
            if energy.size < 2 or not np.isfinite(energy).all():
                raise InputError("ENERGY must be at least 2 finite numbers")
        if video is not None:
            data = _scalar("VIDEO", video)
            if not isinstance(data, (bytes, bytearray)) or not data:
                raise InputError("VIDEO must be the bytes of a video file")
            start = OPTIONS["start"].parse(_scalar("START", start_in)) if start_in is not None else 0.0
            duration = OPTIONS["duration"].parse(float(_scalar("DURATION", duration_in))) \
                if duration_in is not None else None
            return options, _VideoJob(prompt, seed, bytes(data), start, duration, energy)
        if frames is not None:
            frames = np.asarray(frames)
            if frames.dtype != np.uint8 or frames.shape != (C.FRAMES, C.CROP, C.CROP, 3):
                raise InputError(f"FRAMES must be uint8 {(C.FRAMES, C.CROP, C.CROP, 3)}, got {frames.dtype} "
                                 f"{frames.shape}")
        if energy is not None:  # one window: the curve resampled to its 512 frames, as a curve file is
            energy = resize_nearest(energy, C.MEL_FRAMES)
        return options, Request(prompt=prompt, seed=seed, frames=frames, energy=energy)


@dataclasses.dataclass(frozen=True)
class _VideoJob:
    prompt: str
    seed: int
    data: bytes
    start: float
    duration: float | None
    energy: np.ndarray | None
