"""rewas_rt.options: every option, every kind of bad value, through the Python API
and the CLI — a result or one `error:` line, never a traceback or NaN audio.
(The same table over HTTP: tests/test_serve_api.py.)"""
from __future__ import annotations

import math

import numpy as np
import pytest

from rewas_rt import constants as C
from rewas_rt.cli import main
from rewas_rt.energy_control import EnergyEdit
from rewas_rt.options import OPTIONS, GenerationOptions, OptionError, energy_edit, parse
from rewas_rt.pipeline import GenerationOptions as FromPipeline

NUMERIC = [o for o in OPTIONS.values() if o.kind in (int, float)]


def bad_values(o) -> list:
    """Below/above the range, non-finite, negative, huge, wrong type, fractional ints, junk text."""
    lo, hi = o.low, o.high
    step = 1 if o.kind is int else max(1e-6, 1e-6 * abs(hi))
    vals = [lo - step, hi + step, str(lo - step), str(hi + step), "nan", "inf", "-inf", float("nan"), float("inf"),
            "-1e400", "1e400", "9" * 5000, "-" + "9" * 40, "abc", "", "  ", True, "1,5", [1], None]
    if o.kind is int:
        vals += [1.5, "1.5", "1e3", "0x10", float(lo)]
    return [v for v in vals if not (v is None and o.nullable) and not (isinstance(v, str) and not v.strip()
                                                                            and o.nullable)]


def good_values(o) -> list:
    vals = [o.low, o.high, str(o.low if o.kind is float else int(o.low)), f" {int(o.high) if o.kind is int else o.high} "]
    if o.kind is float:
        vals += [(o.low + o.high) / 2, math.ceil(o.low)]  # an int for a float option
    return vals


@pytest.mark.parametrize("option", NUMERIC, ids=lambda o: o.name)
def test_numeric_option_bad_values_give_one_line_naming_it(option):
    for raw in bad_values(option):
        with pytest.raises(OptionError) as e:
            option.parse(raw)
        msg = str(e.value)
        assert "\n" not in msg and len(msg) < 300 and option.name in msg, (raw, msg)


@pytest.mark.parametrize("option", NUMERIC, ids=lambda o: o.name)
def test_numeric_option_boundaries_accepted(option):
    for raw in good_values(option):
        value = option.parse(raw)
        assert isinstance(value, option.kind) and math.isfinite(value)
        assert option.low <= value <= option.high


def test_bool_and_nullable_options():
    o = OPTIONS["hint_mean"]
    assert [o.parse(v) for v in ("true", "1", "on", "False", "no", True)] == [True, True, True, False, False, True]
    for bad in ("maybe", "", 2, None, "nan"):
        with pytest.raises(OptionError, match="hint_mean"):
            o.parse(bad)
    assert OPTIONS["seed"].parse(None) is None and OPTIONS["seed"].parse("") is None
    assert OPTIONS["seed"].parse(np.int64(7)) == 7


def test_steps_the_schedule_cannot_run_name_the_nearest():
    for steps, near in ((3, "2 or 4"), (300, "250 or 334"), (37, "35 or 38")):
        with pytest.raises(OptionError, match=f"nearest valid step counts: {near}$"):
            parse("steps", steps)
    assert parse("steps", 7) == 7  # runs (8 steps, as the original)


def test_generation_options_validate_on_construction_and_pipeline_reexports():
    assert FromPipeline is GenerationOptions
    assert GenerationOptions(steps=np.int64(5)).steps == 5
    for kwargs, name in [({"steps": 0}, "steps"), ({"guidance": float("nan")}, "guidance"), ({"eta": 1.5}, "eta"),
                         ({"candidates": 0}, "candidates"), ({"hint_from_mean": "yes please"}, "hint_mean"),
                         ({"energy_edit": EnergyEdit(scale=float("inf"))}, "energy_scale"),
                         ({"energy_edit": "loud"}, "energy_edit")]:
        with pytest.raises(OptionError, match=name):
            GenerationOptions(**kwargs)
    with pytest.raises(OptionError, match="min 2 is above max 1"):
        energy_edit(clip_min=2, clip_max=1)
    assert GenerationOptions(steps=4).batch_key == GenerationOptions(steps=4, candidates=3).batch_key
    assert GenerationOptions(steps=4).batch_key != GenerationOptions(steps=4, eta=0.0).batch_key


