"""DDIM schedule and update (rewas_rt.ddim) against the golden `ddim` reference."""
from __future__ import annotations

import re

import numpy as np
import pytest
from safetensors.numpy import load_file

from rewas_rt import constants as C
from rewas_rt import ddim
from tests.reference import assert_close, component_dir, load_config, load_io

COMPONENT = "ddim"
CFG = load_config(COMPONENT)
SCHEDULES = load_io(COMPONENT, "schedules.npz")
TRAJ = load_io(COMPONENT, "trajectory.npz")
# (S, eta) pairs stored in schedules.npz, e.g. "S200_eta1_ddim_sigmas".
STORED = sorted({(int(m[1]), int(m[2])) for k in SCHEDULES if (m := re.match(r"S(\d+)_eta(\d+)_", k))})
FIELDS = {
    "ddim_timesteps": "timesteps",
    "ddim_alphas": "alphas",
    "ddim_alphas_prev": "alphas_prev",
    "ddim_sigmas": "sigmas",
    "ddim_sqrt_one_minus_alphas": "sqrt_one_minus_alphas",
}
# Schedules are recomputed from the same formulas: demand ~1 float32 ulp of the max,
# and 1e-6 relative element by element.
SCHEDULE_RTOL = 1e-7


def check_schedule_array(name: str, actual: np.ndarray, expected: np.ndarray):
    assert_close(name, actual, expected, rtol=SCHEDULE_RTOL)
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=1e-6, atol=0, err_msg=name)


def test_reference_config_matches_constants():
    assert (C.LINEAR_START, C.LINEAR_END, C.TRAIN_STEPS) == (CFG["linear_start"], CFG["linear_end"], CFG["timesteps"])
    assert (CFG["beta_schedule"], CFG["ddim_discretize"]) == ("linear", "uniform")


def test_training_schedule():
    betas, alphas_cumprod = ddim.linear_schedule(CFG["linear_start"], CFG["linear_end"], CFG["timesteps"])
    buffers = load_file(str(component_dir(COMPONENT) / "schedule_buffers.safetensors"))
    for name, value in (("betas", betas), ("alphas_cumprod", alphas_cumprod)):
        assert value.dtype == np.float64
        check_schedule_array(f"{COMPONENT}/{name}_float64", value, SCHEDULES[f"{name}_float64"])
        # The model registers them as float32 buffers.
        np.testing.assert_array_equal(value.astype(np.float32), SCHEDULES[f"{name}_float32"])
        np.testing.assert_array_equal(value.astype(np.float32), buffers[name])


@pytest.mark.parametrize("steps,eta", STORED)
def test_ddim_schedule(steps, eta):
    schedule = ddim.make_schedule(steps, float(eta), CFG["linear_start"], CFG["linear_end"], CFG["timesteps"])
    # The step count the original ran is the reference's (it differs from S when S does not divide n_train).
    assert schedule.steps == len(SCHEDULES[f"S{steps}_eta{eta}_ddim_timesteps"])
    for ref_name, attr in FIELDS.items():
        actual, expected = getattr(schedule, attr), SCHEDULES[f"S{steps}_eta{eta}_{ref_name}"]
        # Native dtypes of the original, e.g. "Tensor:torch.float32" or "ndarray:int64".
        assert str(actual.dtype) == CFG["sampler_param_types"][ref_name].split(".")[-1].split(":")[-1]
        if attr == "timesteps":
            np.testing.assert_array_equal(actual, expected)
        else:
            check_schedule_array(f"{COMPONENT}/S{steps}_eta{eta}_{attr}", actual, expected)


