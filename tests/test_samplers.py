"""Few-step samplers (rewas_rt.samplers) and the guidance interval (rewas_rt.guidance).

The DPM-Solver++ trajectories are compared step by step with an independent
implementation, diffusers' ``DPMSolverMultistepScheduler`` (test-only dependency), driven
by the same guided ε-function on the released noise schedule at the original's DDIM
timestep spacing.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from rewas_rt import constants as C
from rewas_rt import ddim, samplers
from rewas_rt.guidance import Guided, check_interval, edm_sigma

diffusers = pytest.importorskip("diffusers", reason="test dependency: pip install 'rewas-rt[test]'")
torch = pytest.importorskip("torch")

SHAPE = (2, 3, 4, 5)  # (B, C, H, W), small: the solvers are elementwise
GUIDANCE = 3.0
# Float32 tolerance, relative to max|x| of each step (the two implementations order float32 ops differently).
RTOL = 2e-5


def eps_fn(x, t, film, hint):
    """A smooth per-item ε-model: depends on x, t and both conditions; batching cannot change it."""
    tt = (t.astype(np.float64) / C.TRAIN_STEPS)[:, None, None, None]
    return (np.tanh(0.7 * x + hint) * film.mean(-1)[:, None, None, None] + 0.3 * np.sin(3 * tt) * x
            + 0.1 * tt).astype(np.float32)


def problem(seed=0):
    rng = np.random.default_rng(seed)
    x_T = rng.standard_normal(SHAPE).astype(np.float32)
    cond = {"film": rng.standard_normal((SHAPE[0], 6)).astype(np.float32),
            "hint": rng.standard_normal(SHAPE).astype(np.float32)}
    uncond = {"film": rng.standard_normal((SHAPE[0], 6)).astype(np.float32), "hint": np.zeros(SHAPE, np.float32)}
    return x_T, cond, uncond


def model_counting(calls):
    def model(x, t, conditions):
        assert t.dtype == np.int64 and t.shape == (len(x),) and len(set(t.tolist())) == 1
        calls.append(len(x))
        return eps_fn(x, t, conditions["film"], conditions["hint"])
    return model


def guided_eps_reference(x, t, cond, uncond, g):
    """Two separate calls per step, as the original's sampler makes them."""
    tb = np.full(len(x), t, np.int64)
    e_u = eps_fn(x, tb, uncond["film"], uncond["hint"])
    e_c = eps_fn(x, tb, cond["film"], cond["hint"])
    return e_u + np.float32(g) * (e_c - e_u)


def diffusers_trajectory(algorithm, timesteps, x_T, cond, uncond, noises):
    """Every x of diffusers' DPMSolverMultistepScheduler on the released ᾱ (the model's float32 buffer)."""
    betas, acp = ddim.linear_schedule()
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=C.TRAIN_STEPS, trained_betas=betas, solver_order=2, algorithm_type=algorithm,
        solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero", prediction_type="epsilon")
    sched.alphas_cumprod = torch.from_numpy(acp.astype(np.float32))
    sched.set_timesteps(timesteps=[int(t) for t in timesteps])
    x = torch.from_numpy(x_T.copy())
    out = []
    for k, t in enumerate(sched.timesteps):
        eps = guided_eps_reference(x.numpy(), int(t), cond, uncond, GUIDANCE)
        noise = torch.from_numpy(noises[k]) if noises is not None else None
        x = sched.step(torch.from_numpy(eps), t, x, variance_noise=noise).prev_sample
        out.append(x.numpy().copy())
    return np.asarray(sched.timesteps), out


def assert_trajectory(ours, ref):
    assert len(ours) == len(ref)
    for k, (a, b) in enumerate(zip(ours, ref)):
        assert a.dtype == np.float32
        err = float(np.max(np.abs(a.astype(np.float64) - b)))
        scale = float(np.max(np.abs(b)))
        assert err <= RTOL * max(scale, 1.0), f"step {k}: max abs diff {err:.3e}, max|x| {scale:.3e}"


def test_released_spacing_is_diffusers_leading_with_offset_1():
    """The original's DDIM spacing (arange(0, 1000, 1000 // S) + 1) is diffusers' "leading" + steps_offset=1."""
    for steps in (10, 20, 25, 50, 200):
        s = diffusers.DDIMScheduler(num_train_timesteps=C.TRAIN_STEPS, beta_schedule="scaled_linear",
                                    beta_start=C.LINEAR_START, beta_end=C.LINEAR_END, timestep_spacing="leading",
                                    steps_offset=1)
        s.set_timesteps(steps)
        np.testing.assert_array_equal(samplers.noise_levels(steps).timesteps, s.timesteps.numpy())
    # Their ᾱ ("scaled_linear", float32 cumprod) agrees with the original's float64 cumprod to float32 rounding.
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), ddim.linear_schedule()[1], rtol=2e-6)


