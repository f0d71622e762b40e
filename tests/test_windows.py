"""Window plans, curve blending, the RePaint overlap constraint and the waveform joins
(rewas_rt/windows.py), without engines: a Gaussian-process noise predictor whose samples are
known smooth curves stands in for the UNet (benchmarks/seams.py)."""
import numpy as np
import pytest

from benchmarks.seams import latent_steps, oracle_windows, seam_report, synth
from rewas_rt import constants as C
from rewas_rt.errors import InputError
from rewas_rt.windows import (FRAME_SAMPLES, WINDOW, WaveJoiner, WindowOptions, fades, join_curves,
                              overlap_constraint, plan_windows, window_curves)


def test_latent_frame_is_one_video_frame():
    assert FRAME_SAMPLES == 640 and WINDOW == 128 and FRAME_SAMPLES * C.FPS == C.SAMPLE_RATE


@pytest.mark.parametrize("frames", [1, 125, 128, 129, 300, 750, 1543, 3000])
def test_plan_covers_the_clip_with_overlaps_at_least_the_minimum(frames):
    plan = plan_windows(frames, 32)
    assert plan.starts[0] == 0
    if frames <= WINDOW:
        assert plan.starts == (0,) and plan.samples == frames * 640
        return
    assert plan.starts[-1] + WINDOW == frames  # the last window ends at the clip's end
    overlaps = [plan.overlap(k) for k in range(1, len(plan))]
    assert min(overlaps) >= 32 and max(overlaps) - min(overlaps) <= 1  # evenly spread
    # each crossfade lies inside its overlap and after the previous one
    joiner = WaveJoiner(plan, 1, WindowOptions().crossfade_samples, "linear")
    regions = [joiner.region(k) for k in range(1, len(plan))]
    for k, (a, b) in enumerate(regions, start=1):
        assert plan.starts[k] * 640 <= a < b <= (plan.starts[k - 1] + WINDOW) * 640
    assert all(r[1] <= q[0] for r, q in zip(regions, regions[1:]))
    fewer = len(plan) - 1  # and no plan with one window less keeps every overlap ≥ 32
    assert fewer == 1 or (frames - WINDOW) / (fewer - 1) > WINDOW - 32


@pytest.mark.parametrize("kw, fragment", [
    ({"overlap": 0.0}, "overlap"), ({"overlap": 3.0}, "overlap"), ({"crossfade": 2.0}, "crossfade"),
    ({"join": "glue"}, "join"), ({"fade": "cubic"}, "fade"), ({"max_duration": float("nan")}, "max-duration"),
    ({"max_duration": -1}, "max-duration")])
def test_window_options_are_validated(kw, fragment):
    with pytest.raises(InputError, match=fragment):
        WindowOptions(**kw)


def test_curves_are_blended_without_steps():
    plan = plan_windows(300, 32)
    curves = np.stack([np.full(C.MEL_FRAMES, float(k)) for k in range(len(plan))])  # a step of 1 per window
    joined = join_curves(curves, plan)
    assert joined.shape == (1200,)
    steps = np.abs(np.diff(joined))
    overlap_mel = min(plan.overlap(k) for k in range(1, len(plan))) * 4
    assert steps.max() <= 1.0 / overlap_mel + 1e-6  # a ramp across the overlap, no step
    assert joined[0] == 0 and joined[-1] == len(plan) - 1
    # Slicing the joined curve gives each window's own curve outside the overlaps.
    sliced = window_curves(joined, plan)
    np.testing.assert_allclose(sliced[1][overlap_mel + 4:C.MEL_FRAMES - overlap_mel - 4], 1.0)


def test_single_window_curve_is_unchanged():
    plan = plan_windows(100, 32)
    curve = np.random.default_rng(0).standard_normal((1, C.MEL_FRAMES)).astype(np.float32)
    np.testing.assert_array_equal(join_curves(curve, plan), curve[0])


def test_fades():
    out, inn = fades(100, "linear")
    np.testing.assert_allclose(out + inn, 1.0, atol=1e-6)
    out, inn = fades(100, "equal-power")
    np.testing.assert_allclose(out**2 + inn**2, 1.0, atol=1e-6)


