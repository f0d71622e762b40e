"""Few-step samplers next to ``rewas_rt.ddim.sample``: DPM-Solver++(2M) and its SDE variant,
pure NumPy functions of a model and a noise schedule (as k-diffusion writes them), with
the same model interface and batched classifier-free guidance (``rewas_rt.guidance``).

Both run on the released model's discrete schedule (the "linear" β of ``ddim.linear_schedule``,
the model's float32 ᾱ buffer) at the original's DDIM timestep spacing,
``arange(0, 1000, 1000 // S) + 1`` in descending order, and end at σ = 0 (the last update
returns the data prediction; diffusers' ``final_sigmas_type="zero"``). So S steps make
exactly the model calls DDIM with S steps makes (e.g. 16 for S = 15, as in the original).

In VP terms, with α_t = sqrt(ᾱ_t), σ_t = sqrt(1 − ᾱ_t), λ_t = log(α_t / σ_t) and the data
prediction x̂0 = (x − σ_t ε) / α_t (Lu et al. 2022, "DPM-Solver++", Algorithm 2):

- ``dpmpp-2m``: h = λ_t − λ_s, r = h_prev / h, D = (1 + 1/(2r)) x̂0_s − 1/(2r) x̂0_prev;
  x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D. The first and the last step are first order
  (the last has σ_t = 0, h = ∞: x_t = x̂0).
- ``dpmpp-2m-sde``: x_t = (σ_t/σ_s) e^{−h} x_s + α_t (1 − e^{−2h}) D + σ_t sqrt(1 − e^{−2h}) z,
  z ~ N(0, 1) from ``noise_source`` (called at every step, as in DDIM; unused at the last).

Coefficients are computed in float64 from the float32 ᾱ and applied in float32.
``sample_with`` picks a sampler by name; ``SAMPLERS`` lists the names the CLI accepts.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np

from rewas_rt import constants as C
from rewas_rt import ddim
from rewas_rt.ddim import NoiseSource
from rewas_rt.guidance import Guided, Model

Callback = Callable[[int, np.ndarray, np.ndarray], None]

SAMPLERS = ("ddim", "dpmpp-2m", "dpmpp-2m-sde")
# Steps used when a sampler is chosen without a step count and the engine directory recommends
# another sampler (benchmarks/sampler_quality.py measures quality against steps; see benchmarks/README.md).
DEFAULT_STEPS = {"ddim": C.DDIM_STEPS, "dpmpp-2m": 20, "dpmpp-2m-sde": 25}


@dataclasses.dataclass(frozen=True, eq=False)
class NoiseLevels:
    """A discrete VP schedule in sampling order: ``timesteps[k]`` (int64, descending) and its
    α, σ (float64, from the model's float32 ᾱ), followed by the final level σ = 0."""

    timesteps: np.ndarray  # (S,) int64
    alphas: np.ndarray  # (S + 1,) sqrt(ᾱ); last = 1
    sigmas: np.ndarray  # (S + 1,) sqrt(1 − ᾱ); last = 0

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @property
    def lambdas(self) -> np.ndarray:
        """log(α/σ) per level (+inf at σ = 0)."""
        with np.errstate(divide="ignore"):
            return np.log(self.alphas) - np.log(self.sigmas)

    @property
    def edm_sigmas(self) -> np.ndarray:
        """σ/α = sqrt((1 − ᾱ)/ᾱ): the noise level the guidance interval is given in."""
        return self.sigmas / self.alphas


def noise_levels(steps: int, timesteps: np.ndarray | None = None) -> NoiseLevels:
    """The released schedule at the original's DDIM spacing (``ddim.make_schedule``), or at
    ``timesteps`` (any distinct values in 0 … 999, sampled in descending order)."""
    _, alphas_cumprod = ddim.linear_schedule()
    acp = alphas_cumprod.astype(np.float32).astype(np.float64)  # the model's float32 buffer
    if timesteps is None:
        timesteps = ddim.make_schedule(steps).timesteps
    ts = np.asarray(timesteps, dtype=np.int64)
    if ts.ndim != 1 or len(ts) == 0 or len(np.unique(ts)) != len(ts) or ts.min() < 0 or ts.max() >= C.TRAIN_STEPS:
        raise ValueError(f"timesteps must be distinct integers in 0..{C.TRAIN_STEPS - 1}")
    ts = np.sort(ts)[::-1].copy()
    a = acp[ts]
    return NoiseLevels(ts, np.append(np.sqrt(a), 1.0), np.append(np.sqrt(1.0 - a), 0.0))


def dpmpp_2m(
    model: Model,
    x_T: np.ndarray,
    cond: Mapping[str, np.ndarray],
    uncond: Mapping[str, np.ndarray],
    levels: NoiseLevels,
    guidance: float,
    noise_source: NoiseSource | None = None,
    callback: Callback | None = None,
    *,
    sde: bool = False,
    guidance_interval: tuple[float, float] | None = None,
    constrain: ddim.Constraint | None = None,
) -> np.ndarray:
    """DPM-Solver++(2M) (``sde=False``) or SDE-DPM-Solver++(2M) from x_T (B, …); returns x̂0 (float32).

    Model interface and CFG batching as ``ddim.sample``. ``callback(step, x, pred_x0)`` sees
    each step. ``noise_source`` is required for ``sde=True``. ``constrain(x, alpha_bar)`` as in
    ``ddim.sample`` (window overlap): applied to x_T at ᾱ of the first level, to each new x at
    its level's ᾱ and, with alpha_bar = 1, to the returned x̂0.
    """
    if sde and noise_source is None:
        raise ValueError("dpmpp-2m-sde needs a noise_source")
    guided = Guided(model, cond, uncond, guidance, guidance_interval)
    f32 = np.float32
    x = np.asarray(x_T, dtype=f32)
    if constrain is not None:
        x = constrain(x, float(levels.alphas[0] ** 2))
    lam, alphas, sigmas, edm = levels.lambdas, levels.alphas, levels.sigmas, levels.edm_sigmas
    prev_x0: np.ndarray | None = None
    h_prev = 0.0
    for k in range(levels.steps):
        eps = guided.eps(x, int(levels.timesteps[k]), float(edm[k]))
        x0 = (x - f32(sigmas[k]) * eps) / f32(alphas[k])
        noise = noise_source(k, x.shape) if noise_source is not None and sde else None
        last = k == levels.steps - 1
        if last:  # σ_t = 0: every variant returns the data prediction
            x = x0
        else:
            h = float(lam[k + 1] - lam[k])
            if prev_x0 is None:  # first step: first order
                d = x0
            else:
                r = h_prev / h
                d = f32(1.0 + 0.5 / r) * x0 - f32(0.5 / r) * prev_x0
            if sde:
                x = (f32(sigmas[k + 1] / sigmas[k] * np.exp(-h)) * x + f32(alphas[k + 1] * -np.expm1(-2.0 * h)) * d
                     + f32(sigmas[k + 1] * np.sqrt(-np.expm1(-2.0 * h))) * np.asarray(noise, dtype=f32))
            else:
                x = f32(sigmas[k + 1] / sigmas[k]) * x + f32(alphas[k + 1] * -np.expm1(-h)) * d
            h_prev = h
        prev_x0 = x0
        x = x.astype(f32, copy=False)
        if constrain is not None:
            x = constrain(x, float(alphas[k + 1] ** 2))
        if callback is not None:
            callback(k, x, x0)
    return x


def sample_with(
    sampler: str,
    model: Model,
    x_T: np.ndarray,
    cond: Mapping[str, np.ndarray],
    uncond: Mapping[str, np.ndarray],
    steps: int,
    guidance: float,
    noise_source: NoiseSource,
    callback: Callback | None = None,
    *,
    eta: float = C.ETA,
    guidance_interval: tuple[float, float] | None = None,
    constrain: ddim.Constraint | None = None,
) -> np.ndarray:
    """Run ``sampler`` (one of ``SAMPLERS``) with ``steps`` steps; ``eta`` is DDIM's only;
    ``constrain`` (window overlap) as in ``ddim.sample``."""
    if sampler == "ddim":  # both samplers validate the interval (rewas_rt.guidance.Guided)
        return ddim.sample(model, x_T, cond, uncond, ddim.make_schedule(steps, eta), guidance, noise_source,
                           callback, constrain=constrain, guidance_interval=guidance_interval)
    if sampler in ("dpmpp-2m", "dpmpp-2m-sde"):
        return dpmpp_2m(model, x_T, cond, uncond, noise_levels(steps), guidance, noise_source, callback,
                        sde=sampler == "dpmpp-2m-sde", guidance_interval=guidance_interval, constrain=constrain)
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def model_calls(sampler: str, steps: int) -> int:
    """Model evaluations (steps) a sampler makes for ``steps`` (the spacing can add one)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    return ddim.make_schedule(steps).steps
