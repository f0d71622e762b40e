"""Per-stage timing of a pipeline run, with an optional hook that sees every single call."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

# Called as hook(stage, start, end) (time.perf_counter seconds) after every timed stage call.
TimingHook = Callable[[str, float, float], None]


class Timings(dict):
    """Seconds per stage, accumulated over a run; ``hook`` also sees every single call
    (e.g. each ``unet_adapter`` step: what benchmarks/ measures, without patching the pipeline)."""

    def __init__(self, hook: TimingHook | None = None):
        super().__init__()
        self.hook = hook

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            t1 = time.perf_counter()
            self[name] = self.get(name, 0.0) + t1 - t0
            if self.hook is not None:
                self.hook(name, t0, t1)
