"""Stand-ins for ``tensorrt`` and ``cuda.bindings.runtime``, to test the TensorRT build and
backend logic (network typing by version, FP32 pins, timing caches, buffers, shapes,
CUDA-graph capture/replay/fallback, device per thread) on machines without a GPU.

They model only the behaviour the code relies on, as documented by NVIDIA, and the API
*surface* of each TensorRT major version (``make_trt("10.x")`` / ``make_trt("11.x")``):

* 10.x has weak typing (``BuilderFlag.FP16``, ``OBEY_PRECISION_CONSTRAINTS``,
  ``ILayer.precision``, ``set_output_type``) and ``NetworkDefinitionCreationFlag.
  STRONGLY_TYPED``; 11.x has none of them: every network is strongly typed, and touching
  a removed name raises ``AttributeError`` as the real module does ("Migrating from
  TensorRT 10.x to 11.x");
* the ONNX parser makes one layer per non-Constant node, named like onnx-tensorrt
  (``node_of_<output>`` when unnamed) with ``[ONNX Layer: <name>]`` metadata (plus
  `` | Local Function: <f>`` for nodes inside a local function), and constant layers for
  the initializers; a strongly typed network takes the graph's tensor types;
* a timing cache serialises as ``TC:<version>:<cc>:<n>``; ``create_timing_cache`` returns
  None for another version's or GPU's cache (TensorRT rejects it);
* a plan serialises as ``fake-plan:<version>:<json>``; ``Runtime.deserialize_cuda_engine``
  returns an engine for a plan of its own version and logs TensorRT's error otherwise;
* CUDA calls return ``(error, *values)``; "device memory" is host memory, so copies are
  memmoves; the current device is per host thread, and memory/stream calls fail with
  ``cudaErrorInvalidDevice`` on a thread whose current device is not the stream's;
  work enqueued while a stream is capturing is recorded, not run, and runs on each graph
  launch; a capture can be invalidated (``cudaStreamEndCapture`` then returns
  ``cudaErrorStreamCaptureInvalidated`` and no graph); a stream left capturing refuses
  further work; graphs and executable graphs are counted so leaks show.

The runtime network is the tests' toy graph: ``y = x @ W + b`` and ``ids2 = 2 * ids`` with a
dynamic batch axis; ``TEXT`` is a second one with a ``(batch, text_len)`` input and the
contract's ``text_len`` profile range (2..512).
"""
from __future__ import annotations

import ctypes
import json
import threading
import types

import numpy as np

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
B = np.array([1.0, -1.0, 0.5], dtype=np.float32)
MAX_BATCH = 8
TEXT_LEN = (2, 16, 512)  # rewas_rt.graphs.DYNAMIC_AXES["text_len"]

SUCCESS = 0
INVALID_DEVICE = 101
CAPTURE_INVALIDATED = 901
CAPTURE_UNSUPPORTED = 900
_ERRORS = {INVALID_DEVICE: b"invalid device ordinal", CAPTURE_INVALIDATED: b"operation failed due to a previous error "
           b"during capture", CAPTURE_UNSUPPORTED: b"operation not permitted when stream is capturing"}


