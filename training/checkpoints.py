"""Released ReWaS checkpoint files -> one canonical safetensors file per component.

The released files (docs/design.md §7) hold the components under different prefixes
and layouts. This module is the one place that knows them: ``ROUTES`` says, per
file, where every key goes (a component, or deliberately nowhere); the rest is
generic. The merge order reproduces the original's load order: the separate
VAE / HiFi-GAN / CLAP files first, then the ReWaS checkpoint on top, so its
tensors win wherever it has them.

Canonical form: ``<out>/<component>.safetensors`` (float32, keys = our module's
``state_dict`` names = the original's names without the file prefix) plus
``<out>/<component>.json`` (config, parameter count, provenance).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from training.models.adapter import Adapter, AdapterConfig
from training.models.clap_text import ClapText, ClapTextConfig
from rewas_rt.atomic import atomic_path
from rewas_rt.errors import RewasError
from training.models import presets
from training.models.config import ModelConfig
from training.models.hifigan import HiFiGAN, HiFiGANConfig, fold_weight_norm, strip_orig_mod
from training.models.phi import Phi, PhiConfig
from training.models.synchformer import SynchformerConfig, SynchformerVideoEncoder
from training.models.unet import UNet, UNetConfig, ema_key_for
from training.models.vae import VAE, VAEConfig

CANONICAL_FORMAT = "rewas-rt-canonical"
CANONICAL_VERSION = 1

REWAS_FILE = "audioldm_m_rewas_vggsound.ckpt"
PHI_FILE = "phi_vggsound.ckpt"
SYNCHFORMER_FILE = "24-01-04T16-39-21.pt"
VAE_FILE = "vae_mel_16k_64bins.ckpt"
HIFIGAN_FILE = "hifigan_16k_64bins.ckpt"
CLAP_FILE = "clap_music_speech_audioset_epoch_15_esc_89.98.pt"


class CheckpointError(RewasError, ValueError):
    """A released or canonical checkpoint does not fit the model; the message names the keys."""


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    config_cls: type[ModelConfig]
    model_cls: type[torch.nn.Module]


COMPONENTS: dict[str, ComponentSpec] = {
    "unet": ComponentSpec(UNetConfig, UNet),
    "adapter": ComponentSpec(AdapterConfig, Adapter),
    "vae": ComponentSpec(VAEConfig, VAE),
    "vocoder": ComponentSpec(HiFiGANConfig, HiFiGAN),
    "clap_text": ComponentSpec(ClapTextConfig, ClapText),
    "synchformer": ComponentSpec(SynchformerConfig, SynchformerVideoEncoder),
    "phi": ComponentSpec(PhiConfig, Phi),
}

# Special routing targets (not components).
IGNORE = None  # present in the release, unused for text+video generation
EMA = "<ema>"  # model_ema.*: flattened names, resolved against the UNet's keys
SCALE_FACTOR = "<scale_factor>"  # VAE latent scale: goes into the VAE config
SCHEDULE = "<schedule>"  # DDPM buffers: checked against the formula, not stored

_SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)


@dataclasses.dataclass(frozen=True)
class FileSpec:
    """How one released file is read: its top-level entry and its routing table.

    A route ``(src_prefix, target, dst_prefix)`` sends key ``src_prefix + rest``
    to ``target`` as ``dst_prefix + rest``; the first matching route wins and a
    key no route matches is an error. ``exact`` routes match the whole key.
    """

    name: str
    entry: str | None
    routes: tuple[tuple[str, str | None, str], ...]
    exact: tuple[tuple[str, str | None], ...] = ()
    rename: Callable[[dict], dict] | None = None


def _strip_module_if_first(sd: dict) -> dict:
    # open_clip's loader: if the first key starts with 'module', every key loses 7 characters.
    if sd and next(iter(sd)).startswith("module"):
        return {k[7:]: v for k, v in sd.items()}
    return sd


_VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")

# Merge order = the original's load order; later files override earlier ones.
FILES: tuple[FileSpec, ...] = (
    FileSpec(HIFIGAN_FILE, "generator", (("", "vocoder", ""),), rename=strip_orig_mod),
    FileSpec(
        VAE_FILE,
        "state_dict",
        tuple((p, "vae", p) for p in _VAE_PARTS) + (("vocoder.", "vocoder", ""), ("loss.", IGNORE, "")),
    ),
    FileSpec(
        CLAP_FILE,
        "state_dict",
        (
            ("text_branch.embeddings.position_ids", IGNORE, ""),  # deleted by the original loader too
            ("text_branch.", "clap_text", "text_branch."),
            ("text_projection.", "clap_text", "text_projection."),
            ("audio_branch.", IGNORE, ""),
            ("audio_projection.", IGNORE, ""),
            ("text_transform.", IGNORE, ""),
            ("audio_transform.", IGNORE, ""),
        ),
        exact=(("logit_scale_a", IGNORE), ("logit_scale_t", IGNORE)),
        rename=_strip_module_if_first,
    ),
    FileSpec(
        SYNCHFORMER_FILE,
        "model",
        (
            ("vfeat_extractor.", "synchformer", ""),
            ("afeat_extractor.", IGNORE, ""),
            ("vproj.", IGNORE, ""),
            ("aproj.", IGNORE, ""),
            ("transformer.", IGNORE, ""),
        ),
    ),
    FileSpec(PHI_FILE, None, (("module.", "phi", ""),)),
    FileSpec(
        REWAS_FILE,
        "state_dict",
        (
            ("model.diffusion_model.", "unet", ""),
            ("model_ema.", EMA, ""),
            ("control_model.", "adapter", ""),
            *(("first_stage_model." + p, "vae", p) for p in _VAE_PARTS),
            ("first_stage_model.vocoder.", "vocoder", ""),
            ("first_stage_model.loss.", IGNORE, ""),
            ("cond_stage_models.0.model.text_branch.embeddings.position_ids", IGNORE, ""),
            ("cond_stage_models.0.model.text_branch.", "clap_text", "text_branch."),
            ("cond_stage_models.0.model.text_projection.", "clap_text", "text_projection."),
            ("cond_stage_models.0.model.", IGNORE, ""),  # CLAP audio tower, transforms, logit scales
            ("cond_stage_models.0.mel_transform.", IGNORE, ""),
        ),
        exact=(("scale_factor", SCALE_FACTOR), ("logvar", IGNORE)) + tuple((b, SCHEDULE) for b in _SCHEDULE_BUFFERS),
    ),
)
FILES_BY_NAME = {f.name: f for f in FILES}


def _route(spec: FileSpec, key: str) -> tuple[str | None, str]:
    for name, target in spec.exact:
        if key == name:
            return target, key
    for src, target, dst in spec.routes:
        if key.startswith(src):
            return target, dst + key[len(src):]
    raise KeyError(key)


def _names(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


@dataclasses.dataclass
class ImportResult:
    state_dicts: dict[str, dict[str, torch.Tensor]]
    sources: dict[str, list[dict]]  # component -> [{"file", "keys"}]
    scale_factor: float | None = None
    used_ema: bool = False
    schedule: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def expected_keys(component: str, config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The canonical keys and shapes of a component, from a model built on the meta device."""
    with torch.device("meta"):
        model = COMPONENTS[component].model_cls(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def route_files(files: Mapping[str, Mapping[str, torch.Tensor]], configs: Mapping[str, ModelConfig]) -> ImportResult:
    """Route the state dicts of released files (by file name) into component state dicts.

    Pure re-keying plus weight-norm folding, so it also runs on meta tensors
    (full-size key checks without the weights).
    """
    unknown = sorted(set(files) - set(FILES_BY_NAME))
    if unknown:
        raise CheckpointError(f"unknown checkpoint file(s): {_names(unknown)}; expected some of {_names(FILES_BY_NAME)}")
    result = ImportResult(state_dicts={}, sources={})
    for spec in FILES:  # fixed merge order, whatever order the caller used
        if spec.name not in files:
            continue
        sd = dict(files[spec.name])
        if spec.rename:
            sd = spec.rename(sd)
        routed: dict[str | None, dict[str, torch.Tensor]] = {}
        unmatched = []
        for key, tensor in sd.items():
            try:
                target, new_key = _route(spec, key)
            except KeyError:
                unmatched.append(key)
                continue
            routed.setdefault(target, {})[new_key] = tensor
        if unmatched:
            raise CheckpointError(f"{spec.name}: unknown keys: {_names(unmatched)}")
        if EMA in routed:
            _resolve_ema(spec.name, routed, configs, result)
        scale = routed.get(SCALE_FACTOR, {}).get("scale_factor")
        if scale is not None and not scale.is_meta:
            result.scale_factor = float(scale.reshape(()))
        result.schedule.update(routed.get(SCHEDULE, {}))
        for component, part in routed.items():
            if component not in COMPONENTS:
                continue
            if component == "vocoder":
                part = fold_weight_norm(part)
            result.state_dicts.setdefault(component, {}).update(part)
            result.sources.setdefault(component, []).append({"file": spec.name, "keys": len(part)})
    return result


def _resolve_ema(file: str, routed: dict, configs: Mapping[str, ModelConfig], result: ImportResult) -> None:
    """Replace the UNet weights by the EMA copy (what the original samples with, inside ema_scope())."""
    ema = routed.pop(EMA)
    scalars = {"decay", "num_updates"}
    unet_keys = expected_keys("unet", configs["unet"])
    found = {}
    for name in unet_keys:
        flat = ema_key_for(name)[len("model_ema."):]
        if flat in ema:
            found[name] = ema.pop(flat)
    leftover = set(ema) - scalars
    if leftover:
        raise CheckpointError(f"{file}: model_ema keys that match no UNet parameter: {_names('model_ema.' + k for k in leftover)}")
    if found and len(found) != len(unet_keys):
        missing = [ema_key_for(k) for k in unet_keys if k not in found]
        raise CheckpointError(f"{file}: incomplete EMA copy of the UNet, missing {_names(missing)}")
    if found:
        routed.setdefault("unet", {}).update(found)
        result.used_ema = True


def check_state_dict(component: str, sd: Mapping[str, torch.Tensor], config: ModelConfig) -> None:
    """Missing, unexpected or mis-shaped keys raise CheckpointError naming them."""
    want = expected_keys(component, config)
    missing = set(want) - set(sd)
    unexpected = set(sd) - set(want)
    misshaped = [f"{k} {tuple(sd[k].shape)} (expected {want[k]})" for k in set(want) & set(sd) if tuple(sd[k].shape) != want[k]]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys: {_names(misshaped)}")
    if problems:
        raise CheckpointError(f"{component}: " + "; ".join(problems))


def check_schedule(schedule: Mapping[str, torch.Tensor]) -> None:
    """The checkpoint's DDPM buffers must be the linear schedule the runtime computes."""
    if not schedule or any(t.is_meta for t in schedule.values()):
        return
    from rewas_rt.ddim import linear_schedule

    betas, alphas_cumprod = linear_schedule()
    for name, ours in (("betas", betas), ("alphas_cumprod", alphas_cumprod)):
        if name in schedule:
            theirs = schedule[name].double().numpy()
            err = float(abs(theirs - ours).max())
            if err > 1e-6 * float(abs(ours).max()):
                raise CheckpointError(f"{REWAS_FILE}: '{name}' differs from the linear schedule (max abs diff {err:.2e})")


def read_released(path: Path, spec: FileSpec, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Load one released file's state dict (memory-mapped when the format allows)."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # noqa: BLE001 - every unpickling failure gets the same advice
        hint = "" if trust_pickle else " (if the file comes from a source you trust, retry with --trust-pickle)"
        raise CheckpointError(f"{path.name}: cannot be read: {str(e).splitlines()[0]}{hint}") from None
    if spec.entry is not None:
        if not isinstance(obj, dict) or spec.entry not in obj:
            raise CheckpointError(f"{path.name}: no top-level entry '{spec.entry}'")
        obj = obj[spec.entry]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path.name}: not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def import_checkpoints(
    src: Path, out: Path, configs: Mapping[str, ModelConfig] | None = None, trust_pickle: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Read every released file found in ``src`` and write the canonical components to ``out``."""
    configs = dict(configs or presets.rewas_m())
    present = {spec.name: src / spec.name for spec in FILES if (src / spec.name).is_file()}
    if not present:
        raise CheckpointError(f"{src}: none of the released files found ({_names(FILES_BY_NAME)})")
    files = {}
    for name, path in present.items():
        log(f"reading {name} ({path.stat().st_size / 2**20:.0f} MiB)")
        files[name] = read_released(path, FILES_BY_NAME[name], trust_pickle)
    result = route_files(files, configs)
    check_schedule(result.schedule)
    if result.scale_factor is not None:
        configs["vae"] = dataclasses.replace(configs["vae"], scale_factor=result.scale_factor)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for component, sd in result.state_dicts.items():
        check_state_dict(component, sd, configs[component])
    for component, sd in result.state_dicts.items():
        meta = {"sources": result.sources[component]}
        if component == "unet":
            meta["ema"] = result.used_ema
        written[component] = save_component(out, component, sd, configs[component], meta)
        log(f"wrote {written[component]} ({sum(t.numel() for t in sd.values()):,} parameters)")
    return written


def save_component(out: Path, component: str, sd: Mapping[str, torch.Tensor], config: ModelConfig, meta: dict | None = None) -> Path:
    """Write ``<component>.safetensors`` (float32) and ``<component>.json``."""
    from safetensors.torch import save_file

    check_state_dict(component, sd, config)
    tensors = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    path = out / f"{component}.safetensors"
    with atomic_path(path) as tmp:
        save_file(tensors, tmp)
    info = {
        "format": CANONICAL_FORMAT,
        "format_version": CANONICAL_VERSION,
        "component": component,
        "config": config.to_dict(),
        "param_count": sum(t.numel() for t in tensors.values()),
        **(meta or {}),
    }
    with atomic_path(out / f"{component}.json") as tmp:
        Path(tmp).write_text(json.dumps(info, indent=1) + "\n")
    return path


def load_config(ckpt_dir: Path, component: str) -> ModelConfig:
    info_path = Path(ckpt_dir) / f"{component}.json"
    if not info_path.is_file():
        raise CheckpointError(f"{info_path}: missing (run `python -m training.import_checkpoints` first)")
    info = json.loads(info_path.read_text())
    if info.get("format") != CANONICAL_FORMAT or info.get("component") != component:
        raise CheckpointError(f"{info_path}: not a canonical '{component}' checkpoint")
    return COMPONENTS[component].config_cls.from_dict(info["config"])


def load_component(ckpt_dir: Path, component: str) -> tuple[torch.nn.Module, ModelConfig]:
    """Build a component from its canonical files, strictly loaded, in eval mode."""
    from safetensors.torch import load_file

    config = load_config(ckpt_dir, component)
    sd = load_file(str(Path(ckpt_dir) / f"{component}.safetensors"))
    check_state_dict(component, sd, config)
    model = COMPONENTS[component].model_cls(config)
    model.load_state_dict(sd, strict=True)
    return model.eval(), config


def _randomized(module, seed: int):
    presets.randomize_(module, seed)
    return module.float().eval()


def random_models(name: str, seed: int = 0) -> dict:
    """Every component of a preset with random weights (deterministic per seed), in eval mode."""
    configs = presets.preset(name)
    return {
        component: _randomized(COMPONENTS[component].model_cls(cfg), presets.component_seed(seed, component))
        for component, cfg in configs.items()
    }
