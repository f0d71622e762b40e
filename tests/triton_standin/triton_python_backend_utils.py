"""A stand-in of Triton's ``triton_python_backend_utils`` for tests (Triton itself cannot run here).

It answers BLS calls the way Triton's server would for the repository written by
``export/triton_repository.py``: each call is checked against the called model's
``config.pbtxt`` (parsed into Triton's own ``ModelConfig`` protobuf from tritonclient) —
input names, required inputs, data types, ``[batch] + dims`` with ``max_batch_size``,
``reshape`` — then run by ONNX Runtime on the model's ``1/model.onnx``, and the outputs are
checked against the config too. Python-backend models (``rewas``) are loaded from their
``1/model.py`` and initialised with the config as JSON, as Triton does.

Only what the rewas model uses is here: Tensor, InferenceRequest/Response, TritonError,
TritonModelException, PreferredMemory, get_input/output_tensor_by_name. ``serve(repo)``
sets the repository; ``CALLS`` counts BLS calls per model.
"""
from __future__ import annotations

import collections
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

TRITONSERVER_MEMORY_CPU, TRITONSERVER_MEMORY_GPU = 0, 2
CALLS: collections.Counter = collections.Counter()
THREADS = 1  # ONNX Runtime intra-op threads (the test runs `rewas-rt infer --threads 1` to compare)

_NUMPY = {
    mc.TYPE_FP32: np.float32, mc.TYPE_FP16: np.float16, mc.TYPE_INT64: np.int64, mc.TYPE_INT32: np.int32,
    mc.TYPE_UINT8: np.uint8, mc.TYPE_BOOL: np.bool_, mc.TYPE_STRING: np.object_,
}
_server = None


class TritonError:
    def __init__(self, message: str, code: int = 0):
        self._message = message

    def message(self) -> str:
        return self._message


class TritonModelException(Exception):
    pass


class PreferredMemory:
    def __init__(self, preferred_memory_type: int, preferred_device_id: int = 0):
        self.type, self.device = preferred_memory_type, preferred_device_id


class Tensor:
    def __init__(self, name: str, array):
        if not isinstance(name, str):
            raise TypeError("Tensor name must be a str")
        array = np.asarray(array)
        if array.dtype.kind in "US":  # Triton carries strings as object arrays of bytes
            array = np.array([s.encode() if isinstance(s, str) else s for s in array.reshape(-1)],
                             dtype=object).reshape(array.shape)
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def is_cpu(self) -> bool:
        return True


class InferenceResponse:
    def __init__(self, output_tensors=None, error: TritonError | None = None):
        self._outputs = list(output_tensors or [])
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


class InferenceRequest:
    def __init__(self, model_name: str, inputs: list[Tensor], requested_output_names: list[str],
                 preferred_memory: PreferredMemory | None = None, **_):
        self.model_name = model_name
        self._inputs = list(inputs)
        self.requested_output_names = list(requested_output_names)
        if preferred_memory is not None and preferred_memory.type != TRITONSERVER_MEMORY_CPU:
            raise ValueError("this stand-in returns host memory only")

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def exec(self) -> InferenceResponse:
        if _server is None:
            raise RuntimeError("call serve(repository) first")
        return _server.infer(self)


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


# ------------------------------------------------------------------------------ the "server"


def load_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


def serve(repository: str | Path) -> "_Server":
    global _server
    _server = _Server(Path(repository))
    return _server


