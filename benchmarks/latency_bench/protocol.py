"""The worker protocol: one process per backend, JSON lines over stdin/stdout.

The parent starts ``python benchmarks/latency.py --worker NAME --spec FILE``; the worker
loads its backend and answers ``{"op": "run", "steps": S}`` with ``{"event": "result",
"record": …}`` and ``{"op": "done"}`` with its peak memory. Protocol lines start with
``MARK``; anything else the worker prints is passed through. Peak memory is the worker's
``VmHWM``, reset after loading (``/proc/self/clear_refs``).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.latency_bench.runners import actual_steps, make_runner

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "latency.py"


def _proc_status_kb(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


MARK = "@@rewas-bench "  # protocol lines on the worker's stdout start with this; anything else is passed through


def send(msg: dict) -> None:
    sys.stdout.write(MARK + json.dumps(msg) + "\n")
    sys.stdout.flush()


def worker(spec_path: Path, name: str) -> int:
    """Load one backend, then serve requests read from stdin, one JSON object a line:
    {"op": "run", "steps": S} -> {"event": "result", "record": ...}; {"op": "done"} -> {"event": "done", ...}."""
    spec = json.loads(spec_path.read_text())
    try:
        t0 = time.perf_counter()
        runner = make_runner(spec, name)
        load_s = time.perf_counter() - t0
        send({"event": "ready", "pid": os.getpid(), "load_s": load_s, "info": runner.backend_info,
               "rss_after_load_mb": _mb(_proc_status_kb("VmRSS")), "peak_rss_load_mb": _mb(_proc_status_kb("VmHWM")),
               "peak_reset": _reset_peak()})
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "run":
                send({"event": "result", "record": runner.run(spec, int(cmd["steps"]))})
            elif cmd["op"] == "done":
                send({"event": "done", "peak_rss_generation_mb": _mb(_proc_status_kb("VmHWM"))})
                return 0
    except Exception as e:  # noqa: BLE001 - reported in the table, the other backends still run
        import traceback

        send({"event": "error", "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
               "traceback": traceback.format_exc()})
        return 1
    return 0


class Worker:
    """The parent's handle on one backend's worker process."""

    def __init__(self, name: str, spec_path: Path, env: dict[str, str], timeout: float | None):
        import queue
        import threading

        self.name, self.timeout = name, timeout
        self.raw: dict[str, Any] = {"backend": name, "status": "ok", "plans": {}}
        cmd = [sys.executable, str(SCRIPT), "--worker", name, "--spec", str(spec_path)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.msgs: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                self.msgs.put(json.loads(line[len(MARK):]))
            else:
                sys.stdout.write(line)
        self.msgs.put({"event": "error", "reason": f"worker exited ({self.proc.wait()}) without answering"})

    @property
    def ok(self) -> bool:
        return self.raw["status"] == "ok"

    def _fail(self, reason: str, tb: str = "") -> None:
        self.raw.update(status="failed", reason=reason, traceback=tb)
        print(f"{self.name}: failed: {reason}\n{tb}", file=sys.stderr, flush=True)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _expect(self, event: str) -> dict | None:
        import queue

        try:
            msg = self.msgs.get(timeout=self.timeout)
        except queue.Empty:
            self._fail(f"no answer within --timeout {self.timeout:g} s")
            return None
        if msg["event"] != event:
            self._fail(msg.get("reason", f"unexpected {msg['event']}"), msg.get("traceback", ""))
            return None
        return msg

    def _send(self, msg: dict) -> bool:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            self._fail("the worker closed its input")
            return False

    def wait_ready(self) -> None:
        msg = self._expect("ready")
        if msg:
            msg.pop("event")
            self.raw.update(msg)

    def run(self, steps: int, timed: bool, label: str) -> None:
        if not (self.ok and self._send({"op": "run", "steps": steps})):
            return
        msg = self._expect("result")
        if msg is None:
            return
        rec = msg["record"]
        print(f"[{self.name}] {steps} steps, {label}: {rec['e2e']:.2f} s", file=sys.stderr, flush=True)
        if timed:
            self.raw["plans"].setdefault(str(steps), {"steps": actual_steps(steps), "runs": []})["runs"].append(rec)

    def finish(self) -> None:
        if self.ok and self._send({"op": "done"}):
            msg = self._expect("done")
            if msg:
                self.raw["peak_rss_generation_mb"] = msg["peak_rss_generation_mb"]
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def measure(names: list[str], spec: dict, spec_path: Path, env: dict[str, str], timeout: float | None,
            sequential: bool) -> dict[str, dict]:
    """Run every plan on every backend. Interleaved (default): all workers loaded (one after another), then
    request k of each backend in turn, the order reversed every other round, so that changing load from other
    processes hits every backend alike. Sequential: one backend at a time (less memory at once)."""
    rounds = [(steps, r) for steps in spec["plan_steps"] for r in range(spec["warmup"] + spec["repeats"])]

    def label(r: int) -> str:
        return f"warm-up {r + 1}" if r < spec["warmup"] else f"run {r + 1 - spec['warmup']}"

    def start(name: str) -> Worker:
        print(f"{name}: loading", file=sys.stderr, flush=True)
        w = Worker(name, spec_path, env, timeout)
        w.wait_ready()
        return w

    workers: list[Worker] = []
    if sequential:
        for name in names:
            w = start(name)
            for steps, r in rounds:
                w.run(steps, r >= spec["warmup"], label(r))
            w.finish()
            workers.append(w)
    else:
        workers = [start(name) for name in names]
        for i, (steps, r) in enumerate(rounds):
            for w in (workers if i % 2 == 0 else workers[::-1]):
                w.run(steps, r >= spec["warmup"], label(r))
        for w in workers:
            w.finish()
    return {w.name: w.raw for w in workers}
