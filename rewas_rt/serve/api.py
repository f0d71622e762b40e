"""The HTTP API (FastAPI), independent of Ray: ``Service`` does the work of one
replica, ``build_fastapi`` exposes it. The Ray deployment (rewas_rt.serve.app)
only adds ``@serve.batch`` in front of ``Service.run_jobs``.

``POST /v1/generate`` (multipart/form-data):

* ``video`` (file, required), ``prompt`` (text, required);
* the options of ``rewas_rt.options`` by name: ``steps guidance eta seed candidates
  start duration hint_mean energy_scale energy_offset energy_clip_min energy_clip_max
  sampler guidance_interval_low guidance_interval_high``; sampling options not sent take
  the engine directory's recommendation (its manifest), as ``rewas-rt infer`` does;
* ``start``/``duration``: the clip that gets sound, by default the whole video (``duration``
  ``full``); longer than one 5.12 s window, it is generated window after window and joined
  without seams (``Pipeline.generate_video``, rewas_rt/windows.py), up to the service's
  ``max_video_seconds``. One-window clips are batched with other requests; longer ones run
  alone (each window continues the previous one), so a deadline must allow for their length;
* ``energy_curve`` (file, .csv or .npy): replaces the curve predicted from the video;
* ``format``: ``wav`` (default) or ``mp4`` (the video with the generated track).

Response: ``audio/wav`` or ``video/mp4``; with ``candidates`` > 1 an
``application/zip`` holding ``candidate-0.wav`` … (or ``.mp4``) and ``result.json``
(seed, candidates, options). Headers ``X-Rewas-Seed``, ``X-Rewas-Candidates`` and
``X-Rewas-Seconds`` (the length of the clip, = the sound's).
Errors: ``{"error": "<one line>"}`` with 400 (bad input; the CLI's messages),
401 (API key), 413 (upload or video too large), 503 + ``Retry-After`` (queue
full), 504 (deadline), 500 (a bug: logged, generic message).
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import os
import secrets
import shutil
import tempfile
import time
import zipfile
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from rewas_rt import __version__
from rewas_rt import constants as C
from rewas_rt.errors import InputError, RewasError
from rewas_rt.options import OPTIONS, GenerationOptions, energy_edit, guidance_interval, sampling_settings
from rewas_rt.serve.batching import Job, Outcome, job_size, run_batches
from rewas_rt.serve.settings import ServeSettings
from rewas_rt.serve.uploads import UploadTooLarge, parse_multipart
from rewas_rt.windows import WindowOptions

log = logging.getLogger("rewas_rt.serve")

FORM_OPTIONS = ("steps", "guidance", "eta", "seed", "candidates", "start", "duration", "hint_mean", "energy_scale",
                "energy_offset", "energy_clip_min", "energy_clip_max", "sampler", "guidance_interval_low",
                "guidance_interval_high")
FORMATS = {"wav": ("audio/wav", ".wav"), "mp4": ("video/mp4", ".mp4")}
FILE_FIELDS = {"video": (), "energy_curve": (".csv", ".npy")}
TEXT_FIELDS = {"prompt", "format", *FORM_OPTIONS}
STAGES = ("upload", "decode", "queue", "generate", "encode", "total")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Metrics:
    """Prometheus metrics of one replica (its own registry: no global state)."""

    def __init__(self, settings: ServeSettings):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("rewas_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.stage = Histogram("rewas_stage_seconds", "request latency per stage (total = arrival to response)",
                               ["stage"], registry=r,
                               buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        batch_buckets = tuple(range(1, settings.max_batch + 1))
        self.batch_requests = Histogram("rewas_batch_requests", "requests merged into one generate call",
                                        registry=r, buckets=batch_buckets)
        self.batch_items = Histogram("rewas_batch_candidates", "candidates in one generate call", registry=r,
                                     buckets=batch_buckets)
        self.engine = Counter("rewas_engine_seconds", "engine time per pipeline stage", ["stage"], registry=r)
        self.queue_depth = Gauge("rewas_queue_depth", "admitted requests not yet answered", registry=r)
        self.queue_capacity = Gauge("rewas_queue_capacity", "admitted requests allowed (more get 503)", registry=r)
        self.queue_capacity.set(settings.max_queue)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Service:
    """One replica's work: limits, upload parsing, decoding, generation, encoding, metrics.

    ``generate`` is how a job reaches the engines: by default one job at a time
    (``run_jobs`` on one job); the Ray deployment passes its ``@serve.batch``
    method, which calls ``run_jobs`` on a whole batch.
    """

    def __init__(self, settings: ServeSettings, pipeline=None,
                 generate: Callable[[Job], Awaitable[Outcome]] | None = None):
        from rewas_rt.pipeline import Pipeline

        self.settings = settings = settings.with_key()
        self.pipe = pipeline or Pipeline(settings.engines, backend=None if settings.backend == "auto"
                                         else settings.backend, threads=settings.threads)
        self.generate = generate or self._generate_alone
        # Two pools: the engines' batch loop has a thread of its own, so a batch starts the moment
        # the previous one ends (never behind decoding), and decoding/encoding never waits for it.
        self.engine_pool = ThreadPoolExecutor(1, thread_name_prefix="rewas-engine")
        self.cpu_pool = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="rewas-cpu")
        self.metrics = Metrics(settings)
        self.in_flight = 0
        self._engine_lock = asyncio.Lock()
        self._latency = 1.0  # moving average of generate seconds, for Retry-After
        self._background: set[asyncio.Task] = set()

    def warm_up(self) -> None:
        """Open every engine now, so the first request does not pay for it."""
        from rewas_rt.graphs import GRAPHS

        for name in GRAPHS:
            self.pipe.engine(name)
        self.pipe.unconditional_embedding()

    # ---- engines --------------------------------------------------------------------------

    def run_jobs(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Generate a batch of jobs (blocking; runs in a worker thread)."""
        start = time.perf_counter()
        for j in jobs:
            self.metrics.stage.labels("queue").observe(max(0.0, start - j.submitted))
        before = dict(self.pipe.timings)
        outcomes = run_batches(self.pipe, jobs, self.settings.max_batch)
        for stage, secs in self.pipe.timings.items():
            if secs > before.get(stage, 0.0):
                self.metrics.engine.labels(stage).inc(secs - before.get(stage, 0.0))
        calls = {o.call: o for o in outcomes}
        for o in calls.values():  # one entry per generate call
            self.metrics.batch_requests.observe(o.batch_requests)
            self.metrics.batch_items.observe(o.batch_items)
            self._latency = 0.8 * self._latency + 0.2 * o.seconds
        for o in outcomes:
            self.metrics.stage.labels("generate").observe(o.seconds)
        return outcomes

    async def _generate_alone(self, job: Job) -> Outcome:
        async with self._engine_lock:
            return (await in_thread(self.run_jobs, [job], executor=self.engine_pool))[0]

    # ---- HTTP -----------------------------------------------------------------------------

    def check_key(self, authorization: str | None) -> None:
        if self.settings.api_key is None:
            return
        token = None
        if authorization and authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
        if not self.settings.key_matches(token):
            raise ApiError(401, "missing or wrong API key (send: Authorization: Bearer <key>)",
                           {"WWW-Authenticate": "Bearer"})

    def retry_after(self) -> int:
        waves = math.ceil(self.in_flight / max(1, self.settings.max_batch))
        return max(1, min(600, math.ceil(waves * self._latency)))

    async def generate_http(self, headers: dict[str, str], body) -> tuple[bytes, dict[str, str], str]:
        """The whole POST /v1/generate: returns (content, headers, media type) or raises ApiError."""
        arrived = time.perf_counter()
        self.check_key(headers.get("authorization"))
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise ApiError(400, "invalid Content-Length")
            if int(length) > self.settings.max_upload_bytes:
                raise ApiError(413, f"upload larger than the limit of {self.settings.max_upload_mb:g} MiB")
        if self.in_flight >= self.settings.max_queue:
            raise ApiError(503, f"server busy ({self.in_flight} requests queued); retry later",
                           {"Retry-After": str(self.retry_after())})
        self.in_flight += 1
        self.metrics.queue_depth.set(self.in_flight)
        task = asyncio.ensure_future(self._generate(headers.get("content-type", ""), body, arrived))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.settings.deadline_s)
        except asyncio.TimeoutError:
            task.cancel()  # its cleanup (temp files) finishes in the background
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            raise ApiError(504, f"deadline of {self.settings.deadline_s:g} s exceeded") from None
        except asyncio.CancelledError:  # the client went away
            task.cancel()
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            raise
        finally:
            self.in_flight -= 1
            self.metrics.queue_depth.set(self.in_flight)
            self.metrics.stage.labels("total").observe(time.perf_counter() - arrived)

    async def _generate(self, content_type: str, body, arrived: float):
        tmp = Path(tempfile.mkdtemp(prefix="rewas-serve-", dir=self.settings.tmp_dir))  # mode 0700
        try:
            try:
                return await self._generate_in(tmp, content_type, body, arrived)
            except RewasError as e:
                raise _as_api_error(e, tmp) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    async def _generate_in(self, tmp: Path, content_type: str, body, arrived: float):
        s = self.settings
        with self._stage("upload"):
            upload = await parse_multipart(content_type, body, tmp, s.max_upload_bytes, FILE_FIELDS)
        as_text = sorted(set(upload.fields) & set(FILE_FIELDS))
        if as_text:
            raise InputError(f"{as_text[0]} must be sent as a file (a multipart part with a filename)")
        unknown = sorted(set(upload.fields) - TEXT_FIELDS)
        if unknown:
            raise InputError(f"unknown field {unknown[0]!r} (fields: video, prompt, energy_curve, format, "
                             f"{', '.join(FORM_OPTIONS)})")
        if "video" not in upload.files:
            raise InputError("missing field 'video' (the video file)")
        if "prompt" not in upload.fields:
            raise InputError("missing field 'prompt' (describe the sound, e.g. \"dog barking\")")
        given = {name: OPTIONS[name].parse(upload.fields[name]) for name in FORM_OPTIONS if name in upload.fields}
        values = {name: given.get(name, OPTIONS[name].default) for name in FORM_OPTIONS}
        fmt = upload.fields.get("format", "wav").strip().lower()
        if fmt not in FORMATS:
            raise InputError(f"format must be one of {', '.join(FORMATS)}, got {_short(fmt)}")
        edit = energy_edit(values["energy_scale"], values["energy_offset"], values["energy_clip_min"],
                           values["energy_clip_max"])
        sampling = sampling_settings({**{k: given.get(k) for k in ("sampler", "steps", "guidance", "eta")},
                                      "guidance_interval": guidance_interval(given.get("guidance_interval_low"),
                                                                             given.get("guidance_interval_high"))},
                                     self.pipe.dir.recommended)
        options = GenerationOptions(**sampling, candidates=values["candidates"], hint_from_mean=values["hint_mean"],
                                    energy_edit=edit, windows=WindowOptions(max_duration=s.max_video_seconds))
        prompt = upload.fields["prompt"]
        self.pipe.tokenizer.ids(prompt)  # the CLI's check: an empty prompt is refused
        seed = values["seed"] if values["seed"] is not None else secrets.randbelow(2**31)
        video, curve_file = upload.files["video"], upload.files.get("energy_curve")

        from rewas_rt.pipeline import VideoRequest

        clip = VideoRequest(prompt=prompt, seed=seed, video=video, start=values["start"], duration=values["duration"])
        with self._stage("decode"):
            request, plan = await in_thread(self._decode, clip, options, curve_file, executor=self.cpu_pool)
        job = Job(request, options, size=job_size(options.candidates, s.max_batch), submitted=time.perf_counter())
        outcome = await self.generate(job)
        if outcome.error is not None:
            raise outcome.error
        with self._stage("encode"):
            waves = outcome.result.waveforms[:, :plan.samples]  # the clip's length, as `rewas-rt infer` writes
            content, media_type = await in_thread(self._encode, tmp, clip, waves, fmt, seed, options,
                                                  executor=self.cpu_pool)
        headers = {"X-Rewas-Seed": str(seed), "X-Rewas-Candidates": str(options.candidates),
                   "X-Rewas-Seconds": f"{plan.frames / C.FPS:g}",
                   "Content-Disposition": f'attachment; filename="rewas{_suffix(media_type)}"'}
        return content, headers, media_type

    @contextlib.contextmanager
    def _stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.stage.labels(name).observe(time.perf_counter() - t0)

    def _decode(self, clip, options: GenerationOptions, curve_file: Path | None):
        """The job's request and the clip's windows. A clip of one window becomes a ``Request`` with
        its frames decoded (it can share an engine batch); a longer one stays a ``VideoRequest``
        that ``Pipeline.generate_video`` decodes window by window (never the whole video in memory)."""
        from rewas_rt import media
        from rewas_rt.energy_control import load_curve
        from rewas_rt.pipeline import plan_clip, window_request

        with media.open_input(clip.video) as container:
            duration = container.duration / 1e6 if container.duration else None
        if duration is not None and duration > self.settings.max_video_seconds:
            raise UploadTooLarge(f"video is {duration:.1f} s long; the limit is "
                                 f"{self.settings.max_video_seconds:g} s")
        with _warnings_logged():
            plan = plan_clip(clip, options.windows)  # start/duration checked against the video
            if curve_file is not None:
                clip.energy = load_curve(curve_file, frames=None)  # stretched over the whole clip
            if len(plan) > 1:
                return clip, plan
            return window_request(clip, options.candidates, options.energy_edit), plan

    def _encode(self, tmp: Path, clip, waves: np.ndarray, fmt: str, seed: int,
                options: GenerationOptions) -> tuple[bytes, str]:
        from rewas_rt.audio import mux, write_wav

        media_type, suffix = FORMATS[fmt]
        files = []
        for i, wave in enumerate(waves):
            out = tmp / f"candidate-{i}{suffix}"
            if fmt == "wav":
                write_wav(out, wave)
            else:
                mux(clip.video, wave, C.SAMPLE_RATE, out, start=clip.start)
            files.append(out)
        if len(files) == 1:
            return files[0].read_bytes(), media_type
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for f in files:
                z.write(f, f.name)
            z.writestr("result.json", json.dumps({
                "seed": seed, "candidates": len(files), "media_type": media_type,
                "files": [f.name for f in files],
                "seconds": waves.shape[1] / C.SAMPLE_RATE,
                "options": {"sampler": options.sampler, "steps": options.steps, "guidance": options.guidance,
                            "eta": options.eta, "start": clip.start, "duration": clip.duration},
            }, indent=1))
        return buf.getvalue(), "application/zip"

    def info(self) -> dict[str, Any]:
        d = self.pipe.dir
        m = d.manifest
        model = m.get("model", {}) if isinstance(m, dict) else getattr(m, "model", {})
        graphs = m["graphs"] if isinstance(m, dict) else getattr(m, "graphs", {})
        summary = {}
        for name, g in graphs.items():
            g = g if isinstance(g, dict) else _as_dict(g)
            engine = g.get("engine")
            summary[name] = {"onnx_bytes": g.get("onnx", {}).get("bytes"),
                             "engine": engine.get("precision") if engine else None}
        s = self.settings
        return {
            "version": __version__,
            "model": model if isinstance(model, dict) else _as_dict(model),
            "backend": self.pipe.backend.name,
            "engines": summary,
            "batching": {"max_batch": s.max_batch, "batch_wait_ms": s.batch_wait_ms},
            "limits": {"max_upload_mb": s.max_upload_mb, "max_video_seconds": s.max_video_seconds,
                       "max_queue": s.max_queue, "deadline_s": s.deadline_s},
            "audio": {"sample_rate": C.SAMPLE_RATE, "window_seconds": C.WAVE_SAMPLES / C.SAMPLE_RATE,
                      "max_seconds": s.max_video_seconds},
            "sampling": self.pipe.dir.recommended,
            "options": {name: OPTIONS[name].json_schema() for name in FORM_OPTIONS},
            "formats": list(FORMATS),
        }


