"""The Ray Serve application: one deployment per replica set, FastAPI ingress,
``@serve.batch`` in front of ``Service.run_jobs``.

Request handling (multipart parsing, video decoding, WAV/MP4 encoding) runs in
the replica's HTTP handlers and worker threads; only decoded jobs enter the
batch queue, so CPU work never holds the engines' batch loop. One batch runs at
a time per replica (the engines are one GPU's, or the CPU's).

Entry points:

* ``build(settings)`` — an Application for ``serve.run`` (used by ``rewas-rt serve``);
* ``build_app(args)`` — the application builder a serve config YAML names
  (``import_path: rewas_rt.serve.app:build_app``; ``args`` are ServeSettings fields,
  plus ``api_key_file``).
"""
from __future__ import annotations

from typing import Any

from ray import serve

from rewas_rt.pipeline import MAX_BATCH
from rewas_rt.serve.api import Service, build_fastapi, in_thread
from rewas_rt.serve.batching import Job, Outcome
from rewas_rt.serve.settings import ServeSettings


def _batch_size(jobs: list[Job]) -> int:
    return sum(j.size for j in jobs)


@serve.deployment
@serve.ingress()
class RewasDeployment:
    def __init__(self, settings: dict[str, Any]):
        s = ServeSettings.from_dict(settings)
        self.service = Service(s, generate=self.submit)
        self.service.warm_up()
        self.batched.set_max_batch_size(s.max_batch)
        self.batched.set_batch_wait_timeout_s(s.batch_wait_ms / 1000)

    def __serve_build_asgi_app__(self):
        return build_fastapi(self.service)

    async def submit(self, job: Job) -> Outcome:
        return await self.batched(job)

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.02, batch_size_fn=_batch_size)
    async def batched(self, jobs: list[Job]) -> list[Outcome]:
        return await in_thread(self.service.run_jobs, jobs, executor=self.service.engine_pool)


def deployment_options(s: ServeSettings) -> dict[str, Any]:
    """Replicas (fixed or autoscaled), resources and Ray's own request bounds."""
    opts: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": s.num_cpus, "num_gpus": s.gpus_per_replica},
        # Our admission control answers 503 at max_queue; Ray's bounds sit just above it
        # so /healthz and /metrics still get through, and nothing queues without bound.
        "max_ongoing_requests": s.max_queue + 8,
        "max_queued_requests": s.max_queue,
        "health_check_period_s": 10,
        "graceful_shutdown_timeout_s": min(60.0, s.deadline_s),
    }
    if s.autoscale_max_replicas is not None:
        opts["autoscaling_config"] = {
            "min_replicas": s.replicas,
            "max_replicas": s.autoscale_max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests,
        }
    else:
        opts["num_replicas"] = s.replicas
    return opts


def build(settings: ServeSettings):
    return RewasDeployment.options(**deployment_options(settings)).bind(settings.to_dict())


def build_app(args: dict[str, Any]):
    """Application builder for serve config files (``serve run config.yaml``)."""
    return build(ServeSettings.from_dict(dict(args)))
