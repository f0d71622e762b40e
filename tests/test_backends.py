"""rewas_rt.backends: ONNX Runtime engines on tiny ONNX models built here, backend
selection, and the TensorRT engine's bookkeeping (on fakes here; on a real GPU
when TensorRT is installed)."""
from __future__ import annotations

import logging
import re
import threading
import types

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


def fake_engine(refuse_capture=False, cuda_graph=True, device_id=0):
    cudart = fake.FakeCudart()
    cudart.cudaSetDevice(device_id)  # the opening thread's device, as TensorRTBackend.open sets it
    trt_engine = fake.FakeEngine(cudart, refuse_capture)
    logger = trt_backend._make_logger(fake.FakeTrt)
    engine = trt_backend.TensorRTEngine(TOY, trt_engine, "toy.plan", {}, fake.FakeTrt, cudart, logger,
                                        use_cuda_graph=cuda_graph, device_id=device_id)
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
    assert (trt_engine.context.enqueued, cudart.launches, cudart.live_graph_execs) == (1, 2, 1)
    assert cudart.capture_modes == [cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal]
    check(engine, 5, seed=4)  # new shapes: graph dropped, warm-up again
    assert (trt_engine.context.enqueued, cudart.launches, cudart.live_graph_execs) == (2, 2, 0)
    check(engine, 5, seed=5)
    assert cudart.launches == 3
    engine.close()
    assert cudart.memory == {} and cudart.live_graph_execs == 0 and cudart.live_graphs == 0
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
    plan.write_bytes(b"fake-plan:10.1.0:{}")
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
    providers = OnnxRuntimeBackend("tensorrt", cache_dir=tmp_path / "cache", device_id=1)._providers(TOY, cache_key="k1")
    assert [name for name, _ in providers] == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    options = providers[0][1]
    assert (options["trt_profile_min_shapes"], options["trt_profile_opt_shapes"], options["trt_profile_max_shapes"]) == (
        "x:1x4,ids:1", "x:1x4,ids:1", "x:8x4,ids:8"
    )
    assert options["trt_fp16_enable"] == "false" and options["device_id"] == 1 == providers[1][1]["device_id"]
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache" / "k1") and (tmp_path / "cache" / "k1").is_dir()
    assert options["trt_timing_cache_path"] == str(tmp_path / "cache")  # tactic timings are valid across models


# --- issue 15: the review's defects, on the stand-ins ----------------------------------------------


def test_tensorrt_probe_says_why_instead_of_raising_without_a_driver(monkeypatch):
    """cuda-python 12.6.x raises from cudaGetDeviceCount when libcuda.so.1 is missing."""
    from rewas_rt import gpu

    monkeypatch.setattr(gpu, "cuda_imports", lambda: (fake.FakeTrt, fake.FakeCudart(missing_driver=True)))
    trt_backend._probe.cache_clear()  # the one probe: rewas_rt.gpu.probe
    try:
        ok, why = trt_backend.TensorRTBackend().available()
        assert not ok and "CUDA is not usable here" in why and "RuntimeError: Failed to dlopen libcuda.so.1" in why
        status = backends.backend_status()  # the automatic choice and `rewas-rt info` go through here
        assert status["tensorrt"] == (False, why)
        assert select_backend(None, has_plans=True).name != "tensorrt"
    finally:
        trt_backend._probe.cache_clear()


def run_in_thread(fn):
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            result["error"] = e

    t = threading.Thread(target=target, name="request-thread")
    t.start()
    t.join(30)
    if "error" in result:
        raise result["error"]
    return result.get("value")


def test_every_run_and_close_sets_the_device_of_its_thread():
    """The current CUDA device is per thread: an engine opened for GPU 1 must still run on GPU 1
    when a server thread (whose current device is 0) calls it."""
    engine, _, cudart = fake_engine(device_id=1, cuda_graph=False)
    f = feeds(3, seed=1)
    out = run_in_thread(lambda: engine.run(f))
    np.testing.assert_allclose(out["y"], expected(**f)["y"], rtol=1e-6)
    assert ("request-thread", 1) in cudart.set_device_calls
    run_in_thread(engine.close)
    assert cudart.memory == {} and cudart.set_device_calls[-1] == ("request-thread", 1)
    with pytest.raises(BackendError, match="the engine is closed"):
        engine.run(f)


def test_an_invalidated_capture_falls_back_and_leaks_nothing(caplog):
    engine, trt_engine, cudart = fake_engine()
    check(engine, 2, seed=0)  # warm-up
    cudart.invalidate_next_capture = True  # e.g. another thread's unsafe call during a global-mode capture
    with caplog.at_level(logging.WARNING, logger="rewas_rt"):
        check(engine, 2, seed=1)  # the capture fails: run plainly, same result
        check(engine, 2, seed=2)
    assert "cudaStreamEndCapture: operation failed due to a previous error during capture" in caplog.text
    assert cudart.capturing is None and cudart.live_graphs == 0 and cudart.live_graph_execs == 0
    assert (trt_engine.context.enqueued, cudart.launches) == (3, 0)


