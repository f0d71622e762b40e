"""The HTTP API without Ray: rewas_rt.serve.api's FastAPI app under uvicorn on
127.0.0.1 in this process. Every option's bad values over HTTP get 400 with the
CLI's message; the limits (401, 413 by header and by streamed size, 413 by video
duration, 503, 504) answer as documented; no upload is left on disk.
The real Ray Serve deployment is tested in tests/test_serve_ray.py."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service needs the [serve] extra")
uvicorn = pytest.importorskip("uvicorn", reason="the service needs the [serve] extra")
requests = pytest.importorskip("requests", reason="the tests talk HTTP with requests")

from rewas_rt.options import OPTIONS  # noqa: E402
from rewas_rt.serve.api import FORM_OPTIONS, Service, build_fastapi, openapi_json  # noqa: E402
from rewas_rt.serve.settings import ServeSettings  # noqa: E402
from tests.local_net import free_port  # noqa: E402
from tests.media_files import write_video  # noqa: E402
from tests.test_options import bad_values  # noqa: E402

KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tiny_engines, tmp_path_factory):
    uploads = tmp_path_factory.mktemp("uploads")
    settings = ServeSettings(engines=str(tiny_engines[0]), backend="onnxruntime-cpu", api_key=KEY, max_upload_mb=1,
                             max_queue=4, deadline_s=60, tmp_dir=str(uploads))
    service = Service(settings)
    port = free_port()
    config = uvicorn.Config(build_fastapi(service), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(url + "/healthz", timeout=5).ok:
                break
        time.sleep(0.05)
    yield url, service, uploads
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=6.0).read_bytes()


@contextlib.contextmanager
def overridden(service, **changes):
    old = service.settings
    service.settings = dataclasses.replace(old, **changes)
    try:
        yield
    finally:
        service.settings = old


def post(url, clip, data=None, files=None, headers=AUTH, **kw):
    files = {"video": ("clip.mp4", clip), **(files or {})} if clip is not None else (files or {})
    return requests.post(url + "/v1/generate", data={"prompt": "rain", **(data or {})}, files=files or None,
                         headers=headers, timeout=60, **kw)


def assert_error(r, status, *fragments):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert list(body) == ["error"] and "\n" not in body["error"], body
    for f in fragments:
        assert f in body["error"], body["error"]


@pytest.mark.parametrize("name", FORM_OPTIONS)
def test_every_bad_option_value_gets_400_with_the_cli_message(server, clip, name):
    url, _, _ = server
    o = OPTIONS[name]
    values = bad_values(o) if o.kind in (int, float) else ["maybe", "2", "nan"]
    for raw in values:
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool) or (isinstance(raw, str) and len(raw) > 100):
            continue
        with pytest.raises(Exception) as expected:  # the message the CLI prints for this value
            o.parse(str(raw))
        r = post(url, clip, data={name: str(raw)})
        assert_error(r, 400, str(expected.value))


def test_bad_requests(server, clip, tmp_path):
    url, _, _ = server
    assert_error(post(url, b"not a video at all"), 400, "video: not a media file")
    assert_error(post(url, clip, data={"prompt": "  "}), 400, "the prompt is empty")
    assert_error(post(url, None, files={"energy_curve": ("c.csv", b"1\n2\n")}), 400, "missing field 'video'")
    assert_error(requests.post(url + "/v1/generate", files={"video": ("v.mp4", clip)}, headers=AUTH, timeout=30),
                 400, "missing field 'prompt'")
    assert_error(post(url, None, files={"video": (None, b"text")}), 400, "must be sent as a file")
    assert_error(post(url, clip, data={"stepz": "2"}), 400, "unknown field 'stepz'")
    assert_error(post(url, clip, data={"format": "ogg"}), 400, "format must be one of wav, mp4")
    assert_error(post(url, clip, files={"energy_curve": ("../../etc/passwd", b"1\n2\n")}), 400,
                 "energy_curve: the file name must end in .csv or .npy")
    assert_error(post(url, clip, data={"steps": "2"}, files={"energy_curve": ("c.csv", b"a,b\nx,y\n")}), 400,
                 "energy_curve: cannot read an energy curve")
    assert_error(post(url, clip, data={"energy_clip_min": "2", "energy_clip_max": "1"}), 400, "above max")
    assert_error(requests.post(url + "/v1/generate", data=b"prompt=rain", headers={**AUTH, "Content-Type":
                 "application/x-www-form-urlencoded"}, timeout=30), 400, "multipart/form-data")
    assert_error(requests.post(url + "/v1/generate", data=b"--X\r\ngarbage", headers={**AUTH, "Content-Type":
                 "multipart/form-data; boundary=X"}, timeout=30), 400, "malformed multipart")
    body = (b"--B\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nrain\r\n"
            b"--B\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nsnow\r\n--B--\r\n")
    assert_error(requests.post(url + "/v1/generate", data=body, headers={**AUTH, "Content-Type":
                 "multipart/form-data; boundary=B"}, timeout=30), 400, "'prompt' given more than once")
    assert_error(requests.get(url + "/nowhere", timeout=10), 404, "Not Found")
    assert requests.get(url + "/healthz", timeout=10).json()["status"] == "ok"


def test_api_key(server, clip):
    url, _, _ = server
    assert_error(post(url, clip, headers={}), 401, "API key")
    r = post(url, clip, headers={"Authorization": "Bearer " + KEY[:-1] + "x"})
    assert_error(r, 401, "API key")
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert_error(requests.get(url + "/v1/info", timeout=10), 401)
    assert_error(requests.get(url + "/metrics", timeout=10), 401)
    assert requests.get(url + "/healthz", timeout=10).ok  # probes need no key


def test_upload_limits(server, clip):
    url, service, _ = server
    big = clip + b"\0" * (service.settings.max_upload_bytes + 1 - len(clip))
    assert_error(post(url, big), 413, "upload larger than the limit of 1 MiB")  # by Content-Length

    def chunks():  # no Content-Length: refused while streaming, after ~1 MiB
        head = (b"--B\r\nContent-Disposition: form-data; name=\"video\"; filename=\"v.mp4\"\r\n"
                b"Content-Type: video/mp4\r\n\r\n")
        yield head
        for _ in range(40):
            yield b"\0" * 65536
        yield b"\r\n--B--\r\n"

    r = requests.post(url + "/v1/generate", data=chunks(), timeout=60,
                      headers={**AUTH, "Content-Type": "multipart/form-data; boundary=B"})
    assert_error(r, 413, "upload larger")
    with overridden(service, max_video_seconds=3.0):
        assert_error(post(url, clip), 413, "video is 6.0 s long; the limit is 3 s")


def test_deadline_and_queue(server, clip):
    url, service, _ = server

    async def slow(job):
        import asyncio

        await asyncio.sleep(30)

    generate = service.generate
    service.generate = slow
    try:
        with overridden(service, deadline_s=1.0):
            t0 = time.perf_counter()
            assert_error(post(url, clip, data={"steps": "2"}), 504, "deadline of 1 s exceeded")
            assert time.perf_counter() - t0 < 20
        with overridden(service, max_queue=1, deadline_s=3.0):
            results = {}
            t = threading.Thread(target=lambda: results.setdefault("first", post(url, clip)))
            t.start()
            for _ in range(100):  # until the first is admitted
                if service.in_flight:
                    break
                time.sleep(0.05)
            r = post(url, clip)
            assert_error(r, 503, "server busy")
            assert int(r.headers["Retry-After"]) >= 1
            t.join(timeout=30)
            assert results["first"].status_code == 504
    finally:
        service.generate = generate


def test_generates_wav_and_zip_and_nothing_left_on_disk(server, clip):
    url, service, uploads = server
    curve = "\n".join(str(v) for v in np.linspace(-9, -3, 50)).encode()
    r = post(url, clip, data={"steps": "1", "seed": "3"}, files={"energy_curve": ("my curve.csv", curve)})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav" and r.content[:4] == b"RIFF"
    assert r.headers["X-Rewas-Seed"] == "3"
    r = post(url, clip, data={"steps": "1", "seed": "3", "candidates": "2"},
             files={"energy_curve": ("c.csv", curve)})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    import io
    import zipfile

    z = zipfile.ZipFile(io.BytesIO(r.content))
    assert z.namelist() == ["candidate-0.wav", "candidate-1.wav", "result.json"]
    assert json.loads(z.read("result.json"))["seed"] == 3
    info = requests.get(url + "/v1/info", headers=AUTH, timeout=10).json()
    assert info["backend"] == "onnxruntime-cpu" and set(info["engines"]) >= {"unet_adapter", "vocoder"}
    metrics = requests.get(url + "/metrics", headers=AUTH, timeout=10).text
    assert 'rewas_requests_total{route="generate",status="200"}' in metrics
    assert "rewas_stage_seconds_bucket" in metrics and "rewas_queue_depth" in metrics
    time.sleep(0.5)
    assert list(Path(uploads).iterdir()) == []


def test_committed_openapi_is_current():
    committed = (Path(__file__).parents[1] / "rewas_rt" / "serve" / "openapi.json").read_text()
    assert committed == openapi_json(), "regenerate: python -m rewas_rt.serve.api"
    spec = json.loads(committed)
    body = spec["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(body["required"]) == {"video", "prompt"} and set(FORM_OPTIONS) <= set(body["properties"])
    assert body["properties"]["steps"]["maximum"] == OPTIONS["steps"].high
    assert {"/healthz", "/v1/info", "/metrics"} <= set(spec["paths"])


def test_client_file_names_are_never_paths(server, clip):
    url, _, uploads = server
    r = post(url, clip, data={"steps": "1", "seed": "1"}, files={"video": ("../../escaped.mp4", clip)})
    assert r.status_code == 200, r.text
    assert not list(Path(uploads).parent.glob("**/escaped.mp4")) and not list(Path(uploads).iterdir())


@pytest.mark.parametrize("args,fragment", [
    (["--engines", "/nonexistent/engines"], "/nonexistent/engines"),
    (["--api-key-file", "/nonexistent/key"], "cannot read the API key file"),
    (["--max-batch", "99"], "max batch must be in 1..8"),
    (["--port", "70000"], "port must be in 1..65535"),
])
def test_serve_command_refuses_bad_settings_before_starting_ray(args, fragment, tiny_engines, capsys):
    from rewas_rt.cli import main

    code = main(["serve", "--engines", str(tiny_engines[0]), *args])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert fragment in err


def test_whole_videos_over_http_equal_the_cli(server, tmp_path, capsys):
    """duration full (the default) on a 12 s video: 12 s of sound in windows, byte for byte what
    `rewas-rt infer` writes with the same seed and steps; start/duration pick a part; the mp4
    carries the whole track; a start past the end is a 400 with the CLI's message."""
    from rewas_rt import constants as C
    from rewas_rt.cli import main

    url, service, uploads = server
    path = write_video(tmp_path / "long.mp4", seconds=12.0, size=(160, 120))
    video = path.read_bytes()
    r = post(url, video, data={"steps": "1", "seed": "5"})
    assert r.status_code == 200, r.text
    assert r.headers["X-Rewas-Seconds"] == "12"
    out = tmp_path / "cli.wav"
    assert main(["infer", str(path), "rain", "--engines", service.settings.engines, "--steps", "1", "--seed", "5",
                 "-o", str(out), "-q", "--backend", "onnxruntime-cpu"]) == 0, capsys.readouterr().err
    assert r.content == out.read_bytes()
    import io

    import soundfile as sf

    wave, sr = sf.read(io.BytesIO(r.content))
    assert sr == C.SAMPLE_RATE and abs(len(wave) - 12 * C.SAMPLE_RATE) <= C.SAMPLE_RATE // C.FPS

    r = post(url, video, data={"steps": "1", "seed": "5", "start": "2", "duration": "7"})
    assert r.status_code == 200 and r.headers["X-Rewas-Seconds"] == "7"
    assert len(sf.read(io.BytesIO(r.content))[0]) == 7 * C.SAMPLE_RATE
    r = post(url, video, data={"steps": "1", "seed": "5", "duration": "5.12"})  # one window: batchable
    assert r.status_code == 200 and len(sf.read(io.BytesIO(r.content))[0]) == C.WAVE_SAMPLES
    r = post(url, video, data={"steps": "1", "seed": "5", "duration": "full", "format": "mp4"},
             files={"energy_curve": ("c.csv", "\n".join(str(v) for v in np.linspace(-9, -3, 50)).encode())})
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    import av

    with av.open(io.BytesIO(r.content)) as c:
        (audio,) = c.streams.audio
        assert abs(float(audio.duration * audio.time_base) - 12.0) < 0.1
    assert_error(post(url, video, data={"start": "20"}), 400, "start 20 s leaves no video")
    assert_error(post(url, video, data={"duration": "soon"}), 400, "duration must be a finite number", "or full")
    time.sleep(0.5)
    assert list(Path(uploads).iterdir()) == []
