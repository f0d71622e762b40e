"""Native TensorRT 10 and 11 engines (``.plan`` files built by ``export/build_engines.py``).

CUDA memory, streams and graphs go through cuda-python's ``cuda.bindings.runtime``
rather than polygraphy's ctypes wrapper: it is NVIDIA's maintained binding of the
whole CUDA runtime API, stream capture and graph launch included (which the UNet
step needs and polygraphy's wrapper lacks), and it is a small wheel in the
``gpu`` extra, while polygraphy belongs to the export tooling.

Both ``tensorrt`` and ``cuda.bindings`` are imported lazily, so this module
imports everywhere and ``available()`` says what is missing.

Per engine: one execution context, one non-blocking stream, and one device
buffer per I/O tensor allocated once at the optimisation profile's maximum
shapes. The buffer addresses never change, so they are bound once and a
captured CUDA graph stays valid for as long as the input shapes do.
"""
from __future__ import annotations

import functools
import logging
import os
from collections.abc import Collection, Mapping

import numpy as np

from rewas_rt.backends.base import Backend, BackendError, Engine, check_model_io, rebuild_hint, require_file
from rewas_rt.gpu import cuda_call as _call
from rewas_rt.gpu import cuda_imports as _imports
from rewas_rt.gpu import probe as _probe
from rewas_rt.graphs import GraphSpec

log = logging.getLogger("rewas_rt")


class TensorRTBackend(Backend):
    """``tensorrt``: runs the ``.plan`` engines.

    cuda_graphs: graphs whose calls are captured into a CUDA graph and replayed
    while their input shapes repeat; the UNet step is called ~2x200 times per
    request with the same shapes, everything else once, where capture only costs.
    """

    name = "tensorrt"

    def __init__(self, device_id: int = 0, cuda_graphs: Collection[str] = ("unet_adapter",)):
        self.device_id = device_id
        self.cuda_graphs = frozenset(cuda_graphs)

    def available(self) -> tuple[bool, str]:
        ok, reason, _ = _probe(self.device_id)
        return ok, reason

    def target(self) -> dict[str, str]:
        """What a plan must have been built for to load here: {"version" (TensorRT), "compute_capability", "gpu"}.

        The keys are those of ``rewas_rt.manifest.detect_tensorrt``: pass this as
        ``open_engine_dir(..., tensorrt=backend.target())`` so that the manifest
        check looks at the GPU this backend runs on.
        """
        ok, reason, target = _probe(self.device_id)
        if not ok:
            raise BackendError(f"backend tensorrt: {reason}")
        return dict(target)

    def open(self, graph: str, files: Mapping[str, str | os.PathLike], spec: GraphSpec,
             info: Mapping | None = None) -> Engine:
        plan = require_file(files, "plan", graph)
        ok, reason = self.available()
        if not ok:
            raise BackendError(f"backend tensorrt: {reason}")
        trt, cudart = _imports()
        _call(cudart, "cudaSetDevice", cudart.cudaSetDevice(self.device_id))
        runtime, logger = _runtime(trt)
        logger.errors.clear()
        with open(plan, "rb") as f:
            engine = runtime.deserialize_cuda_engine(f.read())
        if engine is None:
            # TensorRT says why in its log, e.g. "expecting library version 10.3 got 10.8"
            # or "generated on an incompatible device, expecting compute 8.6 got compute 9.0".
            why = " / ".join(logger.errors) or "no reason given"
            raise BackendError(f"graph {graph}: TensorRT {trt.__version__} cannot load {plan} ({why}); {rebuild_hint(plan)}")
        target = _probe(self.device_id)[2]
        metadata = {
            "backend": self.name,
            "tensorrt": trt.__version__,
            "device": f"cuda:{self.device_id} {target['gpu']} (compute capability {target['compute_capability']})",
            "precision": _built_precision(info),
            "cuda_graph": graph in self.cuda_graphs,
        }
        return TensorRTEngine(spec, engine, plan, metadata, trt, cudart, logger, use_cuda_graph=graph in self.cuda_graphs,
                              device_id=self.device_id)


@functools.lru_cache(maxsize=None)
def _runtime(trt):
    """One trt.Runtime and logger per process, never freed: TensorRT requires both
    to outlive every engine made through them, whoever still holds an engine."""
    logger = _make_logger(trt)
    return trt.Runtime(logger), logger


