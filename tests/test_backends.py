"""rewas_rt.backends: ONNX Runtime engines on tiny ONNX models built here, backend
selection, and the TensorRT engine's bookkeeping (on fakes here; on a real GPU
when TensorRT is installed)."""
from __future__ import annotations

import logging
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rewas_rt import backends
from rewas_rt.backends import BACKEND_NAMES, BackendError, select_backend
from rewas_rt.backends import tensorrt as trt_backend
from rewas_rt.backends.onnxruntime import OnnxRuntimeBackend, physical_cores
from rewas_rt.graphs import GRAPHS, GraphSpec, TensorSpec
from tests import fake_tensorrt as fake

# The toy contract: y = x @ W + b and ids2 = 2 * ids, dynamic batch, an int64 path.
TOY = GraphSpec(
    "toy",
    (TensorSpec("x", "float32", ("batch", 4)), TensorSpec("ids", "int64", ("batch",))),
    (TensorSpec("y", "float32", ("batch", 3)), TensorSpec("ids2", "int64", ("batch",))),
    "test graph",
)


def expected(x, ids):
    return {"y": x @ fake.W + fake.B, "ids2": 2 * ids}


def feeds(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, 4)).astype(np.float32), "ids": rng.integers(0, 999, batch)}


def save(model, path) -> str:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def toy_onnx(tmp_path_factory):
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
        helper.make_node("Mul", ["ids", "two"], ["ids2"]),
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("ids2", TensorProto.INT64, ["batch"])],
        [numpy_helper.from_array(fake.W, "W"), numpy_helper.from_array(fake.B, "b"),
         numpy_helper.from_array(np.array(2, np.int64), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    return save(model, tmp_path_factory.mktemp("toy") / "toy.onnx")


@pytest.fixture(scope="module")
def cpu_engine(toy_onnx):
    with OnnxRuntimeBackend("cpu", threads=1).open("toy", {"onnx": toy_onnx}, TOY) as engine:
        yield engine


# --- ONNX Runtime on the CPU -------------------------------------------------------------------


def test_cpu_engine_named_io_dynamic_batch_and_metadata(cpu_engine):
    assert cpu_engine.name == "toy"
    assert cpu_engine.input_names == ("x", "ids") and cpu_engine.output_names == ("y", "ids2")
    assert cpu_engine.metadata["providers"] == ["CPUExecutionProvider"]
    assert cpu_engine.metadata["device"] == "cpu" and cpu_engine.metadata["threads"] == 1
    for batch in (1, 5, 2):
        f = feeds(batch, seed=batch)
        out = cpu_engine.run(f)
        assert list(out) == ["y", "ids2"]
        assert out["y"].dtype == np.float32 and out["y"].shape == (batch, 3)
        assert out["ids2"].dtype == np.int64
        np.testing.assert_allclose(out["y"], expected(**f)["y"], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(out["ids2"], expected(**f)["ids2"])


def test_cpu_engine_casts_same_kind_dtypes_and_refuses_others(cpu_engine):
    f = feeds(3)
    out = cpu_engine.run({"x": f["x"].astype(np.float64)[:, ::1], "ids": f["ids"].astype(np.int32)})
    np.testing.assert_array_equal(out["ids2"], 2 * f["ids"])
    # Not contiguous: still right.
    wide = np.repeat(f["x"], 2, axis=1)[:, ::2]
    np.testing.assert_allclose(cpu_engine.run({"x": wide, "ids": f["ids"]})["y"], expected(**f)["y"], rtol=1e-6)
    with pytest.raises(BackendError, match=r"graph toy: input ids is float32, expected int64"):
        cpu_engine.run({"x": f["x"], "ids": f["ids"].astype(np.float32)})


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: {"x": f["x"]}, r"inputs missing \['ids'\]; it takes \['x', 'ids'\]"),
        (lambda f: {**f, "z": f["x"]}, r"inputs unexpected \['z'\]"),
        (lambda f: {"X": f["x"], "ids": f["ids"]}, r"inputs missing \['x'\] and unexpected \['X'\]"),
        (lambda f: {**f, "x": f["x"][:, :3]}, r"input x has shape \(3, 3\), expected \(batch, 4\)"),
        (lambda f: {**f, "x": f["x"][None]}, r"input x has shape \(1, 3, 4\), expected \(batch, 4\)"),
        (lambda f: {**f, "ids": f["ids"][:2]}, r"input ids has batch=2 but x has batch=3"),
        (lambda f: {"x": f["x"][:0], "ids": f["ids"][:0]}, r"input x has shape \(0, 4\)"),
    ],
)
def test_bad_feeds_are_one_clear_line(cpu_engine, change, message):
    with pytest.raises(BackendError, match=message) as info:
        cpu_engine.run(change(feeds(3)))
    assert "\n" not in str(info.value)


