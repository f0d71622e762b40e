"""benchmarks/latency.py, split by concern.

* ``runners`` — one backend's request: ``OrtRunner`` (``rewas_rt.pipeline.Pipeline``) and
  ``EagerRunner`` (``training.pipeline.TorchPipeline``), timed through the pipelines' own
  ``timing_hook`` (no patching, no re-implemented generate);
* ``protocol`` — the worker process (one backend each) and the parent's handle on it;
* ``stats`` — medians, extrapolation to step counts not run, ratios;
* ``report`` — the Markdown table;
* ``cli`` — arguments, engine/clip preparation, the run (``python benchmarks/latency.py``).
"""
from __future__ import annotations

EAGER = "pytorch-eager"
BACKENDS = (EAGER, "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")
PROMPTS = ("a dog barking while a car passes by", "rain falling on a tin roof", "a crowd cheering in a stadium",
           "waves crashing on rocks", "a train horn blowing", "birds chirping in a forest", "a man hammering a nail",
           "a helicopter flying overhead")

# Rows of the table: key, label. Per-request stages first, in pipeline order.
STAGES = (
    ("video", "video decode + segment"),
    ("synchformer", "synchformer"),
    ("phi", "phi"),
    ("energy_post", "energy post-process"),
    ("vae_encoder", "vae_encoder (hint latent)"),
    ("clap_text", "clap_text"),
    ("unet_step", "unet_adapter, one step (both CFG branches)"),
    ("sampler_step", "sampler step wall (unet + CFG + DDIM update)"),
    ("vae_decoder", "vae_decoder"),
    ("vocoder", "vocoder"),
    ("other", "other (tokenize, noise, glue)"),
)