def test_joiner_reproduces_one_continuous_signal():
    """Windows cut from one signal join back into it exactly (linear fade): no gain error at the joins."""
    plan = plan_windows(400, 32)
    signal = np.random.default_rng(1).standard_normal((2, plan.samples)).astype(np.float32)
    joiner = WaveJoiner(plan, 2, 10240, "linear")
    for k, s in enumerate(plan.starts):
        joiner.add(k, signal[:, s * 640:s * 640 + C.WAVE_SAMPLES])
    np.testing.assert_allclose(joiner.result(), signal, atol=1e-6)
    with pytest.raises(ValueError, match="in order"):
        joiner.add(0, signal[:, :C.WAVE_SAMPLES])


def test_repaint_overlap_continues_the_previous_window():
    """With a model whose samples are known smooth curves, the constrained window takes over from
    the previous one as smoothly as a window goes on inside; independent windows jump."""
    plan = plan_windows(300, 32)
    repaint, independent = WindowOptions(), WindowOptions(join="crossfade")
    lat = oracle_windows(plan, repaint, steps=20, seeds=3)
    for k in range(1, len(plan)):  # equal wherever the constraint holds fully (the crossfade's part)
        shift, hard = plan.starts[k] - plan.starts[k - 1], plan.overlap(k) - repaint.ramp_frames(plan.overlap(k))
        np.testing.assert_array_equal(lat[k][:, :, :hard], lat[k - 1][:, :, shift:shift + hard])
    r = latent_steps(lat, plan, repaint)
    assert r["joins_p99"] < 1.2 * r["inside_p99"] and r["joins_max"] < 2 * r["inside_max"], r
    r = latent_steps(oracle_windows(plan, independent, steps=20, seeds=3), plan, independent)
    assert r["joins_max"] > 3 * r["inside_max"], r  # the check can fail


def test_hard_edge_constraint_leaves_a_larger_step_than_the_ramp():
    plan = plan_windows(300, 32)
    ramp, hard = WindowOptions(), WindowOptions(crossfade=WindowOptions().overlap)
    assert hard.ramp_frames(32) == 0 and ramp.ramp_frames(32) == 16
    steps = {name: latent_steps(oracle_windows(plan, o, steps=20, seeds=4), plan, o)["joins_max"]
             for name, o in (("ramp", ramp), ("hard", hard))}
    assert steps["ramp"] < steps["hard"], steps


def test_seam_check_passes_repaint_and_fails_a_hard_cut():
    plan = plan_windows(500, 32)
    for options, ok in ((WindowOptions(), True), (WindowOptions(join="crossfade", crossfade=1 / 16000), False)):
        joiner = options.joiner(plan, 3)
        for k, lat in enumerate(oracle_windows(plan, options, steps=20, seeds=3)):
            joiner.add(k, synth(lat, plan.starts[k]))
        verdicts = [seam_report(w, plan)["continuous"] for w in joiner.result()]
        assert all(verdicts) if ok else not any(verdicts), (options, verdicts)


def test_constraint_weights_and_levels():
    known = np.ones((1, 1, 8, 1), np.float32)
    c = overlap_constraint(known, lambda sh: np.zeros(sh, np.float32), ramp=4)
    x = c(np.zeros((1, 1, 16, 1), np.float32), 0.25)
    np.testing.assert_allclose(x[0, 0, :, 0], [0.5] * 4 + [0.5 * w for w in (0.875, 0.625, 0.375, 0.125)] + [0] * 8)
    np.testing.assert_array_equal(c(np.zeros((1, 1, 16, 1), np.float32), 1.0)[0, 0, :4, 0], 1.0)


def test_seams_benchmark_publishes_json_and_tables(tmp_path):
    """benchmarks/seams.py (oracle only: no engines) writes NAME.json with the measured methods
    and NAME.md with their table, through benchmarks.report.publish."""
    import json

    from benchmarks.seams import main

    assert main(["--seconds", "8", "--steps", "2", "--seeds", "1", "--out", str(tmp_path), "--name", "s"]) == 0
    results = json.loads((tmp_path / "s.json").read_text())
    md = (tmp_path / "s.md").read_text()
    assert results["args"]["out"] == str(tmp_path) and results["oracle"]["methods"]
    for name in results["oracle"]["methods"]:
        assert f"| {name} |" in md