def test_io_binding_gives_the_same_result(toy_onnx):
    engine = OnnxRuntimeBackend("cpu", io_binding=True).open("toy", {"onnx": toy_onnx}, TOY)
    f = feeds(4)
    out = engine.run(f)
    np.testing.assert_allclose(out["y"], expected(**f)["y"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out["ids2"], expected(**f)["ids2"])


def test_threads_default_to_physical_cores():
    assert OnnxRuntimeBackend("cpu").threads == physical_cores() >= 1
    assert OnnxRuntimeBackend("cpu", threads=3).threads == 3


def test_open_errors(tmp_path, toy_onnx):
    backend = OnnxRuntimeBackend("cpu")
    with pytest.raises(BackendError, match=r"graph toy: onnx file not found: .*nope\.onnx; rebuild with: "
                                           r"python export/build_engines\.py .* --out " + re.escape(str(tmp_path))):
        backend.open("toy", {"onnx": tmp_path / "nope.onnx"}, TOY)
    with pytest.raises(BackendError, match=r"graph toy: no \.onnx file given"):
        backend.open("toy", {"plan": toy_onnx}, TOY)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(BackendError, match=r"graph toy: onnxruntime cannot load .*junk\.onnx: .*; rebuild"):
        backend.open("toy", {"onnx": tmp_path / "junk.onnx"}, TOY)
    renamed = GraphSpec("toy", (TensorSpec("x", "float32", ("batch", 4)), TensorSpec("tokens", "int64", ("batch",))),
                        TOY.outputs, "")
    with pytest.raises(BackendError, match=r"has inputs \['ids', 'x'\], the contract \['tokens', 'x'\]"):
        backend.open("toy", {"onnx": toy_onnx}, renamed)
    retyped = GraphSpec("toy", TOY.inputs, (TOY.outputs[0], TensorSpec("ids2", "int32", ("batch",))), "")
    with pytest.raises(BackendError, match=r"ids2 is int64 in .* but int32 in the contract"):
        backend.open("toy", {"onnx": toy_onnx}, retyped)


def test_real_contract_with_a_reduced_model_dim(tmp_path):
    """phi's contract, resolved for a narrow test model: the model dim is checked at load."""
    spec = GRAPHS["phi"].resolved(feature_dim=16)
    weight = np.linspace(-1, 1, 16, dtype=np.float32).reshape(16, 1)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["energy"])],
        "phi",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 112, 16])],
        [helper.make_tensor_value_info("energy", TensorProto.FLOAT, ["batch", 112, 1])],
        [numpy_helper.from_array(weight, "w")],
    )
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), tmp_path / "phi.onnx")
    engine = OnnxRuntimeBackend("cpu").open("phi", {"onnx": path}, spec)
    features = np.random.default_rng(0).standard_normal((2, 112, 16)).astype(np.float32)
    np.testing.assert_allclose(engine.run({"features": features})["energy"], features @ weight, rtol=1e-5, atol=1e-6)
    with pytest.raises(BackendError, match=r"features has shape \(\?, 112, 16\) in .* but \(batch, 112, 768\) .*"
                                            r"another model config\?\); rebuild with: python export/build_engines\.py"):
        OnnxRuntimeBackend("cpu").open("phi", {"onnx": path}, GRAPHS["phi"].resolved())