def _make_logger(trt):
    class Logger(trt.ILogger):
        """Keeps TensorRT's errors so that a failed load can say why; warnings go to our log."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                self.errors.append(msg)
                log.debug("TensorRT: %s", msg)  # raised as BackendError by the caller
            elif severity == trt.ILogger.WARNING:
                log.warning("TensorRT: %s", msg)

    return Logger()


class TensorRTEngine(Engine):
    def __init__(self, spec, engine, plan: str, metadata, trt, cudart, logger, *, use_cuda_graph: bool,
                 device_id: int = 0):
        super().__init__(spec, metadata)
        self._cudart = cudart
        # The current CUDA device is per host thread (CUDA Runtime API, "Device Management":
        # cudaSetDevice sets it for the calling thread only): every entry point sets it, so a
        # server thread other than the one that opened the engine works on the right GPU.
        self._device_id = device_id
        self._logger = logger  # collects TensorRT's error messages (see _make_logger)
        self._engine = engine
        self._buffers: dict[str, int] = {}
        self._stream = None
        self._graph_exec = None
        self._use_graph = use_cuda_graph
        self._warm = False  # ran once with the current input shapes (required before capture)

        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        mode = {n: engine.get_tensor_mode(n) for n in names}
        dtypes = {n: _dtype_name(trt, engine.get_tensor_dtype(n)) for n in names}

        def io(kind):  # name -> (dtype, shape with None for a dynamic axis)
            shapes = {n: [d if d >= 0 else None for d in engine.get_tensor_shape(n)] for n in names}
            return {n: (dtypes[n], shapes[n]) for n in names if mode[n] == kind}

        check_model_io(spec, io(trt.TensorIOMode.INPUT), io(trt.TensorIOMode.OUTPUT), source=plan)
        self._set_device()
        self._dtypes = {n: np.dtype(dtypes[n]) for n in names}  # the contract's, as just checked

        # (min, max) input shapes of optimisation profile 0, the only one the export builds.
        self._limits = {}
        for name in self.input_names:
            low, _, high = engine.get_tensor_profile_shape(name, 0)
            self._limits[name] = (tuple(low), tuple(high))

        self._context = engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"graph {self.name}: TensorRT could not create an execution context (out of GPU memory?)")
        self._stream = _call(
            cudart, "cudaStreamCreateWithFlags", cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)
        )
        # Set the maximum input shapes, so that the context infers the maximum output shapes.
        self._shapes = tuple(self._limits[n][1] for n in self.input_names)
        self._set_shapes(self._shapes)
        for name in mode:
            nbytes = int(np.prod(self._shape(name))) * self._dtypes[name].itemsize
            self._buffers[name] = ptr = _call(cudart, "cudaMalloc", cudart.cudaMalloc(max(nbytes, 1)))
            if not self._context.set_tensor_address(name, ptr):
                raise BackendError(f"graph {self.name}: TensorRT rejected the buffer of {name}")

    def _set_device(self) -> None:
        _call(self._cudart, "cudaSetDevice", self._cudart.cudaSetDevice(self._device_id))

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._cudart is None:
            raise BackendError(f"graph {self.name}: the engine is closed")
        self._set_device()
        cudart, stream = self._cudart, self._stream
        to_gpu, to_host = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        shapes = tuple(feeds[n].shape for n in self.input_names)
        if shapes != self._shapes:
            self._check_limits(feeds)
            self._drop_graph()  # it replays the previous shapes
            self._warm = False
            self._shapes = None  # unknown until every input shape is accepted
            self._set_shapes(shapes)
            self._shapes = shapes
        for name, array in feeds.items():  # `feeds` keeps the host arrays alive until the sync below
            copy = cudart.cudaMemcpyAsync(self._buffers[name], array.ctypes.data, array.nbytes, to_gpu, stream)
            _call(cudart, "copy to GPU", copy)
        self._execute()
        outputs = {}
        for name in self.output_names:
            outputs[name] = out = np.empty(self._shape(name), self._dtypes[name])
            copy = cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name], out.nbytes, to_host, stream)
            _call(cudart, "copy from GPU", copy)
        _call(cudart, "cudaStreamSynchronize", cudart.cudaStreamSynchronize(stream))
        return outputs

    def _execute(self) -> None:
        """Enqueue the network: replay the CUDA graph, capture one, or plain execute_async_v3."""
        if self._graph_exec is not None:
            _call(self._cudart, "cudaGraphLaunch", self._cudart.cudaGraphLaunch(self._graph_exec, self._stream))
        elif self._use_graph and self._warm:
            self._capture()
        else:
            # TensorRT must run once after a shape change (to update its internal
            # state) before a capture of the same shapes is valid.
            self._enqueue()
            self._warm = True

    def _capture(self) -> None:
        """Record one execute_async_v3 into a CUDA graph and launch it; on failure run without graphs.

        CUDA Runtime API facts relied on ("Graph Management", "Stream Management"):
        * thread-local capture mode: only this thread's unsafe calls (e.g. a cudaMalloc by
          another request thread would otherwise invalidate *this* capture or fail itself
          under global mode) are prohibited during the capture;
        * a capture must always be ended (cudaStreamEndCapture), or the stream stays in
          capture mode and every later call on it fails — hence ``finally``, also when
          execute_async_v3 raises;
        * cudaStreamEndCapture returns cudaErrorStreamCaptureInvalidated (and no graph)
          when something broke the capture; a graph it does return is ours to destroy,
          whether or not instantiation succeeds.
        """
        cudart, stream = self._cudart, self._stream
        success = cudart.cudaError_t.cudaSuccess
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        (err,) = cudart.cudaStreamBeginCapture(stream, mode)
        if err != success:
            return self._no_capture(f"cudaStreamBeginCapture: {self._error_text(err)}")
        graph = None
        why = None
        try:
            try:
                enqueued = self._context.execute_async_v3(int(stream))
            except BaseException:
                self._use_graph = False  # do not try again: run plainly from now on
                raise
            finally:
                err, graph = cudart.cudaStreamEndCapture(stream)  # always: the stream must leave capture mode
                if err != success:
                    graph, why = None, f"cudaStreamEndCapture: {self._error_text(err)}"  # e.g. capture invalidated
            if why is None and not enqueued:
                why = "execute_async_v3 failed under capture"
            if why is None:
                err, graph_exec = cudart.cudaGraphInstantiate(graph, 0)
                if err == success:
                    self._graph_exec = graph_exec
                    _call(cudart, "cudaGraphLaunch", cudart.cudaGraphLaunch(graph_exec, stream))
                    return
                why = f"cudaGraphInstantiate: {self._error_text(err)}"
        finally:
            if graph is not None:
                cudart.cudaGraphDestroy(graph)  # the executable graph (if any) does not need it
        self._no_capture(why)

    def _no_capture(self, why: str) -> None:
        log.warning("graph %s: CUDA graph capture failed (%s); running it without CUDA graphs", self.name, why)
        self._use_graph = False
        self._enqueue()

    def _error_text(self, err) -> str:
        try:
            _, text = self._cudart.cudaGetErrorString(err)
            return text.decode(errors="replace")
        except Exception:  # noqa: BLE001 - only for a message
            return str(err)

    def _enqueue(self) -> None:
        self._logger.errors.clear()
        if not self._context.execute_async_v3(int(self._stream)):
            why = " / ".join(self._logger.errors) or "no reason given"
            raise BackendError(f"graph {self.name}: TensorRT execution failed ({why})")

    def _set_shapes(self, shapes) -> None:
        for name, shape in zip(self.input_names, shapes):
            if not self._context.set_input_shape(name, shape):
                raise BackendError(f"graph {self.name}: TensorRT rejected shape {shape} for input {name}")

    def _shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self._context.get_tensor_shape(name))

    def _check_limits(self, feeds: dict[str, np.ndarray]) -> None:
        for name, (low, high) in self._limits.items():
            shape = feeds[name].shape
            if any(s < lo or s > hi for s, lo, hi in zip(shape, low, high)):
                raise BackendError(
                    f"graph {self.name}: input {name} has shape {shape}, outside the engine's range {low} .. {high}; "
                    "split the batch or rebuild the engines with a larger profile"
                )

    def _drop_graph(self) -> None:
        if self._graph_exec is not None:
            self._cudart.cudaGraphExecDestroy(self._graph_exec)
            self._graph_exec = None

    def close(self) -> None:
        """Free the GPU resources; errors are ignored (this also runs at interpreter exit)."""
        if self._cudart is None:
            return
        cudart, self._cudart = self._cudart, None
        cudart.cudaSetDevice(self._device_id)  # free on the engine's GPU, whichever thread closes
        if self._stream is not None:
            cudart.cudaStreamSynchronize(self._stream)
        if self._graph_exec is not None:
            cudart.cudaGraphExecDestroy(self._graph_exec)
            self._graph_exec = None
        self._context = self._engine = None  # before the memory they point at goes
        for ptr in self._buffers.values():
            cudart.cudaFree(ptr)
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)

    def __del__(self):
        self.close()


def _built_precision(info: Mapping | None) -> str:
    """The manifest's word for what was built ("fp16": strongly typed from the FP16 graph, or the
    FP16 flag with FP32 pins; "fp32"), with its typing."""
    engine = (info or {}).get("engine")
    if not isinstance(engine, Mapping):
        return "as built (see the manifest)"
    typing = engine.get("typing")
    return f"{engine.get('precision')} ({typing}ly typed)" if typing else str(engine.get("precision"))


def _dtype_name(trt, dtype) -> str:
    try:
        return np.dtype(trt.nptype(dtype)).name
    except TypeError:  # a TensorRT type without a NumPy equivalent (bf16, fp8, ...)
        return f"TensorRT {dtype}"