def test_a_failed_instantiation_destroys_the_captured_graph(caplog):
    engine, trt_engine, cudart = fake_engine()
    cudart.fail_instantiate = True
    with caplog.at_level(logging.WARNING, logger="rewas_rt"):
        for seed in range(3):
            check(engine, 2, seed)
    assert "cudaGraphInstantiate" in caplog.text
    assert cudart.live_graphs == 0 and cudart.live_graph_execs == 0 and cudart.capturing is None


def test_an_exception_during_capture_ends_the_capture(caplog):
    engine, trt_engine, cudart = fake_engine()
    check(engine, 2, seed=0)
    trt_engine.context.raise_under_capture = True
    with pytest.raises(RuntimeError, match="enqueue failed under capture"):
        engine.run(feeds(2, seed=1))
    assert cudart.capturing is None and cudart.live_graphs == 0  # the stream left capture mode
    check(engine, 2, seed=2)  # still usable, now without CUDA graphs
    check(engine, 2, seed=3)
    assert cudart.launches == 0 and len(cudart.capture_modes) == 1


def test_a_plan_of_this_version_loads_and_runs(tmp_path, monkeypatch):
    cudart = fake.FakeCudart()
    trt = fake.make_trt("10.99.0", cudart=cudart)
    monkeypatch.setattr(trt_backend, "_imports", lambda: (trt, cudart))
    monkeypatch.setattr(trt_backend, "_probe", lambda device_id: (True, "fake",
                                                                  {"gpu": "G", "compute_capability": "9.0", "version": "10.99.0"}))
    plan = tmp_path / "toy.plan"
    plan.write_bytes(b"fake-plan:10.99.0:{}")
    info = {"engine": {"precision": "fp16", "typing": "strong"}}
    with trt_backend.TensorRTBackend(cuda_graphs={"toy"}).open("toy", {"plan": plan}, TOY, info=info) as engine:
        assert engine.metadata["precision"] == "fp16 (strongly typed)" and engine.metadata["cuda_graph"]
        for batch, seed in ((2, 0), (2, 1), (2, 2), (5, 3)):
            check(engine, batch, seed)
    assert cudart.memory == {}


TEXT = GraphSpec(
    "text",
    (TensorSpec("input_ids", "int64", ("batch", "text_len")), TensorSpec("attention_mask", "int64", ("batch", "text_len"))),
    (TensorSpec("lengths", "int64", ("batch",)),),
    "clap_text-like",
)


def test_text_len_profile_limits(tmp_path, monkeypatch):
    """The contract's text_len range (2..512) is the engine's: prompts are tokenised unpadded, so a
    new length is a new shape (graph dropped), and lengths outside the profile are one clear error."""
    from rewas_rt.graphs import DYNAMIC_AXES

    assert fake.TEXT_LEN == DYNAMIC_AXES["text_len"]
    cudart = fake.FakeCudart()
    trt = fake.make_trt("11.3.0", cudart=cudart, plan_spec=fake.TEXT)
    monkeypatch.setattr(trt_backend, "_imports", lambda: (trt, cudart))
    monkeypatch.setattr(trt_backend, "_probe", lambda device_id: (True, "fake", {"gpu": "G", "compute_capability": "9.0"}))
    (tmp_path / "text.plan").write_bytes(b"fake-plan:11.3.0:{}")
    engine = trt_backend.TensorRTBackend(cuda_graphs={"text"}).open("text", {"plan": tmp_path / "text.plan"}, TEXT)
    for length in (2, 11, 11, 11, 512):
        ids = np.arange(2 * length, dtype=np.int64).reshape(2, length)
        out = engine.run({"input_ids": ids, "attention_mask": np.ones_like(ids)})
        np.testing.assert_array_equal(out["lengths"], ids.sum(axis=1))
    assert cudart.launches == 2 and cudart.live_graph_execs == 0  # length 11: warm-up, capture+launch, replay; dropped for 512
    for length in (1, 513):
        ids = np.ones((1, length), np.int64)
        with pytest.raises(BackendError, match=rf"input input_ids has shape \(1, {length}\), outside the engine's "
                                               r"range \(1, 2\) \.\. \(8, 512\)"):
            engine.run({"input_ids": ids, "attention_mask": ids})
    engine.close()