# --- selection ---------------------------------------------------------------------------------


def test_auto_selection_takes_the_first_available_and_logs_it(caplog):
    status = backends.backend_status()
    assert status["onnxruntime-cpu"][0], status["onnxruntime-cpu"][1]
    for has_plans in (True, False):
        want = next(n for n in BACKEND_NAMES if status[n][0] and (has_plans or n != "tensorrt"))
        with caplog.at_level(logging.INFO, logger="rewas_rt"):
            assert select_backend(None, has_plans=has_plans).name == want
            assert select_backend("auto", has_plans=has_plans).name == want
        assert f"backend: {want} (automatic" in caplog.text


def test_auto_selection_is_onnxruntime_cpu_without_a_gpu():
    if any(ok for name, (ok, _) in backends.backend_status().items() if name != "onnxruntime-cpu"):
        pytest.skip("a GPU backend is available here")
    assert select_backend(None, has_plans=True).name == "onnxruntime-cpu"


def test_requested_backend_is_used_and_logged(caplog):
    with caplog.at_level(logging.INFO, logger="rewas_rt"):
        backend = select_backend("onnxruntime-cpu", has_plans=True, threads=1)
    assert backend.name == "onnxruntime-cpu" and backend.threads == 1
    assert "backend: onnxruntime-cpu (requested" in caplog.text


def test_unknown_backend_lists_the_names():
    with pytest.raises(BackendError) as info:
        select_backend("tensorrtt", has_plans=True)
    message = str(info.value)
    assert "unknown backend 'tensorrtt'" in message
    assert all(name in message for name in BACKEND_NAMES) and "available here: " in message


def test_unavailable_backend_gives_the_reason():
    unavailable = {n: why for n, (ok, why) in backends.backend_status().items() if not ok}
    if not unavailable:
        pytest.skip("every backend is available here")
    for name, why in unavailable.items():
        with pytest.raises(BackendError, match=f"backend {name} is not available here: ") as info:
            select_backend(name, has_plans=True)
        assert why in str(info.value)


def test_tensorrt_reason_here():
    ok, why = trt_backend.TensorRTBackend().available()
    if ok:
        pytest.skip(f"TensorRT is available: {why}")
    assert "TensorRT" in why or "GPU" in why or "cuda-python" in why


def test_tensorrt_needs_plans():
    with pytest.raises(BackendError, match="tensorrt"):
        select_backend("tensorrt", has_plans=False)


# --- the TensorRT engine's bookkeeping, on fakes -------------------------------------------------


def fake_engine(refuse_capture=False, cuda_graph=True):
    cudart = fake.FakeCudart()
    trt_engine = fake.FakeEngine(cudart, refuse_capture)
    logger = trt_backend._make_logger(fake.FakeTrt)
    engine = trt_backend.TensorRTEngine(TOY, trt_engine, "toy.plan", {}, fake.FakeTrt, cudart, logger,
                                        use_cuda_graph=cuda_graph)
    return engine, trt_engine, cudart


