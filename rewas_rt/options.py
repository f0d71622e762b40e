"""Every user-settable option in one table: type, range, default, help and message.

The CLI (argparse ``type=``), the HTTP service (multipart form fields, and the
OpenAPI schema it publishes) and the Python API (``GenerationOptions``) all go
through ``OPTIONS``, so a value is accepted or refused the same way everywhere,
with the same one-line message (``OptionError``).

Ranges are chosen so that every accepted value gives a finite result:

* ``steps``: 1…500 and runnable by the original's uniform DDIM schedule
  (``rewas_rt.ddim.check_steps``: e.g. 3 or 300 are refused naming 2/4 and
  250/334). A count that does not divide 1000 runs as many steps as the original
  does (7 runs 8).
* ``eta`` ∈ [0, 1]: above 1, DDIM's σ exceeds √(1 − ᾱ_prev) at late steps and the
  update takes the square root of a negative number.
* ``sampler``: one of ``rewas_rt.samplers.SAMPLERS``; ``guidance_interval_low/high``: the
  noise levels σ = sqrt((1 − ᾱ)/ᾱ) in (low, high] where guidance applies, 0 ≤ low < high
  (σ runs from 0.055 at t = 1 to about 81 at t = 999); ``int8``: comma-separated graph names.
* ``guidance`` ∈ [0, 30], energy edits within ±20 log-mel units (the model's
  curves live in about [−11.5, 3]); a seed is 0 … 2⁶³−1 (numpy's seed sequence
  takes no negative numbers; JSON clients keep 64-bit integers).

Non-finite numbers, booleans given for numbers, fractional step counts and
strings that are not numbers are refused. Values come in as Python objects or as
strings (command line, form fields).
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

from rewas_rt import constants as C
from rewas_rt.ddim import check_steps
from rewas_rt.energy_control import EnergyEdit
from rewas_rt.errors import InputError
from rewas_rt.graphs import graph_names
from rewas_rt.samplers import SAMPLERS
from rewas_rt.windows import WindowOptions

MAX_SEED = 2**63 - 1
MAX_CANDIDATES = 16
ENERGY_LIMIT = 20.0  # |offset|, |clip| bounds, in the model's log-mel units
MAX_SIGMA = 1e4  # guidance interval bounds; the schedule's σ stays below 100
MAX_START = 24 * 3600.0  # a window starting later than a day into a file is a typo
_INT = re.compile(r"[+-]?\d{1,30}")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


class OptionError(InputError):
    """An option value out of its type or range (one line, names the option)."""


def _show(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 40 else text[:37] + "..."


def _fmt(x: float) -> str:
    return f"{x:g}"


@dataclasses.dataclass(frozen=True)
class Option:
    """One option: ``name`` is the Python/HTTP field name, ``flag`` the CLI one."""

    name: str
    kind: type  # int, float, bool or str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], None] | None = None  # extra rule; raises ValueError with a message
    nullable: bool = False  # None (or an empty form field) means "not given"
    none_word: str | None = None  # a word that also means None (``duration``: "full")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        alt = f" or {self.none_word}" if self.none_word else ""
        if self.kind is int:
            return f"an integer in {int(self.low)}..{int(self.high)}{alt}"
        if self.kind is float:
            return f"a finite number in [{_fmt(self.low)}, {_fmt(self.high)}]{alt}"
        if self.kind is bool:
            return "true or false"
        if self.choices:
            return "one of " + ", ".join(self.choices)
        return "text"

    def fail(self, raw: Any) -> OptionError:
        return OptionError(f"{self.name} must be {self.describe()}, got {_show(raw)}")

    def parse(self, raw: Any) -> Any:
        """The validated value of ``raw`` (a Python value or a string), or OptionError."""
        if self.none_word and isinstance(raw, str) and raw.strip().lower() == self.none_word:
            return None
        if raw is None or (isinstance(raw, str) and not raw.strip() and self.nullable):
            if self.nullable:
                return None
            raise self.fail(raw)
        if self.kind is int:
            value = self._int(raw)
        elif self.kind is float:
            value = self._float(raw)
        elif self.kind is bool:
            value = self._bool(raw)
        else:
            if not isinstance(raw, str):
                raise self.fail(raw)
            value = raw
            if self.choices and value not in self.choices:
                raise self.fail(raw)
        if self.low is not None and not self.low <= value <= self.high:
            raise self.fail(raw)
        if self.check is not None:
            try:
                self.check(value)
            except ValueError as e:
                raise OptionError(f"{self.name}: {e}") from None
        return value

    def _int(self, raw: Any) -> int:
        if isinstance(raw, bool):
            raise self.fail(raw)
        if isinstance(raw, str):
            if not _INT.fullmatch(raw.strip()):
                raise self.fail(raw)
            return int(raw.strip())
        if isinstance(raw, int) or type(raw).__name__.startswith(("int", "uint")):  # numpy integers too
            return int(raw)
        raise self.fail(raw)

    def _float(self, raw: Any) -> float:
        if isinstance(raw, bool):
            raise self.fail(raw)
        if isinstance(raw, str):
            try:
                value = float(raw.strip())
            except ValueError:
                raise self.fail(raw) from None
        elif isinstance(raw, (int, float)) or type(raw).__name__.startswith(("float", "int")):
            try:
                value = float(raw)
            except (OverflowError, TypeError, ValueError):
                raise self.fail(raw) from None
        else:
            raise self.fail(raw)
        if not math.isfinite(value):
            raise self.fail(raw)
        return value

    def _bool(self, raw: Any) -> bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise self.fail(raw)

    def arg_type(self, label: str | None = None) -> Callable[[str], Any]:
        """An argparse ``type=``: the parsed value, or ArgumentTypeError with the message
        (naming the option ``label`` instead, e.g. for both values of ``--energy-clip``)."""
        import argparse

        def convert(text: str) -> Any:
            try:
                return self.parse(text)
            except OptionError as e:
                msg = str(e) if label is None else str(e).replace(self.name, label, 1)
                raise argparse.ArgumentTypeError(msg) from None

        convert.__name__ = self.name  # argparse names the type in some messages
        return convert

    def json_schema(self) -> dict:
        """The OpenAPI/JSON-Schema of the field (numbers as numbers; form fields are sent as text)."""
        kind = {int: "integer", float: "number", bool: "boolean", str: "string"}[self.kind]
        schema: dict[str, Any] = {"type": kind, "description": self.help}
        if self.low is not None:
            schema |= {"minimum": self.low, "maximum": self.high}
        if self.choices:
            schema["enum"] = list(self.choices)
        if self.default is not None:
            schema["default"] = self.default
        if self.none_word:  # a number, or the word (the default when the default is None)
            number = {k: schema.pop(k) for k in ("type", "minimum", "maximum") if k in schema}
            schema["anyOf"] = [number, {"type": "string", "enum": [self.none_word]}]
            schema.setdefault("default", self.none_word)
        return schema


def _check_steps(steps: int) -> None:
    check_steps(steps)


def int8_graphs(text: str | None) -> list[str]:
    """The graph names of a validated ``int8`` value (None or empty: none)."""
    if not text:
        return []
    parse("int8", text)
    return graph_names(text)


_OPTIONS = [
    Option("steps", int, C.DDIM_STEPS, f"DDIM steps (default {C.DDIM_STEPS}); counts the original's uniform "
           "schedule cannot run are refused naming the nearest ones", 1, C.TRAIN_STEPS // 2, check=_check_steps),
    Option("sampler", str, "ddim", "ddim (the original), dpmpp-2m or dpmpp-2m-sde (CLI default: the engine "
           "directory's recommendation; DDIM for the released model)", choices=SAMPLERS),
    Option("guidance", float, C.GUIDANCE, f"classifier-free guidance scale (default {C.GUIDANCE:g})", 0.0, 30.0),
    Option("guidance_interval_low", float, None, "guidance only at noise levels sigma = sqrt((1-abar)/abar) "
           "above this (with guidance_interval_high; default: guidance everywhere)", 0.0, MAX_SIGMA, nullable=True),
    Option("guidance_interval_high", float, None, "guidance only at noise levels sigma up to this "
           "(with guidance_interval_low)", 0.0, MAX_SIGMA, nullable=True),
    Option("eta", float, C.ETA, f"DDIM eta: 0 deterministic, 1 the original's (default {C.ETA:g})", 0.0, 1.0),
    Option("candidates", int, 1, "candidates to generate, each from its own seeded noise", 1, MAX_CANDIDATES),
    Option("seed", int, None, "random seed (default: random, reported)", 0, MAX_SEED, nullable=True),
    Option("start", float, 0.0, "start of the clip in seconds (default 0)", 0.0, MAX_START),
    Option("duration", float, None, "length of the clip in seconds from start (default full: to the end of the "
           "video, in 5.12 s windows joined without seams; 5.12 = one model window)", 1 / C.FPS, MAX_START,
           nullable=True, none_word="full"),
    Option("hint_mean", bool, False, "use the hint posterior's mean (the original samples it)"),
    Option("energy_scale", float, 1.0, "stretch the energy curve around its mean (0 = flat)", 0.0, 10.0),
    Option("energy_offset", float, 0.0, "add to the energy curve (+1 ≈ +8.7 dB)", -ENERGY_LIMIT, ENERGY_LIMIT),
    Option("energy_clip_min", float, None, "clip the energy curve below", -ENERGY_LIMIT, ENERGY_LIMIT,
           nullable=True),
    Option("energy_clip_max", float, None, "clip the energy curve above", -ENERGY_LIMIT, ENERGY_LIMIT,
           nullable=True),
    Option("threads", int, None, "ONNX Runtime CPU threads (default: physical cores)", 1, 1024, nullable=True),
    Option("int8", str, None, "run these graphs' INT8 variants, comma-separated (e.g. synchformer; CPU backend; "
           "built with build_engines --int8; faster, not bit-exact: see benchmarks/README.md)",
           check=graph_names, nullable=True),
]
OPTIONS: dict[str, Option] = {o.name: o for o in _OPTIONS}


def parse(name: str, raw: Any) -> Any:
    return OPTIONS[name].parse(raw)


def guidance_interval(low: Any = None, high: Any = None) -> tuple[float, float] | None:
    """A validated (σ_lo, σ_hi) with 0 <= σ_lo < σ_hi, or None when neither is given."""
    lo, hi = parse("guidance_interval_low", low), parse("guidance_interval_high", high)
    if lo is None and hi is None:
        return None
    if lo is None or hi is None or not lo < hi:
        raise OptionError(f"guidance interval needs 0 <= sigma_lo < sigma_hi, got ({_show(low)}, {_show(high)})")
    return lo, hi


def sampling_settings(given: dict[str, Any], recommended: dict[str, Any] | None = None) -> dict[str, Any]:
    """sampler, steps, guidance, eta and guidance_interval of a request: the ``given`` values (None =
    not given; already validated), else the engine directory's ``recommended`` sampling
    (``EngineDirectory.recommended``: its manifest's scheduler section; None: the original's DDIM
    200 / 3 / 1). Another sampler than the recommended one gets its own default step count and no
    recommended guidance interval. The CLI and the HTTP service both resolve their defaults here."""
    from rewas_rt.samplers import DEFAULT_STEPS

    rec = recommended or {"sampler": "ddim", "steps": C.DDIM_STEPS, "guidance": C.GUIDANCE, "eta": C.ETA,
                          "guidance_interval": None}
    sampler = given.get("sampler") or rec["sampler"]
    steps = given.get("steps")
    if steps is None:
        steps = rec["steps"] if sampler == rec["sampler"] else DEFAULT_STEPS[sampler]
    interval = given.get("guidance_interval")
    if interval is None and given.get("sampler") is None and rec.get("guidance_interval"):
        interval = rec["guidance_interval"]
    out = {"sampler": sampler, "steps": steps, "guidance_interval": tuple(interval) if interval else None}
    for name in ("guidance", "eta"):
        out[name] = given[name] if given.get(name) is not None else rec.get(name, OPTIONS[name].default)
    return out


def energy_edit(scale: Any = 1.0, offset: Any = 0.0, clip_min: Any = None, clip_max: Any = None) -> EnergyEdit:
    """A validated EnergyEdit (each value range-checked; clip_min ≤ clip_max)."""
    edit = EnergyEdit(parse("energy_scale", scale), parse("energy_offset", offset),
                      parse("energy_clip_min", clip_min), parse("energy_clip_max", clip_max))
    if edit.clip_min is not None and edit.clip_max is not None and edit.clip_min > edit.clip_max:
        raise OptionError(f"energy clip: min {edit.clip_min:g} is above max {edit.clip_max:g}")
    return edit


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """How to sample; validated on construction (OptionError names the field)."""

    steps: int = C.DDIM_STEPS
    guidance: float = C.GUIDANCE
    eta: float = C.ETA
    candidates: int = 1
    hint_from_mean: bool = False  # the original samples the hint posterior
    energy_edit: EnergyEdit = EnergyEdit()
    windows: WindowOptions = WindowOptions()  # long clips: overlap, join, limit (rewas_rt/windows.py)
    sampler: str = "ddim"  # one of rewas_rt.samplers.SAMPLERS
    # (σ_lo, σ_hi): classifier-free guidance only at noise levels σ = sqrt((1 − ᾱ)/ᾱ) in that range,
    # single-branch model calls elsewhere (rewas_rt.guidance); None = at every step (the original).
    guidance_interval: tuple[float, float] | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        for name in ("steps", "guidance", "eta", "candidates", "sampler"):
            set_(self, name, parse(name, getattr(self, name)))
        gi = self.guidance_interval
        if gi is not None:
            if isinstance(gi, (str, bytes)) or not hasattr(gi, "__len__") or len(gi) != 2:
                raise OptionError(f"guidance interval must be two numbers (sigma_lo, sigma_hi), got {_show(gi)}")
            set_(self, "guidance_interval", guidance_interval(*gi))
        set_(self, "hint_from_mean", OPTIONS["hint_mean"].parse(self.hint_from_mean))
        e = self.energy_edit
        if not isinstance(e, EnergyEdit):
            raise OptionError(f"energy_edit must be an EnergyEdit, got {_show(e)}")
        set_(self, "energy_edit", energy_edit(e.scale, e.offset, e.clip_min, e.clip_max))

    @property
    def batch_key(self) -> tuple:
        """Requests with equal keys can share one sampling loop (same schedule and guidance)."""
        return (self.steps, self.guidance, self.eta, self.hint_from_mean, self.sampler, self.guidance_interval)