def test_tensorrt_dtypes_without_numpy_equivalent_are_named():
    assert trt_backend._dtype_name(fake.FakeTrt, fake.FLOAT) == "float32"
    assert trt_backend._dtype_name(fake.FakeTrt, fake.HALF) == "float16"
    assert trt_backend._dtype_name(fake.FakeTrt, fake.BF16) == "TensorRT DataType.BF16"
    with pytest.raises(BackendError, match=r"y is TensorRT DataType\.BF16 in toy\.plan but float32 in the contract"):
        from rewas_rt.backends.base import check_model_io

        check_model_io(TOY, {"x": ("float32", [None, 4]), "ids": ("int64", [None])},
                       {"y": ("TensorRT DataType.BF16", [None, 3]), "ids2": ("int64", [None])}, source="toy.plan")


def test_automatic_choice_skips_plans_for_another_tensorrt_or_gpu(monkeypatch, caplog):
    from rewas_rt.manifest import plan_mismatch

    target = {"version": "10.8.0", "compute_capability": "8.9", "gpu": "L4"}
    monkeypatch.setattr(trt_backend, "_probe", lambda device_id: (True, "fake TensorRT", target))
    def manifest(version):  # the fields plan_mismatch reads of a typed manifest
        eng = types.SimpleNamespace(tensorrt_version=version, compute_capability="8.9")
        return types.SimpleNamespace(graphs={g: types.SimpleNamespace(engine=eng) for g in GRAPHS})

    m = manifest("10.3.0")
    why = plan_mismatch(m, target)
    assert why == ("the engines were built with TensorRT 10.3.0 for compute capability 8.9, this machine has "
                   "TensorRT 10.8.0 and compute capability 8.9")
    with caplog.at_level(logging.INFO, logger="rewas_rt"):
        chosen = select_backend(None, has_plans=True, plans_for=lambda t: plan_mismatch(m, t))
    assert chosen.name != "tensorrt" and f"tensorrt: {why} (rebuild the engines on this machine" in caplog.text
    m_ok = manifest("10.8.0")
    assert plan_mismatch(m_ok, target) is None
    assert select_backend(None, has_plans=True, plans_for=lambda t: plan_mismatch(m_ok, t)).name == "tensorrt"


# --- ONNX Runtime: precision, engine cache key, explicit-profile fallback ----------------------------


def test_fp16_graph_is_chosen_by_precision(toy_onnx, tmp_path):
    files = {"onnx": toy_onnx, "onnx_fp16": toy_onnx}  # the toy has no float16 variant: the file choice is tested
    assert OnnxRuntimeBackend("cpu").graph_file("toy", files) == (toy_onnx, "fp32")  # auto on the CPU: FP32
    assert OnnxRuntimeBackend("cpu", precision="fp16").graph_file("toy", files) == (toy_onnx, "fp16")
    assert OnnxRuntimeBackend("cuda").graph_file("toy", files)[1] == "fp16"  # auto on a GPU: the FP16 graph
    assert OnnxRuntimeBackend("cuda").graph_file("toy", {"onnx": toy_onnx})[1] == "fp32"
    with pytest.raises(BackendError, match=r"graph toy: the engine directory has no FP16 graph \(toy\.fp16\.onnx\)"):
        OnnxRuntimeBackend("cpu", precision="fp16").graph_file("toy", {"onnx": toy_onnx})
    with pytest.raises(ValueError, match="precision must be one of"):
        OnnxRuntimeBackend("cpu", precision="half")


def test_engine_cache_key_follows_the_weights(toy_onnx, tmp_path):
    from rewas_rt.backends.onnxruntime import _cache_key

    info = {"onnx": {"sha256": "a" * 64}, "external_data": {"sha256": "b" * 64}}
    new_weights = {"onnx": {"sha256": "a" * 64}, "external_data": {"sha256": "c" * 64}}
    assert _cache_key("unet_adapter", "x/unet_adapter.onnx", info) == _cache_key("unet_adapter", "y/unet_adapter.onnx", info)
    assert _cache_key("unet_adapter", "x/unet_adapter.onnx", info) != _cache_key("unet_adapter", "x/unet_adapter.onnx",
                                                                                 new_weights)
    # Without a manifest entry: the file's own content.
    copy = tmp_path / "toy.onnx"
    copy.write_bytes(open(toy_onnx, "rb").read())
    assert _cache_key("toy", toy_onnx, None) == _cache_key("toy", str(copy), None)
    model = onnx.load(str(copy))
    model.graph.initializer[0].raw_data = (np.asarray(fake.W) * 2).tobytes()  # same structure, new weights
    onnx.save(model, str(copy))
    assert _cache_key("toy", toy_onnx, None) != _cache_key("toy", str(copy), None)


class _EPFail(Exception):
    pass


