"""Classifier-free guidance around an ε-model, shared by every sampler (``rewas_rt.ddim``,
``rewas_rt.samplers``), with an optional guidance interval.

``model(x, t, conditions) -> eps`` is the engine call: ``x`` (N, …) float32, ``t`` (N,)
int64, ``conditions`` name -> (N, …). With guidance both branches go through the model
in one call of 2B rows, [uncond; cond]; the conditions are concatenated once per request.

Guidance interval (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval
improves sample and distribution quality in diffusion models"): guidance is applied only
where the noise level σ = sqrt((1 − ᾱ_t) / ᾱ_t) lies in (σ_lo, σ_hi]; elsewhere the
sampler uses the conditional branch alone (guidance 1), which is a single-branch model
call of B rows instead of 2B. ``None`` applies guidance at every step (the original).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np

Model = Callable[[np.ndarray, np.ndarray, Mapping[str, np.ndarray]], np.ndarray]


def check_interval(interval: tuple[float, float] | None) -> tuple[float, float] | None:
    """A valid (σ_lo, σ_hi) with 0 <= σ_lo < σ_hi (σ_hi may be inf), or None; ValueError otherwise."""
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance interval must be two numbers (sigma_lo, sigma_hi), got {interval!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo < 0 or not lo < hi:
        raise ValueError(f"guidance interval needs 0 <= sigma_lo < sigma_hi, got ({lo:g}, {hi:g})")
    return lo, hi


def edm_sigma(alpha_cumprod: float) -> float:
    """The noise level σ = sqrt((1 − ᾱ) / ᾱ) of a timestep whose ᾱ is given."""
    a = float(alpha_cumprod)
    return math.sqrt((1.0 - a) / a)


class Guided:
    """``eps(x, t, sigma)`` and ``branches(x, t, sigma)`` of a guided model for one request batch."""

    def __init__(self, model: Model, cond: Mapping[str, np.ndarray], uncond: Mapping[str, np.ndarray],
                 guidance: float, interval: tuple[float, float] | None = None):
        if set(cond) != set(uncond):
            raise ValueError(f"cond and uncond need the same names, got {sorted(cond)} and {sorted(uncond)}")
        self.model = model
        self.guidance = float(guidance)
        self.interval = check_interval(interval)
        self.cond = dict(cond)
        self.both = {name: np.concatenate([uncond[name], cond[name]], axis=0) for name in cond}
        self.calls: list[int] = []  # rows of each model call (2B guided, B single-branch)

    def guided_at(self, sigma: float) -> bool:
        if self.interval is None:
            return True
        lo, hi = self.interval
        return lo < sigma <= hi

    def branches(self, x: np.ndarray, timestep: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """(eps_uncond, eps_cond) at one timestep; outside the interval both are the conditional ε."""
        batch = x.shape[0]
        if self.guided_at(sigma):
            t = np.full(2 * batch, timestep, dtype=np.int64)
            eps = self.model(np.concatenate([x, x], axis=0), t, self.both)
            self.calls.append(2 * batch)
            return eps[:batch], eps[batch:]
        eps = self.model(x, np.full(batch, timestep, dtype=np.int64), self.cond)
        self.calls.append(batch)
        return eps, eps

    def eps(self, x: np.ndarray, timestep: int, sigma: float) -> np.ndarray:
        """The guided ε, float32: eps_u + g (eps_c − eps_u) (as the original, in float32)."""
        eps_u, eps_c = self.branches(x, timestep, sigma)
        if eps_u is eps_c:
            return np.asarray(eps_c, dtype=np.float32)
        f32 = np.float32
        eps_u = np.asarray(eps_u, dtype=f32)
        return eps_u + f32(self.guidance) * (np.asarray(eps_c, dtype=f32) - eps_u)