def _as_dict(obj: Any) -> dict:
    import dataclasses

    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(getattr(obj, "__dict__", {}))


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _suffix(media_type: str) -> str:
    return {"audio/wav": ".wav", "video/mp4": ".mp4", "application/zip": ".zip"}[media_type]


@contextlib.contextmanager
def _warnings_logged():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        log.info("warning: %s", w.message)


def _as_api_error(e: RewasError, tmp: Path) -> ApiError:
    """The CLI's message, with our private paths replaced by the field names."""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    for field in FILE_FIELDS:
        for suffix in (*FILE_FIELDS[field], ""):  # longest first
            msg = msg.replace(str(tmp / f"{field}.upload{suffix}"), field)
    msg = msg.replace(str(tmp), "upload")
    if isinstance(e, UploadTooLarge):
        return ApiError(413, msg)
    if isinstance(e, InputError):
        return ApiError(400, msg)
    return ApiError(500, msg)


async def in_thread(fn, *args, executor: ThreadPoolExecutor | None = None):
    """Run ``fn`` in a worker thread of ``executor``; if the caller is cancelled, wait for
    the thread to finish before propagating, so cleanup never races the work."""
    fut = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await fut
        raise


# ---- FastAPI --------------------------------------------------------------------------------


def _error_schema() -> dict:
    return {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def generate_openapi_extra() -> dict:
    props: dict[str, Any] = {
        "video": {"type": "string", "format": "binary", "description": "the video (any format FFmpeg reads)"},
        "prompt": {"type": "string", "description": "what the sound is, e.g. \"dog barking\" (not empty)"},
        "energy_curve": {"type": "string", "format": "binary",
                         "description": "an energy curve (.csv or .npy) replacing the one predicted from the video"},
        "format": {"type": "string", "enum": list(FORMATS), "default": "wav",
                   "description": "wav: the sound; mp4: the video with the sound muxed in"},
    }
    for name in FORM_OPTIONS:
        props[name] = OPTIONS[name].json_schema()
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["video", "prompt"], "properties": props}}}},
        "responses": {
            "200": {"description": "the generated sound (one candidate), or a ZIP of candidate-<i>.<ext> and "
                                   "result.json when candidates > 1",
                    "headers": {"X-Rewas-Seed": {"schema": {"type": "integer"}},
                                "X-Rewas-Candidates": {"schema": {"type": "integer"}}},
                    "content": {"audio/wav": binary, "video/mp4": binary, "application/zip": binary}},
            "400": {"description": "invalid input (the message says which field and why)",
                    "content": _error_schema()},
            "401": {"description": "missing or wrong API key", "content": _error_schema()},
            "413": {"description": "upload or video longer than the limits", "content": _error_schema()},
            "503": {"description": "queue full; retry after Retry-After seconds", "content": _error_schema(),
                    "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
            "504": {"description": "the request's deadline passed", "content": _error_schema()},
        },
    }