def test_steps_not_dividing_train_steps():
    """Documented behaviour of the original: S=7 -> stride 142 -> 8 steps."""
    schedule = ddim.make_schedule(7, 1.0)
    assert schedule.steps == 8
    np.testing.assert_array_equal(schedule.timesteps, np.arange(0, C.TRAIN_STEPS, C.TRAIN_STEPS // 7) + 1)
    assert np.isfinite(schedule.sigmas).all()


@pytest.mark.parametrize("steps", [0, -1, C.TRAIN_STEPS + 1])
def test_invalid_step_count(steps):
    with pytest.raises(ValueError, match="nearest valid step counts"):
        ddim.make_schedule(steps)


def test_every_step_count_runs_or_names_runnable_neighbours():
    """The original indexes its 1000 alphas_cumprod with timesteps arange(0, 1000, 1000 // S) + 1:
    S runs iff the last one is < 1000. Every S in 1..1000 either gives a finite schedule whose
    timesteps all index the table, or a one-line error naming runnable neighbours."""
    n = C.TRAIN_STEPS
    acp_len = len(ddim.linear_schedule()[1])
    refused = []
    for s in range(1, n + 1):
        ts = np.arange(0, n, n // s) + 1  # the original's formula, restated
        if ts[-1] < acp_len:
            sched = ddim.make_schedule(s, 1.0)
            np.testing.assert_array_equal(sched.timesteps, ts)
            assert np.isfinite(sched.sigmas).all() and np.isfinite(sched.alphas_prev).all()
        else:
            refused.append(s)
            with pytest.raises(ValueError) as e:
                ddim.make_schedule(s, 1.0)
            msg = str(e.value)
            assert "\n" not in msg
            near = [int(x) for x in msg.rsplit(":", 1)[1].replace(" or ", " ").split()]
            assert near and all(ddim.runnable_steps(k) for k in near)
            assert all(not ddim.runnable_steps(k) for k in range(min(near[0], s) + 1, max(near[-1], s)))
    # Stride 1 (S > 500) and the strides dividing 999: 3, 9, 27, 37, 111, 333.
    assert refused == [3, 9, 27, 36, 37, *range(101, 112), *range(251, 334), *range(501, 1001)]


def trajectory_schedule(eta: int) -> ddim.DDIMSchedule:
    return ddim.make_schedule(int(TRAJ["ddim_steps"]), float(eta), CFG["linear_start"], CFG["linear_end"], CFG["timesteps"])


@pytest.mark.parametrize("eta", [0, 1])
def test_trajectory_schedule(eta):
    schedule = trajectory_schedule(eta)
    # The trajectory stores timesteps in sampling order and sigmas by index.
    np.testing.assert_array_equal(schedule.timesteps[::-1], TRAJ[f"eta{eta}_timesteps"])
    check_schedule_array(f"{COMPONENT}/trajectory_eta{eta}_sigmas", schedule.sigmas, TRAJ[f"eta{eta}_sigmas"])


@pytest.mark.parametrize("eta", [0, 1])
def test_first_step(eta):
    """The first update from the recorded ε of both branches (noise is ignored when σ=0)."""
    schedule = trajectory_schedule(eta)
    x_prev, pred_x0 = ddim.ddim_step(
        TRAJ["x_T"], TRAJ["step0_eps_uncond"], TRAJ["step0_eps_cond"], schedule.steps - 1, schedule,
        float(TRAJ["guidance_scale"]), TRAJ["eta1_noise"][0],
    )
    assert x_prev.dtype == pred_x0.dtype == np.float32
    assert_close(f"{COMPONENT}/step0_pred_x0_eta{eta}", pred_x0, TRAJ["step0_pred_x0"])
    assert_close(f"{COMPONENT}/step0_eta{eta}_x1", x_prev, TRAJ[f"eta{eta}_x"][1])


def test_sample_batches_branches_and_draws_noise_every_step():
    """`sample` with one batched model call per step equals the reference's two
    separate calls, feeds conditions as [uncond; cond], and draws noise at every step."""
    rng = np.random.default_rng(0)
    batch_shape = (batch := 2, 3, 4, 5)
    x_T = rng.standard_normal(batch_shape).astype(np.float32)
    cond = {"film": rng.standard_normal((batch, 6)).astype(np.float32), "hint": rng.standard_normal(batch_shape).astype(np.float32)}
    uncond = {"film": rng.standard_normal((batch, 6)).astype(np.float32), "hint": np.zeros(batch_shape, np.float32)}

    def eps_of(x, t, film, hint):  # per-item, so batching cannot change it
        return np.tanh(x + hint) * film.mean(-1)[:, None, None, None] + t[:, None, None, None] / C.TRAIN_STEPS

    calls = []

    def model(x, t, conditions):
        calls.append(len(x))
        assert t.dtype == np.int64 and t.shape == (len(x),)
        return eps_of(x, t, conditions["film"], conditions["hint"])

    noises = rng.standard_normal((4, *batch_shape)).astype(np.float32)
    drawn = []

    def noise_source(step, shp):
        drawn.append((step, shp))
        return noises[step]

    for eta in (0.0, 1.0):
        schedule = ddim.make_schedule(len(noises), eta)
        calls.clear()
        drawn.clear()
        seen = []
        out = ddim.sample(model, x_T, cond, uncond, schedule, 3.0, noise_source, lambda s, x, x0: seen.append(s))

        x = x_T
        for step, i in enumerate(reversed(range(schedule.steps))):
            t = np.full(batch, schedule.timesteps[i])
            e_u = eps_of(x, t, uncond["film"], uncond["hint"])
            e_c = eps_of(x, t, cond["film"], cond["hint"])
            x, _ = ddim.ddim_step(x, e_u, e_c, i, schedule, 3.0, noises[step])
        np.testing.assert_array_equal(out, x)
        assert calls == [2 * batch] * schedule.steps
        assert drawn == [(s, batch_shape) for s in range(schedule.steps)]
        assert seen == list(range(schedule.steps))