def check(engine, batch, seed):
    f = feeds(batch, seed)
    out = engine.run(f)
    np.testing.assert_allclose(out["y"], expected(**f)["y"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out["ids2"], expected(**f)["ids2"])


def test_fake_tensorrt_warms_up_captures_then_replays():
    engine, trt_engine, cudart = fake_engine()
    assert len(cudart.memory) == 4  # one buffer per I/O tensor, at the profile maximum
    check(engine, 3, seed=1)  # warm-up: plain enqueue
    assert (trt_engine.context.enqueued, cudart.launches) == (1, 0)
    check(engine, 3, seed=2)  # capture, then launch
    check(engine, 3, seed=3)  # replay with new inputs in the same buffers
    assert (trt_engine.context.enqueued, cudart.launches, cudart.live_graphs) == (1, 2, 1)
    check(engine, 5, seed=4)  # new shapes: graph dropped, warm-up again
    assert (trt_engine.context.enqueued, cudart.launches, cudart.live_graphs) == (2, 2, 0)
    check(engine, 5, seed=5)
    assert cudart.launches == 3
    engine.close()
    assert cudart.memory == {} and cudart.live_graphs == 0
    engine.close()  # idempotent


def test_fake_tensorrt_falls_back_when_capture_fails(caplog):
    engine, trt_engine, cudart = fake_engine(refuse_capture=True)
    with caplog.at_level(logging.WARNING, logger="rewas_rt"):
        for seed in range(4):
            check(engine, 2, seed)
    assert "CUDA graph capture failed" in caplog.text
    assert (trt_engine.context.enqueued, cudart.launches) == (4, 0)


def test_fake_tensorrt_without_cuda_graph_always_enqueues():
    engine, trt_engine, cudart = fake_engine(cuda_graph=False)
    for seed in range(3):
        check(engine, 2, seed)
    assert (trt_engine.context.enqueued, cudart.launches) == (3, 0)


def test_fake_tensorrt_checks_the_profile_range():
    engine, _, _ = fake_engine()
    with pytest.raises(BackendError, match=r"input x has shape \(9, 4\), outside the engine's range \(1, 4\) \.\. "
                                           r"\(8, 4\); split the batch"):
        engine.run(feeds(9))
    check(engine, 8, seed=0)


def test_fake_tensorrt_execution_failure_says_why():
    engine, trt_engine, _ = fake_engine(cuda_graph=False)

    def fail(stream):
        engine._logger.log(fake.FakeTrt.ILogger.ERROR, "IExecutionContext::enqueueV3: illegal memory access")
        return False

    trt_engine.context.execute_async_v3 = fail
    with pytest.raises(BackendError, match=r"graph toy: TensorRT execution failed \(IExecutionContext::enqueueV3: "
                                           r"illegal memory access\)"):
        engine.run(feeds(2))


def test_fake_tensorrt_plan_from_another_version_says_rebuild(tmp_path, monkeypatch):
    monkeypatch.setattr(trt_backend, "_imports", lambda: (fake.FakeTrt, fake.FakeCudart()))
    monkeypatch.setattr(trt_backend, "_probe", lambda device_id: (True, "fake", {"gpu": "G", "compute_capability": "9.0"}))
    plan = tmp_path / "toy.plan"
    plan.write_bytes(b"plan")
    backend = trt_backend.TensorRTBackend()
    with pytest.raises(BackendError, match=r"graph toy: TensorRT 10\.99\.0 cannot load .*toy\.plan \(The engine plan "
                                           r"file is not compatible.*got 10\.1\.0, please rebuild\.\); rebuild with: "
                                           r"python export/build_engines\.py .* --out " + re.escape(str(tmp_path))):
        backend.open("toy", {"plan": plan}, TOY)
    with pytest.raises(BackendError, match=r"graph toy: plan file not found"):
        backend.open("toy", {"plan": tmp_path / "missing.plan"}, TOY)


def test_tensorrt_target_names_what_plans_must_match(monkeypatch):
    target = {"version": "10.3.0", "compute_capability": "9.0", "gpu": "G"}
    monkeypatch.setattr(trt_backend, "_probe", lambda device_id: (True, "fake", target))
    assert trt_backend.TensorRTBackend().target() == target  # the keys of manifest.detect_tensorrt()
    monkeypatch.setattr(trt_backend, "_probe", lambda device_id: (False, "no usable CUDA GPU", {}))
    with pytest.raises(BackendError, match="backend tensorrt: no usable CUDA GPU"):
        trt_backend.TensorRTBackend().target()


# --- real GPUs (skipped without one) -------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
@pytest.mark.parametrize("io_binding", [False, True])
def test_onnxruntime_gpu_providers(toy_onnx, tmp_path, device, io_binding):
    backend = OnnxRuntimeBackend(device, cache_dir=tmp_path, io_binding=io_binding)
    ok, why = backend.available()
    if not ok:
        pytest.skip(f"{backend.name}: {why}")
    engine = backend.open("toy", {"onnx": toy_onnx}, TOY)
    assert engine.metadata["providers"][0] == backend.provider
    for batch in (1, 4, 4):
        f = feeds(batch, seed=batch)
        out = engine.run(f)
        np.testing.assert_allclose(out["y"], expected(**f)["y"], rtol=1e-2, atol=1e-2)  # fp16 on TensorRT
        np.testing.assert_array_equal(out["ids2"], expected(**f)["ids2"])


def build_plan(onnx_path: str, plan_path) -> None:
    """Build a TensorRT engine for the toy graph with the profile of its contract."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(open(onnx_path, "rb").read()), [parser.get_error(i) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for t in TOY.inputs:
        profile.set_shape(t.name, *TOY.profile(t))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    plan_path.write_bytes(bytes(plan))


def test_tensorrt_engine_on_a_gpu(toy_onnx, tmp_path):
    backend = trt_backend.TensorRTBackend(cuda_graphs={"toy"})
    ok, why = backend.available()
    if not ok:
        pytest.skip(f"tensorrt: {why}")
    build_plan(toy_onnx, tmp_path / "toy.plan")
    assert set(backend.target()) == {"version", "compute_capability", "gpu"}
    with backend.open("toy", {"plan": tmp_path / "toy.plan"}, TOY) as engine:
        assert engine.metadata["cuda_graph"]
        for batch, seed in ((2, 0), (2, 1), (2, 2), (2, 3), (7, 4), (7, 5), (1, 6)):  # warm-up, capture, replay, ...
            check(engine, batch, seed)
        with pytest.raises(BackendError, match="outside the engine's range"):
            engine.run(feeds(TOY.profile(TOY.inputs[0])[2][0] + 1))
    (tmp_path / "junk.plan").write_bytes(b"junk")
    with pytest.raises(BackendError, match="cannot load .*junk.plan"):
        backend.open("toy", {"plan": tmp_path / "junk.plan"}, TOY)


@pytest.mark.filterwarnings("ignore:Specified provider .* is not in available provider names")
def test_gpu_provider_falling_back_to_cpu_is_an_error(toy_onnx, tmp_path):
    """docs/design.md §9: ORT runs on the CPU when a listed GPU provider cannot start; we refuse instead."""
    for device in ("cuda", "tensorrt"):
        backend = OnnxRuntimeBackend(device, cache_dir=tmp_path)
        if backend.available()[0]:
            continue
        with pytest.raises(BackendError, match=f"graph toy: onnxruntime could not start {backend.provider} and "
                                               "would run on CPUExecutionProvider; choose another --backend"):
            backend.open("toy", {"onnx": toy_onnx}, TOY)


def test_tensorrt_provider_options_cover_the_contract_profile(tmp_path):
    providers = OnnxRuntimeBackend("tensorrt", cache_dir=tmp_path / "cache", fp16=False, device_id=1)._providers(TOY)
    assert [name for name, _ in providers] == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    options = providers[0][1]
    assert (options["trt_profile_min_shapes"], options["trt_profile_opt_shapes"], options["trt_profile_max_shapes"]) == (
        "x:1x4,ids:1", "x:1x4,ids:1", "x:8x4,ids:8"
    )
    assert options["trt_fp16_enable"] == "false" and options["device_id"] == 1 == providers[1][1]["device_id"]
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache") and (tmp_path / "cache").is_dir()