def _view(address: int, shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    raw = (ctypes.c_byte * max(count * dtype.itemsize, 1)).from_address(address)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


# --------------------------------------------------------------------------- CUDA runtime


class FakeCudart:
    cudaError_t = types.SimpleNamespace(cudaSuccess=SUCCESS, cudaErrorInvalidDevice=INVALID_DEVICE,
                                        cudaErrorStreamCaptureInvalidated=CAPTURE_INVALIDATED,
                                        cudaErrorStreamCaptureUnsupported=CAPTURE_UNSUPPORTED)
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeGlobal=0, cudaStreamCaptureModeThreadLocal=1,
                                                  cudaStreamCaptureModeRelaxed=2)
    cudaStreamNonBlocking = 1

    def __init__(self, devices: int = 2, missing_driver: bool = False):
        self.devices = devices
        self.missing_driver = missing_driver  # cuda-python 12.6.x: raises instead of returning an error
        self.memory: dict[int, np.ndarray] = {}
        self.streams: dict[int, int] = {}  # stream -> device
        self.capturing: list | None = None  # the recorded work while a capture is open
        self.capture_modes: list[int] = []
        self.invalidate_next_capture = False
        self.fail_instantiate = False
        self.launches = 0
        self.live_graphs = 0  # cudaGraph_t made by EndCapture, not yet destroyed
        self.live_graph_execs = 0
        self.set_device_calls: list[tuple[str, int]] = []  # (thread name, device)
        self._local = threading.local()

    # -- devices
    def current(self) -> int:
        return getattr(self._local, "device", 0)  # CUDA: every thread starts on device 0

    def cudaGetDeviceCount(self):
        if self.missing_driver:
            raise RuntimeError("Failed to dlopen libcuda.so.1")
        return SUCCESS, self.devices

    def cudaGetDeviceProperties(self, device):
        return SUCCESS, types.SimpleNamespace(name=b"Fake GPU\x00\x00", major=9, minor=0)

    def cudaSetDevice(self, device):
        if not 0 <= device < self.devices:
            return (INVALID_DEVICE,)
        self._local.device = device
        self.set_device_calls.append((threading.current_thread().name, device))
        return (SUCCESS,)

    def _on_stream_device(self, stream) -> bool:
        return self.streams.get(stream, self.current()) == self.current()

    # -- memory and streams
    def cudaMalloc(self, nbytes):
        if self.capturing is not None and self.capture_mode == 0:
            self.capture_broken = True  # a global-mode capture is invalidated by any thread's cudaMalloc
        block = np.zeros(nbytes, np.uint8)
        self.memory[block.ctypes.data] = block
        return SUCCESS, block.ctypes.data

    def cudaFree(self, ptr):
        del self.memory[ptr]
        return (SUCCESS,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        if not self._on_stream_device(stream):
            return (INVALID_DEVICE,)
        if self.capturing is not None:
            return (CAPTURE_UNSUPPORTED,)  # our code never copies under capture
        ctypes.memmove(dst, src, nbytes)
        return (SUCCESS,)

    def cudaStreamCreateWithFlags(self, flags):
        stream = 7 + len(self.streams)
        self.streams[stream] = self.current()
        return SUCCESS, stream

    def cudaStreamSynchronize(self, stream):
        if self.capturing is not None:
            return (CAPTURE_UNSUPPORTED,)
        if not self._on_stream_device(stream):
            return (INVALID_DEVICE,)
        return (SUCCESS,)

    def cudaStreamDestroy(self, stream):
        self.streams.pop(stream, None)
        return (SUCCESS,)

    # -- capture and graphs
    def cudaStreamBeginCapture(self, stream, mode):
        if self.capturing is not None:
            return (CAPTURE_UNSUPPORTED,)
        self.capturing = []
        self.capture_mode = mode
        self.capture_broken = self.invalidate_next_capture
        self.invalidate_next_capture = False
        self.capture_modes.append(mode)
        return (SUCCESS,)

    def cudaStreamEndCapture(self, stream):
        work, self.capturing = self.capturing, None
        if work is None:
            return CAPTURE_INVALIDATED, None
        if self.capture_broken:
            return CAPTURE_INVALIDATED, None  # no graph: nothing to destroy
        self.live_graphs += 1
        return SUCCESS, ("graph", list(work))

    def cudaGraphInstantiate(self, graph, flags):
        if self.fail_instantiate:
            return 1, None  # cudaErrorInvalidValue
        self.live_graph_execs += 1
        return SUCCESS, list(graph[1])

    def cudaGraphDestroy(self, graph):
        self.live_graphs -= 1
        return (SUCCESS,)

    def cudaGraphExecDestroy(self, graph_exec):
        self.live_graph_execs -= 1
        return (SUCCESS,)

    def cudaGraphLaunch(self, graph_exec, stream):
        if not self._on_stream_device(stream):
            return (INVALID_DEVICE,)
        self.launches += 1
        for work in graph_exec:
            work()
        return (SUCCESS,)

    def cudaGetErrorString(self, err):
        return SUCCESS, _ERRORS.get(err, b"fake CUDA error")


# --------------------------------------------------------------------------- runtime: engines


class DataType:
    """``trt.DataType`` members (their NumPy types through ``nptype``)."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"DataType.{self.name}"


FLOAT, HALF, INT64, INT32, BOOL, BF16 = (DataType(n) for n in ("FLOAT", "HALF", "INT64", "INT32", "BOOL", "BF16"))
_NP = {FLOAT: np.float32, HALF: np.float16, INT64: np.int64, INT32: np.int32, BOOL: np.bool_}


def nptype(dtype):
    """``trt.nptype``: TypeError for a type without a NumPy equivalent (bf16, fp8...)."""
    if dtype not in _NP:
        raise TypeError(f"Could not resolve TensorRT datatype to an equivalent numpy datatype. {dtype}")
    return _NP[dtype]


class FakeContext:
    def __init__(self, engine: "FakeEngine"):
        self.engine = engine
        self.cudart = engine.cudart
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.enqueued = 0  # execute_async_v3 calls that ran (not captured)
        self.raise_under_capture = False

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        if len(shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.engine.spec["shape_of"](self.shapes, name)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        if not self.cudart._on_stream_device(stream):
            return False
        if self.cudart.capturing is not None:
            if self.raise_under_capture:
                raise RuntimeError("enqueue failed under capture")
            if self.engine.refuse_capture:
                return False
            self.cudart.capturing.append(self._compute)
        else:
            self.enqueued += 1
            self._compute()
        return True

    def _compute(self):
        views = {n: _view(self.addresses[n], self.get_tensor_shape(n), nptype(self.engine._io[n][0]))
                 for n in self.engine._io}
        self.engine.spec["compute"](views)


def _toy_shape(shapes, name):
    batch = shapes["x"][0]
    return {"x": (batch, 4), "ids": (batch,), "y": (batch, 3), "ids2": (batch,)}[name]


def _toy_compute(v):
    v["y"][:] = v["x"] @ W + B
    v["ids2"][:] = 2 * v["ids"]


TOY = {
    "io": {"x": (FLOAT, (-1, 4), True), "ids": (INT64, (-1,), True),
           "y": (FLOAT, (-1, 3), False), "ids2": (INT64, (-1,), False)},
    "profile": {"x": [(1, 4), (2, 4), (MAX_BATCH, 4)], "ids": [(1,), (2,), (MAX_BATCH,)]},
    "shape_of": _toy_shape,
    "compute": _toy_compute,
}


def _text_shape(shapes, name):
    batch, length = shapes["input_ids"]
    return {"input_ids": (batch, length), "attention_mask": (batch, length), "lengths": (batch,)}[name]


def _text_compute(v):
    v["lengths"][:] = (v["input_ids"] * v["attention_mask"]).sum(axis=1)


# clap_text-like: (batch, text_len) token ids and mask with the contract's text_len range.
TEXT = {
    "io": {"input_ids": (INT64, (-1, -1), True), "attention_mask": (INT64, (-1, -1), True),
           "lengths": (INT64, (-1,), False)},
    "profile": {n: [(1, TEXT_LEN[0]), (1, TEXT_LEN[1]), (MAX_BATCH, TEXT_LEN[2])] for n in ("input_ids", "attention_mask")},
    "shape_of": _text_shape,
    "compute": _text_compute,
}


class FakeEngine:
    def __init__(self, cudart: FakeCudart, refuse_capture: bool = False, spec: dict = TOY):
        self.cudart = cudart
        self.refuse_capture = refuse_capture
        self.spec = spec
        self._io = spec["io"]
        self.num_io_tensors = len(self._io)
        self.context: FakeContext | None = None

    def get_tensor_name(self, i):
        return list(self._io)[i]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if self._io[name][2] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self._io[name][0]

    def get_tensor_shape(self, name):
        return self._io[name][1]

    def get_tensor_profile_shape(self, name, profile):
        return self.spec["profile"][name]

    def create_execution_context(self):
        self.context = FakeContext(self)
        return self.context


TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")


# --------------------------------------------------------------------------- builder: networks


class FakeTensor:
    def __init__(self, name, dtype):
        self.name = name
        self.dtype = dtype


class FakeLayer:
    def __init__(self, trt, name, kind, metadata, inputs, outputs):
        self._trt = trt
        self.name = name
        self.type = kind
        self.metadata = metadata
        self._inputs = inputs
        self._outputs = outputs
        self.num_inputs = len(inputs)
        self.num_outputs = len(outputs)
        self._precision = None
        self.output_types: dict[int, DataType] = {}

    def get_input(self, j):
        return self._inputs[j]

    def get_output(self, j):
        return self._outputs[j]

    # Weak typing only: 11.x layers have no precision / set_output_type (see make_trt).
    @property
    def precision(self):
        return self._precision

    @precision.setter
    def precision(self, value):
        self._precision = value

    def set_output_type(self, j, dtype):
        self.output_types[j] = dtype


class FakeLayer11(FakeLayer):
    """A TensorRT 11 layer: ``precision``, ``set_output_type`` and friends were removed."""

    _REMOVED = ("precision", "set_output_type", "reset_precision", "precision_is_set", "reset_output_type")

    def __getattribute__(self, name):
        if name in FakeLayer11._REMOVED:
            raise AttributeError(f"'tensorrt.ILayer' object has no attribute '{name}'")
        return super().__getattribute__(name)

    def __setattr__(self, name, value):
        if name in FakeLayer11._REMOVED:
            raise AttributeError(f"'tensorrt.ILayer' object has no attribute '{name}'")
        super().__setattr__(name, value)


class FakeNetwork:
    def __init__(self, trt, flags):
        self.trt = trt
        self.flags = flags
        self.strongly_typed = trt.MAJOR >= 11 or bool(
            trt.MAJOR == 10 and flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        self.layers: list[FakeLayer] = []
        self.graph_types: dict[str, int] = {}

    @property
    def num_layers(self):
        return len(self.layers)

    def get_layer(self, i):
        return self.layers[i]


class FakeOnnxParser:
    """Parses with the ``onnx`` package; one layer per node (Constant nodes become weights)."""

    def __init__(self, network: FakeNetwork, logger):
        self.network = network
        self.errors: list[str] = []

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]

    def parse_from_file(self, path):
        import onnx

        from export.onnx_names import parser_node_name

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"cannot read {path}: {e}")
            return False
        trt = self.network.trt
        inferred = onnx.shape_inference.infer_shapes(model)
        elem = {}
        for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
            elem[vi.name] = vi.type.tensor_type.elem_type
        for t in model.graph.initializer:
            elem[t.name] = t.data_type
        to_trt = {1: FLOAT, 10: HALF, 7: INT64, 6: INT32, 9: BOOL, 16: BF16}

        def dtype(name):
            # Weakly typed: the builder picks precisions, tensors report FP32 for float graphs;
            # strongly typed: the graph's type.
            t = to_trt.get(elem.get(name, 1), FLOAT)
            return t if self.network.strongly_typed or t not in (HALF,) else FLOAT

        tensors = {}
        for t in model.graph.initializer:
            out = FakeTensor(t.name, dtype(t.name))
            tensors[t.name] = out
            self.network.layers.append(self._layer_cls()(trt, f"{t.name}_const", trt.LayerType.CONSTANT, "", [], [out]))
        local = {f.name for f in model.functions}
        for node in model.graph.node:
            name = parser_node_name(node)
            if node.op_type == "Constant":
                tensors[node.output[0]] = FakeTensor(node.output[0], dtype(node.output[0]))
                continue
            meta = f"[ONNX Layer: {name}]"
            if node.op_type in local:  # a node of a local function (only the top level is modelled)
                meta = f"[ONNX Layer: {name} | Local Function: {node.op_type}]"
            ins = [tensors.get(i) for i in node.input if i]
            outs = [FakeTensor(o, dtype(o)) for o in node.output if o]
            for o in outs:
                tensors[o.name] = o
            self.network.layers.append(self._layer_cls()(trt, name, trt.LayerType.from_op(node.op_type), meta, ins, outs))
        self.network.graph_types = {k: v for k, v in elem.items()}
        return True

    def _layer_cls(self):
        return FakeLayer11 if self.network.trt.MAJOR >= 11 else FakeLayer


class FakeTimingCache:
    def __init__(self, trt, entries: int):
        self.trt = trt
        self.entries = entries

    def serialize(self):
        return f"TC:{self.trt.__version__}:{self.trt.GPU_CC}:{self.entries}".encode()


class FakeConfig:
    def __init__(self, trt):
        self.trt = trt
        self.flags: set = set()
        self.profiles: list = []
        self.timing_cache: FakeTimingCache | None = None
        self.pool_limits: dict = {}

    def set_flag(self, flag):
        self.flags.add(flag)

    def set_memory_pool_limit(self, pool, size):
        self.pool_limits[pool] = size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes):
        if not data:
            return FakeTimingCache(self.trt, 0)
        parts = bytes(data).decode(errors="replace").split(":")
        if len(parts) != 4 or parts[0] != "TC" or (parts[1], parts[2]) != (self.trt.__version__, self.trt.GPU_CC):
            return None  # TensorRT rejects a cache of another version / device
        return FakeTimingCache(self.trt, int(parts[3]))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.timing_cache = cache
        return True

    def get_timing_cache(self):
        return self.timing_cache


class FakeProfile:
    def __init__(self):
        self.shapes: dict = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class FakeBuilder:
    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags=0):
        return FakeNetwork(self.trt, flags)

    def create_builder_config(self):
        return FakeConfig(self.trt)

    def create_optimization_profile(self):
        return FakeProfile()

    def build_serialized_network(self, network, config):
        if config.timing_cache is not None:
            config.timing_cache.entries += len(network.layers)
        pinned = sorted(layer.name for layer in network.layers
                        if type(layer) is FakeLayer and layer._precision is not None)
        half = sorted(n for n, t in network.graph_types.items() if t == 10)
        desc = {"strongly_typed": network.strongly_typed, "flags": sorted(str(f) for f in config.flags),
                "pinned": pinned, "fp16_tensors": len(half),
                "profiles": [{k: [list(s) for s in v] for k, v in p.shapes.items()} for p in config.profiles]}
        return f"fake-plan:{self.trt.__version__}:{json.dumps(desc)}".encode()


# --------------------------------------------------------------------------- the module


class _Flag:
    def __init__(self, name, value):
        self.name, self.value = name, value

    def __int__(self):
        return self.value

    def __repr__(self):
        return f"BuilderFlag.{self.name}"


def make_trt(version: str = "10.99.0", *, compute_capability: str = "9.0", cudart: FakeCudart | None = None,
             plan_spec: dict = TOY):
    """A fake ``tensorrt`` module with the API surface of ``version``'s major release."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")  # hashable, as the real module (the backend caches per module)
    trt.__version__ = version
    trt.MAJOR = major
    trt.GPU_CC = compute_capability.replace(".", "")
    trt.float32, trt.float16, trt.int64, trt.int32, trt.bool, trt.bfloat16 = FLOAT, HALF, INT64, INT32, BOOL, BF16
    trt.DataType = types.SimpleNamespace(FLOAT=FLOAT, HALF=HALF, INT64=INT64, INT32=INT32, BOOL=BOOL, BF16=BF16)
    trt.nptype = nptype
    trt.TensorIOMode = TensorIOMode
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    kinds = {"Constant": "CONSTANT", "Cast": "CAST", "MatMul": "MATRIX_MULTIPLY", "Gemm": "MATRIX_MULTIPLY"}
    trt.LayerType = types.SimpleNamespace(CONSTANT="CONSTANT", CAST="CAST", MATRIX_MULTIPLY="MATRIX_MULTIPLY",
                                          ELEMENTWISE="ELEMENTWISE",
                                          from_op=lambda op: kinds.get(op, "ELEMENTWISE"))
    flags = {"TF32": _Flag("TF32", 7), "REFIT": _Flag("REFIT", 3)}
    net_flags = {}
    if major == 10:  # weak typing, deprecated in 10.12 and removed in 11
        flags.update(FP16=_Flag("FP16", 0), INT8=_Flag("INT8", 1), OBEY_PRECISION_CONSTRAINTS=_Flag("OBEY_PRECISION_CONSTRAINTS", 11))
        net_flags.update(EXPLICIT_BATCH=_Flag("EXPLICIT_BATCH", 0), STRONGLY_TYPED=_Flag("STRONGLY_TYPED", 1))
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**net_flags)

    class ILogger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self):
            pass

    class Logger(ILogger):
        def __init__(self, severity=ILogger.WARNING):
            super().__init__()
            self.severity = severity

        def log(self, severity, msg):
            pass

    class Runtime:
        def __init__(self, logger):
            self.logger = logger
            self.cudart = cudart

        def deserialize_cuda_engine(self, data):
            data = bytes(data)
            prefix = f"fake-plan:{version}:".encode()
            if data.startswith(prefix):
                return FakeEngine(self.cudart or FakeCudart(), spec=plan_spec)
            built = data.split(b":")[1].decode(errors="replace") if data.startswith(b"fake-plan:") else "?"
            self.logger.log(ILogger.ERROR, "The engine plan file is not compatible with this version of TensorRT, "
                            f"expecting library version {version} got {built}, please rebuild.")
            return None

    class Builder(FakeBuilder):
        pass

    Builder.trt = trt
    trt.ILogger, trt.Logger, trt.Runtime, trt.Builder, trt.OnnxParser = ILogger, Logger, Runtime, Builder, FakeOnnxParser
    return trt


# The module as the runtime tests use it (TensorRT 10 surface).
FakeTrt = make_trt("10.99.0")
