"""Send requests to a model of a Triton repository under the stand-in, in a fresh process.

    python tests/triton_standin/run_model.py REPO MODEL REQUESTS.json OUT.npz

REQUESTS.json: a list of {input name: value}; a value is a string (BYTES [1]; "@path"
sends the bytes of a file), a number (INT64/FP32 [1] after the config), a JSON object
(sent as its JSON text) or {"npy": path}. All requests go to the model's ``execute`` in
one call, as Triton's scheduler would pass them. OUT.npz gets ``{k}.{OUTPUT}`` arrays,
``{k}.error`` messages, ``calls`` (BLS calls per model, JSON) and ``rewas_rt`` (where the
model's rewas_rt was imported from).

Run with only this folder on PYTHONPATH, so that the model imports the rewas_rt copy
inside the repository, as it would in Triton's container.
"""
import json
import sys
from pathlib import Path

import numpy as np

import triton_python_backend_utils as pb

_DTYPES = {pb.mc.TYPE_FP32: np.float32, pb.mc.TYPE_INT64: np.int64, pb.mc.TYPE_INT32: np.int32}


def tensor(cfg, name, value):
    if isinstance(value, dict) and "npy" in value:
        return pb.Tensor(name, np.load(value["npy"]))
    if isinstance(value, dict):
        value = json.dumps(value)
    if isinstance(value, str):
        data = Path(value[1:]).read_bytes() if value.startswith("@") else value.encode()
        return pb.Tensor(name, np.array([data], dtype=object))
    declared = {i.name: i.data_type for i in cfg.input}
    return pb.Tensor(name, np.array([value], dtype=_DTYPES.get(declared.get(name), np.float32)))


def main(repo, model, requests_path, out):
    server = pb.serve(repo)
    cfg = server.configs[model]
    specs = json.loads(Path(requests_path).read_text())
    outputs = [o.name for o in cfg.output]
    requests = [pb.InferenceRequest(model_name=model, inputs=[tensor(cfg, k, v) for k, v in s.items()],
                                    requested_output_names=outputs) for s in specs]
    for r in requests:  # Triton checks each request against the config before the model sees it
        server._check_inputs(cfg, r.inputs())
    responses = server.model(model).execute(requests)
    saved = {}
    for k, resp in enumerate(responses):
        if resp.has_error():
            saved[f"{k}.error"] = np.array(resp.error().message())
            continue
        for t in resp.output_tensors():
            saved[f"{k}.{t.name()}"] = server._check_output(cfg, t.name(), t.as_numpy(), None)
    saved["calls"] = np.array(json.dumps(dict(pb.CALLS)))
    saved["rewas_rt"] = np.array(sys.modules["rewas_rt"].__file__)
    np.savez(out, **saved)


if __name__ == "__main__":
    main(*sys.argv[1:])