@pytest.mark.parametrize("sampler", ["dpmpp-2m", "dpmpp-2m-sde"])
@pytest.mark.parametrize("steps", [10, 15, 25, 200])
def test_trajectory_matches_diffusers(sampler, steps):
    x_T, cond, uncond = problem(steps)
    levels = samplers.noise_levels(steps)
    sde = sampler.endswith("sde")
    noises = np.random.default_rng(1).standard_normal((levels.steps, *SHAPE)).astype(np.float32) if sde else None
    calls, xs, drawn = [], [], []

    def noise_source(step, shape):
        drawn.append(step)
        return noises[step] if noises is not None else np.full(shape, np.nan, np.float32)  # unused by the ODE

    final = samplers.sample_with(sampler, model_counting(calls), x_T, cond, uncond, steps, GUIDANCE, noise_source,
                                 lambda k, x, x0: xs.append(x))
    ts, ref = diffusers_trajectory("sde-dpmsolver++" if sde else "dpmsolver++", levels.timesteps, x_T, cond, uncond,
                                   noises)
    np.testing.assert_array_equal(ts, levels.timesteps)
    assert_trajectory(xs, ref)
    np.testing.assert_array_equal(final, xs[-1])
    assert np.isfinite(final).all()
    # One batched call per step with both CFG branches; S=15 gives 16 steps, as DDIM in the original.
    assert calls == [2 * SHAPE[0]] * samplers.model_calls(sampler, steps) == [2 * SHAPE[0]] * levels.steps
    assert drawn == (list(range(levels.steps)) if sde else [])


def test_custom_timesteps_match_diffusers():
    """Any timestep set (here uneven, including t = 0 and 999), sorted to sampling order."""
    ts = [0, 3, 40, 41, 250, 600, 999, 870]
    x_T, cond, uncond = problem(3)
    levels = samplers.noise_levels(0, timesteps=ts)
    xs = []
    samplers.dpmpp_2m(model_counting([]), x_T, cond, uncond, levels, GUIDANCE, callback=lambda k, x, x0: xs.append(x))
    _, ref = diffusers_trajectory("dpmsolver++", levels.timesteps, x_T, cond, uncond, None)
    assert_trajectory(xs, ref)


def test_dpmpp_2m_solves_a_gaussian_probability_flow():
    """Independent of diffusers: for data ~ N(μ, s²) the exact ε is known, and the probability-flow
    ODE from x_T at level (α_T, σ_T) is at x(t) = α_t μ + r_t (x_T − α_T μ) / r_T with r = sqrt(α² s² + σ²).
    The ODE sampler must track it with second-order convergence: 5× the steps, error below 1/10, checked
    at t = 101, a level of both schedules. (Not at the end: the released spacing's last step, t 1 -> σ 0
    after t 1+stride -> 1, is a long step in λ, where any solver's error grows.)"""
    mu, s = 0.8, 0.3
    _, acp = ddim.linear_schedule()
    acp = acp.astype(np.float32).astype(np.float64)
    x_T, cond, uncond = problem(5)

    def model(x, t, conditions):
        a = acp[t][:, None, None, None]
        return ((np.sqrt(1 - a) * (x - np.sqrt(a) * mu)) / (a * s * s + 1 - a)).astype(np.float32)

    errors = {}
    for steps in (10, 50):
        xs = []
        samplers.sample_with("dpmpp-2m", model, x_T, cond, uncond, steps, GUIDANCE, None,
                             lambda k, x, x0: xs.append(x))
        lv = samplers.noise_levels(steps)
        r = np.sqrt(lv.alphas ** 2 * s * s + lv.sigmas ** 2)
        (k,) = np.flatnonzero(lv.timesteps == 101)
        exact = lv.alphas[k] * mu + r[k] * (x_T - lv.alphas[0] * mu) / r[0]
        errors[steps] = float(np.abs(xs[k - 1] - exact).max())
    assert errors[10] < 0.02 and errors[50] < errors[10] / 10, errors


def test_noise_levels():
    lv = samplers.noise_levels(25)
    assert lv.steps == 25 and lv.timesteps[0] == 961 and lv.timesteps[-1] == 1
    acp = ddim.linear_schedule()[1].astype(np.float32)
    np.testing.assert_allclose(lv.alphas[:-1] ** 2, acp[lv.timesteps].astype(np.float64), rtol=1e-15)
    assert (lv.alphas[-1], lv.sigmas[-1]) == (1.0, 0.0) and np.isinf(lv.lambdas[-1])
    assert np.all(np.diff(lv.lambdas) > 0)
    np.testing.assert_allclose(lv.alphas ** 2 + lv.sigmas ** 2, 1.0, rtol=1e-12)
    for bad in ([], [5, 5], [-1, 3], [1000]):
        with pytest.raises(ValueError):
            samplers.noise_levels(0, timesteps=bad)