@pytest.fixture(scope="module")
def pipe(tiny_engines):
    from rewas_rt.pipeline import Pipeline

    return Pipeline(tiny_engines[0], backend="onnxruntime-cpu")


def test_extreme_accepted_values_give_finite_audio(pipe):
    """Every option at the edge of its range at once still samples finite audio."""
    from rewas_rt.pipeline import Request

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (C.FRAMES, C.CROP, C.CROP, 3), dtype=np.uint8)
    for edit, guidance, eta in [(energy_edit(10.0, 20.0, -20.0, 20.0), 30.0, 1.0),
                                (energy_edit(0.0, -20.0), 0.0, 0.0)]:
        opts = GenerationOptions(steps=1, guidance=guidance, eta=eta, energy_edit=edit)
        (res,) = pipe.generate([Request("rain", OPTIONS["seed"].high, frames=frames)], opts)
        assert np.isfinite(res.waveforms).all() and np.abs(res.waveforms).max() <= 1.0


def test_non_finite_engine_output_is_an_error_not_audio(pipe, monkeypatch):
    from rewas_rt.errors import RewasError
    from rewas_rt.pipeline import Request

    monkeypatch.setattr(pipe, "decode", lambda latent: np.full((len(latent), C.WAVE_SAMPLES), np.nan, np.float32))
    curve = np.full(C.MEL_FRAMES, -5.0, np.float32)
    with pytest.raises(RewasError, match="non-finite"):
        pipe.generate([Request("rain", 0, energy=curve)], GenerationOptions(steps=1))


# ---- the CLI: each flag, each bad value -> one `error:` line naming the option, exit 2 ----------

CLI_FLAGS = ["steps", "guidance", "eta", "seed", "candidates", "start", "duration", "threads", "energy_scale",
             "energy_offset"]


@pytest.mark.parametrize("name", CLI_FLAGS)
def test_cli_refuses_each_bad_value_with_one_line(name, tmp_path, capsys):
    o = OPTIONS[name]
    for raw in bad_values(o):
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            continue  # the command line only has text
        code = _run_cli(capsys, tmp_path, f"{o.flag}={raw}")  # --x=VALUE: "-inf" stays a value
        assert code[0] == 2, (raw, code)
        _assert_one_line(code[1], name)
    assert not list(tmp_path.iterdir())


def test_cli_energy_clip_values_and_order(tmp_path, capsys):
    for args, fragment in [(["--energy-clip", "nan", "1"], "energy_clip must be a finite number in [-20, 20]"),
                           (["--energy-clip", "0", "1e9"], "energy_clip must be"),
                           (["--energy-clip", "x", "1"], "energy_clip must be")]:
        code, err = _run_cli(capsys, tmp_path, *args)
        assert code == 2
        _assert_one_line(err, fragment)
    code, err = _run_cli(capsys, tmp_path, "--energy-clip", "2", "1")
    assert code == 1
    _assert_one_line(err, "min 2 is above max 1")


def test_cli_unrunnable_steps_message(tmp_path, capsys):
    code, err = _run_cli(capsys, tmp_path, "--steps", "3")
    assert code == 2
    _assert_one_line(err, "nearest valid step counts: 2 or 4")


def _run_cli(capsys, tmp_path, *extra):
    try:
        code = main(["infer", str(tmp_path / "none.mp4"), "rain", "--engines", str(tmp_path / "e"), "-o",
                     str(tmp_path / "o.wav"), *extra])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _assert_one_line(err: str, *fragments):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], lines[0]


def test_duration_takes_full_or_seconds_everywhere():
    o = OPTIONS["duration"]
    assert [o.parse(v) for v in ("full", " FULL ", "", None, "7.5", 12)] == [None, None, None, None, 7.5, 12.0]
    assert o.json_schema()["default"] == "full" and o.json_schema()["anyOf"][1] == {"type": "string", "enum": ["full"]}
    with pytest.raises(OptionError, match=r"duration must be a finite number in \[0.04, 86400\] or full, got 'half'"):
        o.parse("half")
