"""Golden DDIM trajectories: rewas_rt.ddim.sample driving the PyTorch UNet+adapter.

The reference calls the model twice per step (uncond, then cond); `sample`
batches both branches into one call, so this also proves that batching them
does not change the result (docs/design.md §1).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rewas_rt import ddim
from tests.reference import FORWARD_RTOL, TRAJECTORY_RTOL, assert_close, load_config, load_io, load_weights
from training.models.adapter import AdapterConfig
from training.models.denoiser import Denoiser
from training.models.unet import UNetConfig

COMPONENT = "ddim"
WEIGHTS = "unet_adapter"  # the trajectory was recorded with these weights
TRAJ = load_io(COMPONENT, "trajectory.npz")
CFG = load_config(COMPONENT)


def strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def model():
    cfg = load_config(WEIGHTS)
    denoiser = Denoiser.from_configs(
        UNetConfig.from_reference(cfg["unet"]["params"]),
        AdapterConfig.from_reference(cfg["adapter"]["params"]),
        cfg["control_scales"],
    )
    weights = load_weights(WEIGHTS)
    denoiser.unet.load_state_dict(strip(weights, "model.diffusion_model."), strict=True)
    denoiser.adapter.load_state_dict(strip(weights, "control_model."), strict=True)
    denoiser.float().eval()

    @torch.inference_mode()
    def eps(x, t, conditions):
        as_t = torch.from_numpy
        return denoiser(as_t(x), as_t(t), as_t(conditions["film"]), as_t(conditions["hint"])).numpy()

    return eps


@pytest.mark.parametrize("eta", [0, 1])
def test_trajectory(model, eta):
    steps = int(TRAJ["ddim_steps"])
    schedule = ddim.make_schedule(steps, float(eta), CFG["linear_start"], CFG["linear_end"], CFG["timesteps"])
    hint = TRAJ["hint_latent"]
    cond = {"film": TRAJ["cond_text_emb"][:, 0], "hint": hint}
    uncond = {"film": TRAJ["uncond_text_emb"][:, 0], "hint": np.zeros_like(hint)}  # the original's zero hint
    if eta:
        noise_source = lambda step, shape: TRAJ["eta1_noise"][step]  # noqa: E731
    else:  # σ = 0 everywhere: any noise gives the same trajectory
        rng = np.random.default_rng(0)
        noise_source = lambda step, shape: rng.standard_normal(shape, dtype=np.float32)  # noqa: E731

    xs, pred_x0s = [TRAJ["x_T"]], []

    def record(step, x, pred_x0):
        xs.append(x)
        pred_x0s.append(pred_x0)

    final = ddim.sample(model, TRAJ["x_T"], cond, uncond, schedule, float(TRAJ["guidance_scale"]), noise_source, record)

    ref = TRAJ[f"eta{eta}_x"]
    assert len(xs) == len(ref)
    # The first update depends on one model call only.
    assert_close(f"{COMPONENT}/eta{eta}_step0_pred_x0", pred_x0s[0], TRAJ["step0_pred_x0"], rtol=FORWARD_RTOL)
    for k in range(1, len(ref)):
        assert_close(f"{COMPONENT}/eta{eta}_x[{k}]", xs[k], ref[k], rtol=TRAJECTORY_RTOL)
    assert_close(f"{COMPONENT}/eta{eta}_final_x0", final, TRAJ[f"eta{eta}_final_x0"], rtol=TRAJECTORY_RTOL)