def test_unknown_sampler_and_sde_without_noise():
    x_T, cond, uncond = problem()
    with pytest.raises(ValueError, match="unknown sampler"):
        samplers.sample_with("euler", model_counting([]), x_T, cond, uncond, 10, GUIDANCE, None)
    with pytest.raises(ValueError, match="noise_source"):
        samplers.dpmpp_2m(model_counting([]), x_T, cond, uncond, samplers.noise_levels(10), GUIDANCE, sde=True)


# --------------------------------------------------------------------------- guidance interval


@pytest.mark.parametrize("bad", [(1.0, 1.0), (2.0, 1.0), (-0.1, 1.0), (math.nan, 1.0), (1.0,), "ab", (0, "x")])
def test_invalid_interval(bad):
    with pytest.raises(ValueError, match="guidance interval"):
        check_interval(bad)


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_interval_calls_single_branch_outside(sampler):
    """Inside (σ_lo, σ_hi]: one 2B call (guided); outside: one B call of the conditional branch only."""
    x_T, cond, uncond = problem(7)
    steps = 20
    levels = samplers.noise_levels(steps)
    sig = levels.edm_sigmas[:-1]
    lo, hi = 0.5, 5.0
    assert 0 < np.sum((sig > lo) & (sig <= hi)) < steps  # the interval splits this schedule
    rng = np.random.default_rng(0)
    noises = rng.standard_normal((steps, *SHAPE)).astype(np.float32)
    calls = []
    out = samplers.sample_with(sampler, model_counting(calls), x_T, cond, uncond, steps, GUIDANCE,
                               lambda k, s: noises[k], guidance_interval=(lo, hi))
    want = [2 * SHAPE[0] if lo < s <= hi else SHAPE[0] for s in sig]
    assert calls == want
    assert np.isfinite(out).all()
    # DDIM's σ per step is the same as the levels' (both from the float32 ᾱ buffer).
    sched = ddim.make_schedule(steps)
    np.testing.assert_allclose([edm_sigma(a) for a in sched.alphas[::-1]], sig, rtol=1e-12)


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_interval_extremes(sampler):
    """(0, inf) is plain CFG bit for bit; an interval holding no step is guidance 1 (conditional only)."""
    x_T, cond, uncond = problem(9)
    noises = np.random.default_rng(2).standard_normal((10, *SHAPE)).astype(np.float32)

    def run(g, interval, calls=None):
        return samplers.sample_with(sampler, model_counting([] if calls is None else calls), x_T, cond, uncond, 10, g,
                                    lambda k, s: noises[k], guidance_interval=interval)

    np.testing.assert_array_equal(run(GUIDANCE, (0.0, math.inf)), run(GUIDANCE, None))
    calls = []
    none_guided = run(GUIDANCE, (1e4, 1e5), calls)
    assert calls == [SHAPE[0]] * 10
    plain = run(1.0, None)
    np.testing.assert_allclose(none_guided, plain, rtol=0, atol=1e-6 * np.abs(plain).max())


def test_guided_rejects_mismatched_conditions():
    with pytest.raises(ValueError, match="same names"):
        Guided(lambda *a: None, {"film": np.zeros(1)}, {"hint": np.zeros(1)}, 3.0)


@pytest.mark.parametrize("sampler", ["dpmpp-2m", "dpmpp-2m-sde"])
def test_constrain_sees_every_level_and_the_result(sampler):
    """Window overlap (rewas_rt.windows): constrain(x, ᾱ) replaces x_T at ᾱ of the first level, each new x
    at its level's ᾱ and the returned x̂0 at ᾱ = 1, as in ddim.sample."""
    x_T, cond, uncond = problem(3)
    levels = samplers.noise_levels(10)
    seen, inputs = [], []

    def constrain(x, alpha_bar):
        seen.append(alpha_bar)
        inputs.append(x.copy())
        out = x.copy()
        out[..., :2] = np.float32(np.sqrt(alpha_bar)) * 0.5  # pin the first columns, as an overlap would
        return out

    rng = np.random.default_rng(0)
    noise = lambda step, shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    out = samplers.sample_with(sampler, model_counting([]), x_T, cond, uncond, 10, GUIDANCE, noise,
                               constrain=constrain)
    np.testing.assert_allclose(seen, levels.alphas ** 2, rtol=1e-12)  # alphas ends with 1 (σ = 0)
    assert len(seen) == levels.steps + 1 and seen[-1] == 1.0
    assert np.all(out[..., :2] == np.float32(0.5)) and not np.all(inputs[-1][..., :2] == np.float32(0.5))
    # Without it the run is unchanged by the new argument.
    rng = np.random.default_rng(0)
    a = samplers.sample_with(sampler, model_counting([]), x_T, cond, uncond, 10, GUIDANCE, noise)
    rng = np.random.default_rng(0)
    b = samplers.sample_with(sampler, model_counting([]), x_T, cond, uncond, 10, GUIDANCE, noise, constrain=None)
    np.testing.assert_array_equal(a, b)
