"""Typed trainer configs (training/config.py): shipped configs parse; typos, wrong types and bad
choices are one-line errors naming the key, from a JSON file, from --set and from the CLI."""
from __future__ import annotations

import argparse
import json

import pytest

from rewas_rt.errors import ConfigError
from training import config as TC
from training import trainlib

TRAINERS = {"phi": TC.PhiTrainerConfig, "adapter": TC.AdapterTrainerConfig}


@pytest.mark.parametrize("trainer,preset", [(t, p) for t in TRAINERS for p in ("tiny", "rewas-m")])
def test_shipped_configs_parse(trainer, preset):
    cfg = trainlib.load_config(preset, trainer, TRAINERS[trainer])
    file = json.loads((trainlib.CONFIG_DIR / f"{trainer}_{preset.replace('-', '_')}.json").read_text())
    assert cfg["model"] == file["model"] and cfg["train"]["steps"] == file["train"]["steps"]
    assert cfg["optim"]["lr"] == pytest.approx(file["optim"]["lr"])


def test_defaults_are_the_trainers():
    phi, adapter = TC.defaults(TC.PhiTrainerConfig), TC.defaults(TC.AdapterTrainerConfig)
    assert phi["phi"] == {"attention": "time"} and phi["init"] == "random" and phi["optim"]["lr"] == 1e-4
    assert adapter["adapter"]["cfg_dropout"] == 0.3 and adapter["data"]["latent"] == "sample"
    assert adapter["optim"]["lr"] == 3e-5 and adapter["train"]["batch_size"] == 4
    assert "latent" not in phi["data"]  # a phi config cannot carry the adapter's setting


@pytest.mark.parametrize("override,message", [
    ({"optim": {"lr_": 1e-3}}, "config.optim has unknown key 'lr_'"),
    ({"trian": {"steps": 3}}, "has unknown key 'trian'"),
    ({"train": {"steps": "many"}}, "train.steps is not an integer (str)"),
    ({"train": {"overfit_batch": 1}}, "train.overfit_batch is not true/false (int)"),
    ({"optim": {"schedule": "linear"}}, "optim.schedule 'linear': one of constant, cosine"),
    ({"train": {"precision": "fp8"}}, "train.precision 'fp8'"),
    ({"data": {"latent": "mean"}}, "config.data has unknown key 'latent'"),  # an adapter-only key in a phi config
])
def test_config_file_mistakes_are_named(tmp_path, override, message):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(override))
    with pytest.raises(ConfigError) as e:
        trainlib.load_config(str(path), "phi", TC.PhiTrainerConfig)
    assert message.replace("config.", "") in str(e.value) and str(path) in str(e.value), str(e.value)


def _args(**kw):
    base = dict(config="tiny", set=[], data="m.jsonl", cache_dir=None, steps=None, device=None)
    return argparse.Namespace(**{**base, **kw})


def test_set_overrides_are_checked():
    cfg = trainlib.resolve_config(_args(set=["optim.lr=0.5", "train.steps=7"]), "adapter", TC.AdapterTrainerConfig)
    assert cfg["optim"]["lr"] == 0.5 and cfg["train"]["steps"] == 7 and cfg["data"]["manifest"] == "m.jsonl"
    with pytest.raises(ConfigError, match="optim has unknown key 'lrr'"):
        trainlib.resolve_config(_args(set=["optim.lrr=1"]), "adapter", TC.AdapterTrainerConfig)
    with pytest.raises(ConfigError, match="train.steps must be at least 1"):
        trainlib.resolve_config(_args(steps=0), "adapter", TC.AdapterTrainerConfig)


def test_cli_reports_a_config_typo_as_one_line(tmp_path, capsys):
    from training import train_phi

    path = tmp_path / "typo.json"
    path.write_text(json.dumps({"optim": {"learning_rate": 1e-3}}))
    assert train_phi.main(["--config", str(path), "--random-weights", "--data", "m.jsonl", "--out",
                           str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "'learning_rate'" in err, err
    assert not (tmp_path / "run").exists()