class _FakeOrt:
    """onnxruntime-gpu as far as OnnxRuntimeBackend.open uses it: sessions run on the CPU but report the
    TensorRT provider; explicit profiles fail the way ORT fails for a graph split into several TensorRT
    subgraphs (PR #17007's message)."""

    def __init__(self, refuse_profiles: bool):
        import onnxruntime as real

        self.real = real
        self.refuse_profiles = refuse_profiles
        self.__version__ = real.__version__
        self.SessionOptions = real.SessionOptions
        self.GraphOptimizationLevel = real.GraphOptimizationLevel
        self.capi = types.SimpleNamespace(onnxruntime_pybind11_state=types.SimpleNamespace(EPFail=_EPFail))
        self.calls: list[dict] = []

    def InferenceSession(self, path, sess_options=None, providers=None):  # noqa: N802 - ORT's name
        options = dict(providers[0][1])
        self.calls.append({"path": path, **options})
        if self.refuse_profiles and "trt_profile_min_shapes" in options:
            raise _EPFail("[ONNXRuntimeError] : 11 : EP_FAIL : User needs to provide all the dynamic shape inputs with "
                          "associated profiles if they want to explicitly set profiles through provider options.")
        session = self.real.InferenceSession(path, providers=["CPUExecutionProvider"])
        session.get_providers = lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        return session


@pytest.mark.parametrize("refuse", [False, True])
def test_tensorrt_provider_falls_back_to_implicit_profiles(toy_onnx, tmp_path, monkeypatch, caplog, refuse):
    from rewas_rt.backends import onnxruntime as ortb

    fake_ort = _FakeOrt(refuse_profiles=refuse)
    monkeypatch.setattr(ortb, "_import_ort", lambda: fake_ort)
    with caplog.at_level(logging.WARNING, logger="rewas_rt"):
        engine = OnnxRuntimeBackend("tensorrt", cache_dir=tmp_path).open("toy", {"onnx": toy_onnx}, TOY)
    check(engine, 3, seed=0)
    assert len(fake_ort.calls) == (2 if refuse else 1)
    assert ("falling back to implicit profiles" in caplog.text) == refuse
    assert "trt_profile_min_shapes" not in fake_ort.calls[-1] if refuse else "trt_profile_min_shapes" in fake_ort.calls[0]


def test_tensorrt_provider_fp16_flag_never_overrides_fp32_nodes(toy_onnx, tmp_path, monkeypatch):
    from rewas_rt.backends import onnxruntime as ortb

    fake_ort = _FakeOrt(refuse_profiles=False)
    monkeypatch.setattr(ortb, "_import_ort", lambda: fake_ort)
    backend = OnnxRuntimeBackend("tensorrt", cache_dir=tmp_path)
    sha = {"onnx": {"sha256": "1" * 64}, "external_data": None}
    cases = [  # (files, manifest entry) -> trt_fp16_enable, graph, precision
        ({"onnx": toy_onnx}, {**sha, "fp32_layers": ["/adapter/Cos"]}, "false", "fp32"),
        ({"onnx": toy_onnx}, {**sha, "fp32_layers": []}, "true", "fp16 (whole graph, trt_fp16_enable)"),
        ({"onnx": toy_onnx}, None, "false", "fp32"),  # nothing known about FP32 nodes: stay FP32
        ({"onnx": toy_onnx, "onnx_fp16": toy_onnx}, {**sha, "fp32_layers": ["/adapter/Cos"]}, "false",
         "fp16 graph with FP32 islands"),
    ]
    for files, info, flag, precision in cases:
        engine = backend.open("toy", files, TOY, info=info)
        assert fake_ort.calls[-1]["trt_fp16_enable"] == flag and engine.metadata["precision"] == precision
    assert OnnxRuntimeBackend("tensorrt", precision="fp32", cache_dir=tmp_path).open(
        "toy", {"onnx": toy_onnx}, TOY, info={**sha, "fp32_layers": []}).metadata["precision"] == "fp32"


# --- nvidia-smi fallback ---------------------------------------------------------------------------


def test_nvidia_smi_fallback_honours_cuda_visible_devices(tmp_path, monkeypatch):
    from rewas_rt import gpu

    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\ncase "$1" in\n  --id=0) echo "8.0, NVIDIA A100" ;;\n  --id=1) echo "9.0, NVIDIA H100" ;;\n'
                   '  --id=GPU-abc) echo "8.9, NVIDIA L4" ;;\n  *) exit 6 ;;\nesac\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu._smi(0) == ("8.0", "NVIDIA A100")
    for value, want in (("1", ("9.0", "NVIDIA H100")), ("1,0", ("9.0", "NVIDIA H100")),
                        ("GPU-abc", ("8.9", "NVIDIA L4")), ("", None), ("-1", None), ("7", None)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert gpu._smi(0) == want, value