class _Server:
    def __init__(self, repo: Path):
        self.repo = repo
        self.configs = {p.parent.name: load_config(p) for p in sorted(repo.glob("*/config.pbtxt"))}
        self._models: dict = {}

    def model(self, name: str):
        if name not in self._models:
            cfg = self.configs[name]
            version = self.repo / name / "1"
            if cfg.backend == "python":
                spec = importlib.util.spec_from_file_location(f"triton_model_{name}", version / "model.py")
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                model = module.TritonPythonModel()
                config = json_format.MessageToJson(cfg, preserving_proto_field_name=True)
                model.initialize({"model_config": config, "model_instance_kind": "CPU", "model_instance_name": name,
                                  "model_instance_device_id": "0", "model_repository": str(self.repo / name),
                                  "model_version": "1", "model_name": name})
                self._models[name] = model
            elif cfg.platform == "onnxruntime_onnx":
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = THREADS
                options.log_severity_level = 3
                self._models[name] = ort.InferenceSession(str(version / "model.onnx"), options,
                                                          providers=["CPUExecutionProvider"])
            else:
                raise RuntimeError(f"the stand-in cannot run platform {cfg.platform!r}")
        return self._models[name]

    def infer(self, request: InferenceRequest) -> InferenceResponse:
        name = request.model_name
        if name not in self.configs:
            return InferenceResponse(error=TritonError(f"Request for unknown model: '{name}' is not found"))
        CALLS[name] += 1
        cfg = self.configs[name]
        try:
            feeds = self._check_inputs(cfg, request.inputs())
            unknown = set(request.requested_output_names) - {o.name for o in cfg.output}
            if unknown:
                raise ValueError(f"unexpected inference output {sorted(unknown)} for model '{name}'")
            model = self.model(name)
            if cfg.backend == "python":
                (response,) = model.execute([request])
                if not response.has_error():
                    for t in response.output_tensors():
                        self._check_output(cfg, t.name(), t.as_numpy(), None)
                return response
            outputs = dict(zip(request.requested_output_names, model.run(request.requested_output_names, feeds)))
            batch = len(next(iter(feeds.values())))
            return InferenceResponse([Tensor(n, self._check_output(cfg, n, a, batch)) for n, a in outputs.items()])
        except ValueError as e:
            return InferenceResponse(error=TritonError(str(e)))

    @staticmethod
    def _check_inputs(cfg: mc.ModelConfig, tensors: list[Tensor]) -> dict[str, np.ndarray]:
        declared = {i.name: i for i in cfg.input}
        given = {t.name(): t.as_numpy() for t in tensors}
        for n in given:
            if n not in declared:
                raise ValueError(f"unexpected inference input '{n}' for model '{cfg.name}'")
        for n, i in declared.items():
            if n not in given and not i.optional:
                raise ValueError(f"expected {len(declared)} inputs but got {len(given)} inputs for model '{cfg.name}'")
        feeds = {}
        batch = None
        for n, array in given.items():
            i = declared[n]
            if array.dtype != np.dtype(_NUMPY[i.data_type]):
                raise ValueError(f"input '{n}' of model '{cfg.name}' is {array.dtype}, the config says "
                                 f"{mc.DataType.Name(i.data_type)}")
            shape = list(array.shape)
            if cfg.max_batch_size > 0:
                if not shape or shape[0] < 1 or shape[0] > cfg.max_batch_size:
                    raise ValueError(f"input '{n}' batch size {shape[:1]} exceeds max_batch_size {cfg.max_batch_size} "
                                     f"of model '{cfg.name}'")
                if batch not in (None, shape[0]):
                    raise ValueError(f"inputs of model '{cfg.name}' disagree on the batch size")
                batch, shape = shape[0], shape[1:]
            dims = list(i.dims)
            if len(shape) != len(dims) or any(d != -1 and d != s for d, s in zip(dims, shape)):
                raise ValueError(f"unexpected shape for input '{n}' for model '{cfg.name}'. Expected {dims}, got {shape}")
            if i.HasField("reshape"):
                array = array.reshape(([batch] if batch is not None else []) + list(i.reshape.shape))
            feeds[n] = array
        return feeds

    @staticmethod
    def _check_output(cfg: mc.ModelConfig, name: str, array: np.ndarray, batch: int | None) -> np.ndarray:
        o = next((o for o in cfg.output if o.name == name), None)
        if o is None:
            raise ValueError(f"model '{cfg.name}' returned output '{name}', which its config does not declare")
        shape = list(array.shape)
        if batch is not None:
            if not shape or shape[0] != batch:
                raise ValueError(f"output '{name}' of model '{cfg.name}' has shape {shape}, not batch {batch} first")
            shape = shape[1:]
        dims = list(o.dims)
        if array.dtype != np.dtype(_NUMPY[o.data_type]):
            raise ValueError(f"output '{name}' of model '{cfg.name}' is {array.dtype}, the config says "
                             f"{mc.DataType.Name(o.data_type)}")
        if len(shape) != len(dims) or any(d != -1 and d != s for d, s in zip(dims, shape)):
            raise ValueError(f"output '{name}' of model '{cfg.name}' has shape {shape}, the config dims {dims}")
        return array

sys.modules.setdefault("triton_python_backend_utils", sys.modules[__name__])
