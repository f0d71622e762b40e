"""Every knob of the service in one validated dataclass (plain data: it travels to
Ray replicas as a dict, and a serve config YAML sets it as the app's ``args``)."""
from __future__ import annotations

import dataclasses
import hmac
from pathlib import Path
from typing import Any

from rewas_rt.errors import RewasError
from rewas_rt.pipeline import MAX_BATCH

GPU_BACKENDS = ("tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda")


class SettingsError(RewasError):
    """A service setting out of range (one line)."""


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    engines: str = "engines"
    backend: str = "auto"
    threads: int | None = None  # ONNX Runtime CPU threads per replica
    host: str = "127.0.0.1"
    port: int = 8000
    # Scale: a fixed replica count, or autoscaling between min and max replicas.
    replicas: int = 1
    autoscale_max_replicas: int | None = None  # set: autoscale between `replicas` and this
    target_ongoing_requests: float = 4.0  # autoscaling target per replica
    num_gpus: float | None = None  # per replica; None: 1 on GPU backends, 0 otherwise
    num_cpus: float = 1.0  # per replica
    # Batching.
    max_batch: int = MAX_BATCH  # candidates per engine batch (the engines' profile caps it)
    batch_wait_ms: float = 20.0  # how long the first request of a batch waits for company
    # Protection.
    api_key: str | None = None
    api_key_file: str | None = None  # read where the replica runs (a cluster's secret mount), see with_key()
    max_upload_mb: float = 64.0
    max_video_seconds: float = 600.0
    max_queue: int = 32  # admitted requests per replica (queued + generating); more -> 503
    deadline_s: float = 120.0  # per request, from arrival to response; -> 504
    tmp_dir: str | None = None  # parent of the per-request private directories (default: system temp)

    def __post_init__(self):
        def need(ok: bool, what: str):
            if not ok:
                raise SettingsError(what)

        need(1 <= self.port <= 65535, f"port must be in 1..65535, got {self.port}")
        need(self.replicas >= 1, f"replicas must be >= 1, got {self.replicas}")
        need(self.autoscale_max_replicas is None or self.autoscale_max_replicas >= self.replicas,
             "autoscale max replicas must be >= replicas")
        need(1 <= self.max_batch <= MAX_BATCH, f"max batch must be in 1..{MAX_BATCH} (the engines' batch profile), "
                                               f"got {self.max_batch}")
        need(0 <= self.batch_wait_ms <= 10_000, f"batch wait must be in 0..10000 ms, got {self.batch_wait_ms}")
        need(self.max_upload_mb > 0, "max upload must be > 0 MB")
        need(self.max_video_seconds > 0, "max video duration must be > 0 s")
        need(self.max_queue >= 1, f"max queue must be >= 1, got {self.max_queue}")
        need(self.deadline_s > 0, "deadline must be > 0 s")
        need(self.threads is None or self.threads >= 1, "threads must be >= 1")
        need(self.target_ongoing_requests > 0, "target ongoing requests must be > 0")
        need(self.api_key is None or len(self.api_key) >= 16, "the API key must be at least 16 characters")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def gpus_per_replica(self) -> float:
        if self.num_gpus is not None:
            return self.num_gpus
        return 1.0 if self.backend in GPU_BACKENDS else 0.0

    def key_matches(self, given: str | None) -> bool:
        """Constant-time comparison of a presented bearer token with the key."""
        if self.api_key is None:
            return True
        return given is not None and hmac.compare_digest(given.encode(), self.api_key.encode())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServeSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"unknown service setting(s): {', '.join(unknown)}")
        return cls(**data)

    def with_key(self) -> "ServeSettings":
        """These settings with ``api_key`` read from ``api_key_file`` (when one is named)."""
        if self.api_key_file and self.api_key is None:
            return dataclasses.replace(self, api_key=read_api_key(self.api_key_file))
        return self


def read_api_key(path: str | Path) -> str:
    """The key in a file (surrounding whitespace stripped); a one-line error when unusable."""
    p = Path(path)
    try:
        key = p.read_text().strip()
    except OSError as e:
        raise SettingsError(f"{p}: cannot read the API key file ({e.strerror})") from None
    if len(key) < 16 or any(c.isspace() for c in key):
        raise SettingsError(f"{p}: the API key must be one token of at least 16 characters")
    return key
