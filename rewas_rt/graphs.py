"""The seven graph contracts (docs/design.md §3): names, dtypes and shapes of every
input and output, and the dynamic axes with their TensorRT profile ranges.

Shared by ``export/`` (what it writes) and the runtime (what it checks and
feeds), so it is the one place these facts live. A shape entry is an int
(static), the name of a dynamic axis in ``DYNAMIC_AXES``, or the name of a
model dimension in ``MODEL_DIMS`` that depends on the model config (reduced
test models are narrower) and is fixed by ``GraphSpec.resolved``.
"""
from __future__ import annotations

import dataclasses

from rewas_rt import constants as C

# Dynamic axis -> (min, opt, max) for TensorRT optimization profiles.
# "batch": requests x candidates; "cfg_batch": both CFG branches of a batch.
DYNAMIC_AXES: dict[str, tuple[int, int, int]] = {
    "batch": (1, 1, 8),
    "cfg_batch": (1, 2, 16),
    "text_len": (2, 16, C.TEXT_MAX_TOKENS),
}

# Model dimension -> its value in the released model.
MODEL_DIMS: dict[str, int] = {"feature_dim": C.VIDEO_FEATURE_DIM}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    doc: str

    def resolved(self, **dims: int) -> "GraphSpec":
        """This spec with the model dimensions replaced by values (default: the released ones)."""
        values = {**MODEL_DIMS, **dims}

        def fix(t: TensorSpec) -> TensorSpec:
            return dataclasses.replace(t, shape=tuple(values.get(d, d) if isinstance(d, str) else d for d in t.shape))

        return dataclasses.replace(self, inputs=tuple(map(fix, self.inputs)), outputs=tuple(map(fix, self.outputs)))

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """ONNX-export style {tensor: {axis index: axis name}}."""
        return {
            t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            for t in self.inputs + self.outputs
            if any(isinstance(d, str) for d in t.shape)
        }

    def profile(self, t: TensorSpec) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of an input for a TensorRT optimization profile."""
        return tuple(  # type: ignore[return-value]
            tuple(d if isinstance(d, int) else DYNAMIC_AXES[d][k] for d in t.shape) for k in range(3)
        )

    def concrete_shape(self, t: TensorSpec, **axes: int) -> tuple[int, ...]:
        """The shape with dynamic axes given by name (default: their opt value)."""
        return tuple(d if isinstance(d, int) else axes.get(d, DYNAMIC_AXES[d][1]) for d in t.shape)


_LAT = C.LATENT_SHAPE
_F32, _I64 = "float32", "int64"

GRAPHS: dict[str, GraphSpec] = {
    g.name: g
    for g in (
        GraphSpec(
            "synchformer",
            (TensorSpec("video", _F32, ("batch", C.SEGMENTS, 3, C.SEGMENT_LEN, C.CROP, C.CROP)),),
            (TensorSpec("features", _F32, ("batch", C.SEGMENTS, C.TOKENS_PER_SEGMENT, "feature_dim")),),
            "normalised video segments (B,S,C,T,H,W) -> Motionformer features (B,S,8,768)",
        ),
        GraphSpec(
            "phi",
            (TensorSpec("features", _F32, ("batch", C.ENERGY_STEPS, "feature_dim")),),
            (TensorSpec("energy", _F32, ("batch", C.ENERGY_STEPS, 1)),),
            "video features (B,112,768) -> energy (B,112,1); batch items never interact",
        ),
        GraphSpec(
            "clap_text",
            (TensorSpec("input_ids", _I64, ("batch", "text_len")), TensorSpec("attention_mask", _I64, ("batch", "text_len"))),
            (TensorSpec("text_embedding", _F32, ("batch", C.TEXT_EMBED_DIM)),),
            "RoBERTa token ids + mask -> L2-normalised CLAP text embedding",
        ),
        GraphSpec(
            "vae_encoder",
            (TensorSpec("mel", _F32, ("batch", 1, C.MEL_FRAMES, C.N_MELS)),),
            (TensorSpec("moments", _F32, ("batch", 2 * _LAT[0], _LAT[1], _LAT[2])),),
            "log-mel (B,1,512,64) -> posterior moments [mean; logvar] (unclamped)",
        ),
        GraphSpec(
            "unet_adapter",
            (
                TensorSpec("x_t", _F32, ("cfg_batch", *_LAT)),
                TensorSpec("timesteps", _I64, ("cfg_batch",)),
                TensorSpec("film", _F32, ("cfg_batch", C.TEXT_EMBED_DIM)),
                TensorSpec("hint", _F32, ("cfg_batch", *_LAT)),
            ),
            (TensorSpec("eps", _F32, ("cfg_batch", *_LAT)),),
            "one denoising step of the UNet with the energy adapter fused in",
        ),
        GraphSpec(
            "vae_decoder",
            (TensorSpec("latent", _F32, ("batch", *_LAT)),),
            (TensorSpec("mel", _F32, ("batch", 1, C.MEL_FRAMES, C.N_MELS)),),
            "scaled latent z (B,8,128,16) -> log-mel (B,1,512,64); divides by scale_factor inside",
        ),
        GraphSpec(
            "vocoder",
            (TensorSpec("mel", _F32, ("batch", C.N_MELS, C.MEL_FRAMES)),),
            (TensorSpec("waveform", _F32, ("batch", 1, C.VOCODER_HOP * C.MEL_FRAMES + C.VOCODER_EXTRA_SAMPLES)),),
            "log-mel (B,64,512) -> 16 kHz waveform (B,1,81952)",
        ),
    )
}


def graph_names(text: str, allowed=None) -> list[str]:
    """The names in a comma-separated list (``"unet_adapter, vocoder"``), each one of ``allowed``
    (default: every graph); ValueError naming the ones that are not, or saying the list is empty."""
    allowed = list(GRAPHS if allowed is None else allowed)
    names = [g.strip() for g in str(text).split(",") if g.strip()]
    bad = [g for g in names if g not in allowed]
    if bad or not names:
        raise ValueError(f"{', '.join(bad) + ': not among' if bad else 'no graph names; choose from'} "
                         f"{', '.join(allowed)}")
    return names
