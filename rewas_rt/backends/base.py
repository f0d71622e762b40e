"""The backend interface (docs/design.md §6): named NumPy arrays in, named NumPy arrays out.

A ``Backend`` (ONNX Runtime with some execution provider, or native TensorRT)
opens one ``Engine`` per graph of the engine directory. Everything the pipeline
needs from an engine is ``run(feeds) -> outputs`` keyed by the tensor names of
the graph contract in ``rewas_rt.graphs``; the checks every backend shares
(names, dtypes, shapes against the contract) live here so that all backends
reject the same inputs with the same message.
"""
from __future__ import annotations

import abc
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rewas_rt.errors import BackendError  # noqa: F401 - defined in errors (rewas_rt.gpu raises it too)
from rewas_rt.graphs import GraphSpec, TensorSpec
from rewas_rt import manifest


def rebuild_hint(path: str | os.PathLike | None) -> str:
    """``manifest.rebuild_hint`` for the engine directory holding the file ``path``."""
    return manifest.rebuild_hint(Path(path).parent if path else None)


class Engine(abc.ABC):
    """One loaded graph. Not thread-safe: one caller at a time."""

    def __init__(self, spec: GraphSpec, metadata: dict[str, Any]):
        self.spec = spec
        self.name = spec.name
        self.input_names: tuple[str, ...] = tuple(t.name for t in spec.inputs)
        self.output_names: tuple[str, ...] = tuple(t.name for t in spec.outputs)
        # What runs it: backend, providers, precision, device (for logs and `rewas-rt info`).
        self.metadata = metadata

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on named inputs; returns the outputs by name, in contract order."""
        return self._run(check_feeds(self.spec, feeds))

    @abc.abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``feeds``: exactly the contract's inputs, contract dtypes, C-contiguous, shapes checked."""

    def close(self) -> None:
        """Release what the engine holds (device memory, sessions). Idempotent."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Backend(abc.ABC):
    name: str

    @abc.abstractmethod
    def available(self) -> tuple[bool, str]:
        """(usable here, why / why not) — the reason is one line meant for users."""

    @abc.abstractmethod
    def open(self, graph: str, files: Mapping[str, str | os.PathLike], spec: GraphSpec,
             info: Mapping[str, Any] | None = None) -> Engine:
        """Load ``graph`` from ``files`` ({"onnx": path, optionally "onnx_fp16" and "plan": paths},
        ``GraphFiles.files()``).

        ``spec`` must be resolved (``GRAPHS[graph].resolved(...)``): its shapes
        hold ints and dynamic-axis names only. ``info``: the manifest's graph entry when
        known (checksums, FP32 nodes), which a backend may use to key caches or pick a precision.
        """


def require_file(files: Mapping[str, str | os.PathLike], kind: str, graph: str) -> str:
    """The path of ``files[kind]``, checked to exist."""
    path = files.get(kind)
    if path is None:
        raise BackendError(f"graph {graph}: no .{kind} file given; {rebuild_hint(next(iter(files.values()), None))}")
    if not os.path.isfile(path):
        raise BackendError(f"graph {graph}: {kind} file not found: {path}; {rebuild_hint(path)}")
    return os.fspath(path)


def check_model_io(
    spec: GraphSpec,
    inputs: Mapping[str, tuple[str, Sequence[int | None]]],
    outputs: Mapping[str, tuple[str, Sequence[int | None]]],
    source: str,
) -> None:
    """Check a loaded model's I/O against the contract at load time.

    ``inputs``/``outputs`` map name -> (numpy dtype name, shape with None for a
    dynamic axis), in the model's order. A mismatch means the file was built
    from another contract (or another model config): say what differs.
    """
    for kind, model, want in (("inputs", inputs, spec.inputs), ("outputs", outputs, spec.outputs)):
        if set(model) != {t.name for t in want}:
            raise BackendError(
                f"graph {spec.name}: {source} has {kind} {sorted(model)}, the contract {sorted(t.name for t in want)}; "
                f"{rebuild_hint(source)}"
            )
        for t in want:
            dtype, shape = model[t.name]
            if dtype != t.dtype:
                raise BackendError(
                    f"graph {spec.name}: {t.name} is {dtype} in {source} but {t.dtype} in the contract; "
                    f"{rebuild_hint(source)}"
                )
            static = tuple(d if isinstance(d, int) else None for d in t.shape)
            clash = any(a is not None and b is not None and a != b for a, b in zip(shape, static))
            if len(shape) != len(static) or clash:
                raise BackendError(
                    f"graph {spec.name}: {t.name} has shape {_fmt(shape)} in {source} but {_fmt(t.shape)} in the contract "
                    f"(another model config?); {rebuild_hint(source)}"
                )


def check_feeds(spec: GraphSpec, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Validate ``feeds`` against the contract and return them ready to run.

    Arrays are converted to the contract dtype when NumPy calls that a
    same-kind cast (float64 -> float32, int32 -> int64), since that is what
    callers naturally produce; anything else (float -> int) is an error. Named
    axes must agree across inputs (e.g. every ``cfg_batch``).
    """
    names = {t.name for t in spec.inputs}
    missing, unexpected = sorted(names - set(feeds)), sorted(set(feeds) - names)
    if missing or unexpected:
        parts = [f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else ""]
        raise BackendError(
            f"graph {spec.name}: inputs {' and '.join(p for p in parts if p)}; it takes {[t.name for t in spec.inputs]}"
        )
    out: dict[str, np.ndarray] = {}
    axes: dict[str, tuple[int, str]] = {}  # axis name -> (size, first input that set it)
    for t in spec.inputs:
        out[t.name] = array = _as_contract_dtype(spec.name, t, feeds[t.name])
        _check_shape(spec.name, t, array.shape, axes)
    return out


def _as_contract_dtype(graph: str, t: TensorSpec, value: Any) -> np.ndarray:
    array = np.asarray(value)
    want = np.dtype(t.dtype)
    if array.dtype != want and not np.can_cast(array.dtype, want, casting="same_kind"):
        raise BackendError(f"graph {graph}: input {t.name} is {array.dtype}, expected {want}")
    # Engines read raw memory: contiguous, native byte order, the contract dtype.
    return np.ascontiguousarray(array, dtype=want)


def _check_shape(graph: str, t: TensorSpec, shape: tuple[int, ...], axes: dict[str, tuple[int, str]]) -> None:
    bad = len(shape) != len(t.shape)
    for got, want in zip(shape, t.shape):
        if isinstance(want, int):
            bad = bad or got != want
        elif want in axes and axes[want][0] != got:
            size, first = axes[want]
            raise BackendError(
                f"graph {graph}: input {t.name} has {want}={got} but {first} has {want}={size} (shape {shape})"
            )
        else:
            axes.setdefault(want, (got, t.name))
    if bad or any(d < 1 for d in shape):
        raise BackendError(f"graph {graph}: input {t.name} has shape {shape}, expected {_fmt(t.shape)}")


def _fmt(shape: Sequence[int | str | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