def build_fastapi(service: Service | None):
    """The FastAPI app over ``service`` (None: routes only, for the OpenAPI description)."""
    app = FastAPI(title="rewas-rt", version=__version__,
                  description="ReWaS: sound for a video from a text prompt. Errors are {\"error\": \"...\"}.",
                  openapi_tags=[{"name": "generate"}, {"name": "service"}])

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    def count(route: str, status: int) -> None:
        if service is not None:
            service.metrics.requests.labels(route, str(status)).inc()

    @app.post("/v1/generate", tags=["generate"], summary="Generate sound for a video",
              openapi_extra=generate_openapi_extra(), response_class=Response)
    async def generate(request: Request):
        try:
            content, headers, media_type = await service.generate_http(dict(request.headers), request.stream())
        except ApiError as e:
            count("generate", e.status)
            return error(e.status, e.message, e.headers)
        except Exception:  # a bug: log it, answer without internals
            log.exception("POST /v1/generate failed")
            count("generate", 500)
            return error(500, "internal error (logged on the server)")
        count("generate", 200)
        return Response(content, media_type=media_type, headers=headers)

    @app.get("/healthz", tags=["service"], summary="Liveness and readiness",
             responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}})
    async def healthz():
        return {"status": "ok", "queue": service.in_flight if service else 0}

    @app.get("/v1/info", tags=["service"], summary="Model, backend, engines, limits and options")
    async def info(request: Request):
        try:
            service.check_key(request.headers.get("authorization"))
        except ApiError as e:
            return error(e.status, e.message, e.headers)
        return service.info()

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics (text format)",
             response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics(request: Request):
        try:
            service.check_key(request.headers.get("authorization"))
        except ApiError as e:
            return error(e.status, e.message, e.headers)
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(service.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    original_openapi = app.openapi

    def openapi() -> dict:
        schema = original_openapi()
        schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = {
            "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
        return schema

    app.openapi = openapi
    return app


def openapi_json() -> str:
    """The committed rewas_rt/serve/openapi.json (regenerate: python -m rewas_rt.serve.api)."""
    return json.dumps(build_fastapi(None).openapi(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    (Path(__file__).with_name("openapi.json")).write_text(openapi_json())
