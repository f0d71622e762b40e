"""`rewas-rt serve`: start a local Ray (bounded CPUs, no dashboard) and the service.

Ray is imported only when the command runs. Ctrl-C and SIGTERM shut Serve and
Ray down and exit 0.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from rewas_rt.errors import RewasError

log = logging.getLogger("rewas_rt.serve")


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="HTTP service on Ray Serve (pip install 'rewas-rt[serve]')",
                       description="Serve POST /v1/generate, GET /healthz, /v1/info, /metrics. "
                                   "Listens on 127.0.0.1 unless --host says otherwise.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--backend", default="auto", help="auto, tensorrt, onnxruntime-{tensorrt,cuda,cpu}")
    p.add_argument("--threads", type=int, help="ONNX Runtime CPU threads per replica")
    p.add_argument("--replicas", type=int, default=1, help="replicas (each takes one GPU on GPU backends)")
    p.add_argument("--autoscale-max-replicas", type=int, help="autoscale between --replicas and this many")
    p.add_argument("--max-batch", type=int, help="candidates per engine batch (default: the engines' maximum)")
    p.add_argument("--batch-wait-ms", type=float, default=20.0, help="wait for more requests to batch (default 20)")
    p.add_argument("--api-key-file", help="require 'Authorization: Bearer <key>' with the key in this file")
    p.add_argument("--max-upload-mb", type=float, default=64.0, help="largest upload (default 64 MiB)")
    p.add_argument("--max-video-seconds", type=float, default=600.0, help="longest video (default 600 s)")
    p.add_argument("--max-queue", type=int, default=32, help="requests admitted per replica; more get 503")
    p.add_argument("--deadline-s", type=float, default=120.0, help="per-request deadline (504 after it)")
    p.add_argument("--tmp-dir", help="parent of the per-request upload directories (default: system temp)")
    p.add_argument("--num-cpus", type=int, default=min(4, os.cpu_count() or 1),
                   help="CPUs the local Ray may use (default min(4, cores))")
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    from rewas_rt.pipeline import MAX_BATCH
    from rewas_rt.serve.settings import ServeSettings, read_api_key

    return ServeSettings(
        engines=str(args.engines), backend=args.backend, threads=args.threads, host=args.host, port=args.port,
        replicas=args.replicas, autoscale_max_replicas=args.autoscale_max_replicas,
        max_batch=args.max_batch if args.max_batch is not None else MAX_BATCH, batch_wait_ms=args.batch_wait_ms,
        api_key=read_api_key(args.api_key_file) if args.api_key_file else None,
        max_upload_mb=args.max_upload_mb, max_video_seconds=args.max_video_seconds, max_queue=args.max_queue,
        deadline_s=args.deadline_s, tmp_dir=args.tmp_dir,
        num_cpus=min(1.0, float(args.num_cpus)),
    )


def init_ray(num_cpus: int | None, address: str | None = None, verbose: bool = False, attempts: int = 3) -> None:
    """ray.init without the dashboard, retried: on a loaded machine a local node can miss
    Ray's fixed 30 s raylet registration window ("timed out during startup")."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            # "local": always a new local instance, never a cluster someone else started here.
            ray.init(address=address or "local", num_cpus=None if address else num_cpus, include_dashboard=False,
                     log_to_driver=verbose, logging_level=logging.WARNING, configure_logging=True)
            return
        except Exception as e:  # Ray raises a bare Exception for this
            ray.shutdown()
            if attempt == attempts or "timed out during startup" not in str(e):
                raise RewasError(f"Ray did not start: {str(e).splitlines()[0]}") from None
            print(f"Ray did not start in time (attempt {attempt}/{attempts}); retrying…", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from rewas_rt.manifest import open_engine_dir

    settings = settings_from_args(args)
    open_engine_dir(settings.engines, checksums=False)  # the CLI's error for a missing/bad directory, before Ray
    if settings.tmp_dir is not None and not os.path.isdir(settings.tmp_dir):
        raise RewasError(f"--tmp-dir {settings.tmp_dir}: not a directory")
    try:
        import ray
        from ray import serve

        from rewas_rt.serve.app import build
    except ImportError as e:
        raise RewasError(f"the service needs Ray Serve and FastAPI: pip install 'rewas-rt[serve]' ({e})") from None

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    print(f"starting Ray ({args.num_cpus} CPUs, no dashboard) and the service…", file=sys.stderr, flush=True)
    init_ray(args.num_cpus, args.address, bool(args.verbose))
    # After ray.init, which installs its own (fatal) SIGTERM handler: ours stops cleanly.
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port}, logging_config={"log_level": "WARNING"})
        serve.run(build(settings), name="rewas", route_prefix="/", blocking=False)
        print(f"listening on http://{settings.host}:{settings.port} "
              f"(POST /v1/generate; GET /healthz /v1/info /metrics); Ctrl-C to stop", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
        print("stopping…", file=sys.stderr, flush=True)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            for s, h in previous.items():
                signal.signal(s, h)
    print("stopped", file=sys.stderr, flush=True)
    return 0
