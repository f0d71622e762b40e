"""ONNX export, FP16 safety check and TensorRT engine building (docs/design.md §2, §5).

* ``export.export_onnx`` — one ONNX graph per stage (``rewas_rt.graphs.GRAPHS``) from the
  canonical checkpoints or random weights of a named preset, parity-checked in ONNX Runtime.
* ``export.fp16_check`` — which ONNX nodes must stay FP32 in an FP16 engine, found on CPU.
* ``training.tokenizer`` (below export/ so training can use it too) — the engine directory's ``tokenizer.json``.
* ``export.tensorrt_build`` — FP16 TensorRT engines (``tensorrt`` imported lazily).
* ``export.build_engines`` — the command that writes a complete engine directory.

Each module also runs as a script (``python export/<module>.py``).
"""
