"""DDIM sampling with classifier-free guidance, as the original DDIMSampler does it
(ldm/models/diffusion/ddim.py: ``make_schedule``, ``p_sample_ddim``), in NumPy.

Differences that do not change the maths (docs/design.md §1): both CFG branches go
through the model in one batched call, and the conditions are concatenated once
per request instead of once per step.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np

from rewas_rt import constants as C
from rewas_rt.guidance import Guided, Model, edm_sigma

__all__ = ["Constraint", "DDIMSchedule", "Model", "NoiseSource", "ddim_step", "linear_schedule", "make_schedule", "sample"]

NoiseSource = Callable[[int, tuple[int, ...]], np.ndarray]
# constrain(x, alpha_bar) -> x: e.g. inpainting (rewas_rt.windows.overlap_constraint).
Constraint = Callable[[np.ndarray, float], np.ndarray]


def linear_schedule(
    linear_start: float = C.LINEAR_START, linear_end: float = C.LINEAR_END, n_train: int = C.TRAIN_STEPS
) -> tuple[np.ndarray, np.ndarray]:
    """(betas, alphas_cumprod) in float64; the original registers them as float32 buffers."""
    betas = np.linspace(linear_start**0.5, linear_end**0.5, n_train, dtype=np.float64) ** 2
    return betas, np.cumprod(1.0 - betas)


@dataclasses.dataclass(frozen=True, eq=False)
class DDIMSchedule:
    """Per-step DDIM parameters, indexed by i = 0 … steps−1 in ascending timestep
    order (sampling runs i = steps−1 down to 0). The dtypes are the original's:
    alphas and sqrt_one_minus_alphas float32, alphas_prev and sigmas float64
    (computed from the float32 alphas_cumprod)."""

    timesteps: np.ndarray  # int64
    alphas: np.ndarray
    alphas_prev: np.ndarray
    sigmas: np.ndarray
    sqrt_one_minus_alphas: np.ndarray
    eta: float

    @property
    def steps(self) -> int:
        return len(self.timesteps)


def uniform_timesteps(ddim_steps: int, n_train: int = C.TRAIN_STEPS) -> np.ndarray:
    """The original's "uniform" discretisation (make_ddim_timesteps): arange(0, n_train, n_train // S) + 1.

    When S does not divide n_train the step count is len(arange(0, n_train, n_train // S)),
    not S (e.g. S=7 gives 8 steps), exactly as in the original.
    """
    return np.arange(0, n_train, n_train // ddim_steps, dtype=np.int64) + 1


def runnable_steps(ddim_steps: int, n_train: int = C.TRAIN_STEPS) -> bool:
    """Whether the original can sample with S steps: every timestep must index its
    n_train-long alphas_cumprod, i.e. the last one, 1 + the largest multiple of
    n_train // S below n_train, must be < n_train. It is not when n_train // S divides
    n_train − 1: S > n_train/2 (stride 1) and, for n_train = 1000, the strides 3, 9, 27,
    37, 111, 333 (S = 3, 9, 27, 36, 37, 101–111, 251–333). The original fails there
    with an index error; we refuse those counts before any work (``check_steps``)."""
    if not 1 <= ddim_steps <= n_train:
        return False
    return int(uniform_timesteps(ddim_steps, n_train)[-1]) < n_train


def nearest_runnable_steps(ddim_steps: int, n_train: int = C.TRAIN_STEPS) -> list[int]:
    """The closest runnable step counts below and above ``ddim_steps`` (one or two)."""
    below = next((s for s in range(min(ddim_steps, n_train + 1) - 1, 0, -1) if runnable_steps(s, n_train)), None)
    above = next((s for s in range(max(ddim_steps, 0) + 1, n_train + 1) if runnable_steps(s, n_train)), None)
    return [s for s in (below, above) if s is not None]


def check_steps(ddim_steps: int, n_train: int = C.TRAIN_STEPS) -> None:
    """ValueError (one line, naming the nearest runnable counts) unless ``runnable_steps``."""
    if runnable_steps(ddim_steps, n_train):
        return
    near = " or ".join(map(str, nearest_runnable_steps(ddim_steps, n_train)))
    if 1 <= ddim_steps <= n_train:
        stride = n_train // ddim_steps
        raise ValueError(
            f"{ddim_steps} DDIM steps cannot run: the original's uniform schedule (timesteps 1, {1 + stride}, "
            f"{1 + 2 * stride}, … of {n_train}) would end at {n_train}, past the last ({n_train - 1}); "
            f"nearest valid step counts: {near}")
    raise ValueError(f"DDIM steps must be in 1..{n_train // 2} (and runnable), got {ddim_steps}; "
                     f"nearest valid step counts: {near}")


def make_schedule(
    ddim_steps: int = C.DDIM_STEPS,
    eta: float = C.ETA,
    linear_start: float = C.LINEAR_START,
    linear_end: float = C.LINEAR_END,
    n_train: int = C.TRAIN_STEPS,
) -> DDIMSchedule:
    """The original's "uniform" DDIM discretisation (``uniform_timesteps``); step counts
    it cannot run raise ValueError naming the nearest ones it can (``check_steps``)."""
    check_steps(ddim_steps, n_train)
    _, alphas_cumprod = linear_schedule(linear_start, linear_end, n_train)
    acp = alphas_cumprod.astype(np.float32)  # the model's float32 buffer
    timesteps = uniform_timesteps(ddim_steps, n_train)
    alphas = acp[timesteps]
    alphas_prev = np.concatenate([acp[:1], acp[timesteps[:-1]]]).astype(np.float64)
    # make_ddim_sampling_parameters mixes a float64 ndarray with the float32 tensor:
    # `ndarray / tensor` runs as tensor.reciprocal() * ndarray, so 1/(1 − α) is
    # float32 and the rest float64. Reproduced to get its sigmas bit for bit.
    recip_one_minus_a = (np.float32(1.0) / (np.float32(1.0) - alphas)).astype(np.float64)
    a = alphas.astype(np.float64)
    sigmas = eta * np.sqrt((1.0 - alphas_prev) * recip_one_minus_a * (1.0 - a / alphas_prev))
    sqrt_one_minus_alphas = np.sqrt(np.float32(1.0) - alphas)
    return DDIMSchedule(timesteps, alphas, alphas_prev, sigmas, sqrt_one_minus_alphas, float(eta))


def ddim_step(
    x: np.ndarray,
    eps_uncond: np.ndarray,
    eps_cond: np.ndarray,
    i: int,
    schedule: DDIMSchedule,
    guidance: float,
    noise: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One DDIM update at schedule index i; returns (x_prev, pred_x0), float32.

    The original feeds the per-step constants through ``torch.full`` (float32), so
    all arithmetic here is float32 too. ``noise`` is N(0, 1); it is scaled by σ_i.
    """
    f32 = np.float32
    a_t = f32(schedule.alphas[i])
    a_prev = f32(schedule.alphas_prev[i])
    sigma = f32(schedule.sigmas[i])
    sqrt_one_minus_at = f32(schedule.sqrt_one_minus_alphas[i])
    eps_u = np.asarray(eps_uncond, dtype=f32)
    eps = eps_u + f32(guidance) * (np.asarray(eps_cond, dtype=f32) - eps_u)
    pred_x0 = (np.asarray(x, dtype=f32) - sqrt_one_minus_at * eps) / np.sqrt(a_t)
    dir_xt = np.sqrt(f32(1.0) - a_prev - sigma**2) * eps
    x_prev = np.sqrt(a_prev) * pred_x0 + dir_xt + sigma * np.asarray(noise, dtype=f32)
    return x_prev, pred_x0


def sample(
    model: Model,
    x_T: np.ndarray,
    cond: Mapping[str, np.ndarray],
    uncond: Mapping[str, np.ndarray],
    schedule: DDIMSchedule,
    guidance: float,
    noise_source: NoiseSource,
    callback: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    constrain: Constraint | None = None,
    guidance_interval: tuple[float, float] | None = None,
) -> np.ndarray:
    """Run the DDIM loop from x_T (B, …) and return the final latent (float32).

    ``model(x, t, conditions) -> eps`` receives a batch of 2B: rows [:B] are the
    unconditional branch, rows [B:] the conditional one; ``t`` is (2B,) int64 and
    ``conditions`` maps every name of ``cond``/``uncond`` (same keys, each (B, …))
    to the [uncond; cond] concatenation. ``noise_source(step, shape)`` returns
    N(0, 1) noise for step = 0, 1, … in sampling order; it is called at every
    step, also when σ = 0 and at the last step, so a seeded generator advances as
    the original's RNG does. ``callback(step, x_prev, pred_x0)`` sees each step.
    ``guidance_interval`` (σ_lo, σ_hi): guidance only at noise levels in that
    range, single-branch calls (B rows, ``cond`` only) elsewhere (``rewas_rt.guidance``).

    ``constrain(x, alpha_bar)``, when given, replaces the sample wherever it is used:
    x_T (at ᾱ of the first timestep), each x_prev (at its ᾱ_prev) and, with
    alpha_bar = 1, the returned latent. Without it the loop is the original's.
    """
    guided = Guided(model, cond, uncond, guidance, guidance_interval)
    x = np.asarray(x_T, dtype=np.float32)
    if constrain is not None:
        x = constrain(x, float(schedule.alphas[-1]))
    for step, i in enumerate(range(schedule.steps - 1, -1, -1)):
        eps_u, eps_c = guided.branches(x, int(schedule.timesteps[i]), edm_sigma(schedule.alphas[i]))
        noise = noise_source(step, x.shape)
        x, pred_x0 = ddim_step(x, eps_u, eps_c, i, schedule, guidance, noise)
        if constrain is not None:
            x = constrain(x, 1.0 if i == 0 else float(schedule.alphas_prev[i]))
        if callback is not None:
            callback(step, x, pred_x0)
    return x
