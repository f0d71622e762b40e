"""Stand-ins for ``tensorrt`` and ``cuda.bindings.runtime``, to test the TensorRT
backend's bookkeeping (buffers, shapes, CUDA-graph capture/replay/fallback)
on machines without a GPU.

They model only the behaviour the backend relies on, as documented by NVIDIA:
calls return ``(error, *values)``; "device memory" is host memory here, so
copies are memmoves; work enqueued while a stream is capturing is recorded,
not run, and runs on each graph launch. The network is the test's toy graph:
``y = x @ W + b`` and ``ids2 = 2 * ids`` with a dynamic batch axis.
"""
from __future__ import annotations

import ctypes
import types

import numpy as np

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
B = np.array([1.0, -1.0, 0.5], dtype=np.float32)
MAX_BATCH = 8


def _view(address: int, shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    raw = (ctypes.c_byte * (count * dtype.itemsize)).from_address(address)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


class FakeCudart:
    cudaError_t = types.SimpleNamespace(cudaSuccess=0)
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeGlobal=0)
    cudaStreamNonBlocking = 1

    def __init__(self):
        self.memory: dict[int, np.ndarray] = {}
        self.capturing: list | None = None  # the recorded work while a capture is open
        self.launches = 0
        self.live_graphs = 0

    def cudaSetDevice(self, device):
        return (0,)

    def cudaMalloc(self, nbytes):
        block = np.zeros(nbytes, np.uint8)
        self.memory[block.ctypes.data] = block
        return 0, block.ctypes.data

    def cudaFree(self, ptr):
        del self.memory[ptr]
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        ctypes.memmove(dst, src, nbytes)
        return (0,)

    def cudaStreamCreateWithFlags(self, flags):
        return 0, 7

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capturing = self.capturing, None
        return 0, graph

    def cudaGraphInstantiate(self, graph, flags):
        self.live_graphs += 1
        return 0, list(graph)

    def cudaGraphDestroy(self, graph):
        return (0,)

    def cudaGraphExecDestroy(self, graph_exec):
        self.live_graphs -= 1
        return (0,)

    def cudaGraphLaunch(self, graph_exec, stream):
        self.launches += 1
        for work in graph_exec:
            work()
        return (0,)

    def cudaGetErrorString(self, err):
        return 0, b"fake CUDA error"


class FakeContext:
    def __init__(self, cudart: FakeCudart, refuse_capture: bool):
        self.cudart = cudart
        self.refuse_capture = refuse_capture
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.enqueued = 0  # execute_async_v3 calls that ran (not captured)

    def set_input_shape(self, name, shape):
        if not 1 <= shape[0] <= MAX_BATCH:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        batch = self.shapes["x"][0]
        return {"x": (batch, 4), "ids": (batch,), "y": (batch, 3), "ids2": (batch,)}[name]

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        if self.cudart.capturing is not None:
            if self.refuse_capture:
                return False
            self.cudart.capturing.append(self._compute)
        else:
            self.enqueued += 1
            self._compute()
        return True

    def _compute(self):
        batch = self.shapes["x"][0]
        x = _view(self.addresses["x"], (batch, 4), np.float32)
        ids = _view(self.addresses["ids"], (batch,), np.int64)
        _view(self.addresses["y"], (batch, 3), np.float32)[:] = x @ W + B
        _view(self.addresses["ids2"], (batch,), np.int64)[:] = 2 * ids


class FakeEngine:
    _io = {"x": (np.float32, (-1, 4), True), "ids": (np.int64, (-1,), True),
           "y": (np.float32, (-1, 3), False), "ids2": (np.int64, (-1,), False)}

    def __init__(self, cudart: FakeCudart, refuse_capture: bool = False):
        self.cudart = cudart
        self.refuse_capture = refuse_capture
        self.num_io_tensors = len(self._io)
        self.context: FakeContext | None = None

    def get_tensor_name(self, i):
        return list(self._io)[i]

    def get_tensor_mode(self, name):
        return FakeTrt.TensorIOMode.INPUT if self._io[name][2] else FakeTrt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self._io[name][0]

    def get_tensor_shape(self, name):
        return self._io[name][1]

    def get_tensor_profile_shape(self, name, profile):
        rest = self._io[name][1][1:]
        return [(1, *rest), (2, *rest), (MAX_BATCH, *rest)]

    def create_execution_context(self):
        self.context = FakeContext(self.cudart, self.refuse_capture)
        return self.context


class FakeTrt:
    """The module ``tensorrt``, as far as the engine and backend use it."""

    __version__ = "10.99.0"
    TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")

    class ILogger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self):
            pass

    @staticmethod
    def nptype(dtype):
        return dtype

    class Runtime:
        """Refuses every plan the way TensorRT does for one built by another version."""

        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            self.logger.log(FakeTrt.ILogger.ERROR, "The engine plan file is not compatible with this version of "
                            "TensorRT, expecting library version 10.99.0 got 10.1.0, please rebuild.")
            return None
