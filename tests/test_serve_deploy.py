"""The deployment examples: the serve config and the KubeRay RayService parse, their
Serve config is valid for Ray Serve's own schema, and their args build the
application with the intended resources (they cannot run here: no cluster, no GPU)."""
from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="the [serve] extra brings pyyaml")
pytest.importorskip("ray.serve", reason="the service needs the [serve] extra (ray[serve])")

from ray.serve.schema import ServeDeploySchema  # noqa: E402

from rewas_rt.serve.app import build_app, deployment_options  # noqa: E402
from rewas_rt.serve.settings import ServeSettings, SettingsError  # noqa: E402

DEPLOY = Path(__file__).resolve().parents[1] / "rewas_rt" / "serve" / "deploy"


def check_serve_config(config: dict) -> None:
    ServeDeploySchema.model_validate(config)  # Ray Serve's schema for `serve deploy`
    (app,) = config["applications"]
    assert app["import_path"] == "rewas_rt.serve.app:build_app"
    settings = ServeSettings.from_dict(app["args"])  # every arg is a known, valid setting
    opts = deployment_options(settings)
    assert opts["ray_actor_options"]["num_gpus"] == 1
    assert opts["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}
    assert opts["max_queued_requests"] == settings.max_queue  # bounded, never an unbounded backlog
    assert type(build_app(app["args"])).__name__ == "Application"


def test_serve_config_yaml():
    check_serve_config(yaml.safe_load((DEPLOY / "serve_config.yaml").read_text()))


def test_kuberay_rayservice_yaml():
    doc = yaml.safe_load((DEPLOY / "rayservice.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayService")
    check_serve_config(yaml.safe_load(doc["spec"]["serveConfigV2"]))
    cluster = doc["spec"]["rayClusterConfig"]
    (workers,) = cluster["workerGroupSpecs"]
    (container,) = workers["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    args = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["engines"] in mounts and str(Path(args["api_key_file"]).parent) in mounts
    assert workers["maxReplicas"] >= args["autoscale_max_replicas"]


def test_bad_settings_are_one_line_errors():
    for bad, fragment in [({"max_batch": 99}, "max batch must be in 1..8"), ({"port": 0}, "port"),
                          ({"replicas": 2, "autoscale_max_replicas": 1}, "autoscale"),
                          ({"api_key": "short"}, "at least 16"), ({"unknown": 1}, "unknown service setting")]:
        with pytest.raises(SettingsError, match=fragment):
            ServeSettings.from_dict(bad)
