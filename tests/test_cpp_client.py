"""examples/cpp/rewas_client: built with CMake here, run against HTTP servers on 127.0.0.1.

1. Against a recording stand-in server (always): the multipart request it sends (fields,
   file bytes, UTF-8 prompt, API key), the body written atomically, errors from the JSON
   body, Retry-After, non-JSON answers, usage errors, connection failures, exit codes.
2. Against the real service (rewas_rt.serve, issue #10) on the tiny engines: the WAV it
   writes equals `rewas-rt infer`'s for the same seed, and the service's refusals (bad
   option, wrong key) reach the user as one line. Skipped, saying so, only when the
   service module is not in this tree.

Needs cmake, a C++17 compiler, libcurl and nlohmann-json (`.ci/run` installs them on CI,
where their absence fails the test instead of skipping it).
"""
from __future__ import annotations

import email.parser
import email.policy
import http.server
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.local_net import free_port
from tests.media_files import write_video

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "examples" / "cpp"


def _cannot_build(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the C++ client cannot be built on CI: {why} (.ci/run installs what it needs)")
    pytest.skip(f"the C++ client cannot be built here: {why}")


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Path:
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            _cannot_build(f"{tool} is not installed (apt-get install cmake g++)")
    build = tmp_path_factory.mktemp("cpp-build")
    for cmd in (["cmake", "-S", str(SOURCE), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(build)]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        output = proc.stdout + proc.stderr
        for clue, package, debian in (("Could NOT find CURL", "libcurl", "libcurl4-openssl-dev"),
                                      ('"nlohmann_json"', "nlohmann-json", "nlohmann-json3-dev")):
            if proc.returncode != 0 and clue in output:
                _cannot_build(f"CMake finds no {package} (apt-get install {debian})")
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{output}"
    return build / "rewas_client"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=3.0)


def run_client(client: Path, *args, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "REWAS_API_KEY"} | (env or {})
    return subprocess.run([str(client), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# ------------------------------------------------------------------------------ 1. stand-in server


class Recorder(http.server.ThreadingHTTPServer):
    """Records each request (method, path, headers, multipart parts) and answers from ``replies``."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[dict] = []
        self.replies: list[tuple[int, dict, bytes]] = []


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
        parts = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            parts[name] = (part.get_filename(), part.get_payload(decode=True))
        self.server.requests.append({"method": "POST", "path": self.path, "headers": dict(self.headers),
                                     "parts": parts})
        status, headers, content = self.server.replies.pop(0)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/"  # a trailing slash must not matter


def test_request_carries_video_prompt_options_and_key(client, clip, recorder, tmp_path):
    body = b"RIFF....WAVEfmt fake wav bytes"
    recorder.replies.append((200, {"Content-Type": "audio/wav", "X-Rewas-Seed": "42"}, body))
    curve = tmp_path / "curve.csv"
    curve.write_text("energy\n-3\n-2\n")
    (tmp_path / "key").write_text("s3cret\n")
    out = tmp_path / "out.wav"
    prompt = "pluie sur un toit ☔"
    proc = run_client(client, "--url", url(recorder), "--video", clip, "--prompt", prompt, "--out", out,
                      "--steps", "25", "--guidance", "3.5", "--eta", "0", "--seed", "9", "--candidates", "1",
                      "--start", "0.5", "--duration", "full", "--sampler", "dpmpp-2m", "--guidance-interval-low",
                      "0.3", "--guidance-interval-high", "20", "--hint-mean", "--energy-scale", "1.2", "--energy-offset", "-0.5",
                      "--energy-clip-min", "-9", "--energy-clip-max", "1", "--format", "wav",
                      "--energy-curve", curve, "--api-key-file", tmp_path / "key")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == body
    assert "seed 42" in proc.stderr and "audio/wav" in proc.stderr
    assert [p.name for p in tmp_path.iterdir() if ".part" in p.name] == []
    (req,) = recorder.requests
    assert (req["method"], req["path"]) == ("POST", "/v1/generate")
    assert req["headers"]["Authorization"] == "Bearer s3cret"
    parts = req["parts"]
    assert parts["video"] == ("clip.mp4", clip.read_bytes())
    assert parts["energy_curve"] == ("curve.csv", curve.read_bytes())
    assert parts["prompt"][1].decode("utf-8") == prompt
    text = {k: v.decode() for k, (_, v) in parts.items() if k not in ("video", "energy_curve", "prompt")}
    assert text == {"steps": "25", "guidance": "3.5", "eta": "0", "seed": "9", "candidates": "1", "start": "0.5",
                    "duration": "full", "sampler": "dpmpp-2m", "guidance_interval_low": "0.3",
                    "guidance_interval_high": "20", "hint_mean": "true", "energy_scale": "1.2", "energy_offset": "-0.5", "energy_clip_min": "-9",
                    "energy_clip_max": "1", "format": "wav"}


def test_key_from_environment_and_no_key(client, clip, recorder, tmp_path):
    for _ in range(2):
        recorder.replies.append((200, {"Content-Type": "audio/wav"}, b"x"))
    assert run_client(client, "--url", url(recorder), "--video", clip, "--prompt", "rain", "--out",
                      tmp_path / "a.wav", env={"REWAS_API_KEY": "from-env"}).returncode == 0
    assert run_client(client, "--url", url(recorder), "--video", clip, "--prompt", "rain", "--out",
                      tmp_path / "b.wav").returncode == 0
    assert recorder.requests[0]["headers"]["Authorization"] == "Bearer from-env"
    assert "Authorization" not in recorder.requests[1]["headers"]
    assert set(recorder.requests[1]["parts"]) == {"video", "prompt"}


@pytest.mark.parametrize("status, headers, body, expected", [
    (400, {"Content-Type": "application/json"}, b'{"error": "steps must be an integer in 1..500, got \'abc\'"}',
     "error: HTTP 400: steps must be an integer in 1..500, got 'abc'"),
    (401, {"Content-Type": "application/json"}, b'{"error": "missing or wrong API key"}',
     "error: HTTP 401: missing or wrong API key"),
    (503, {"Content-Type": "application/json", "Retry-After": "7"}, b'{"error": "server busy"}',
     "error: HTTP 503: server busy (retry after 7 s)"),
    (502, {"Content-Type": "text/html"}, b"<html>\n<body>Bad Gateway</body></html>",
     "error: HTTP 502: unexpected answer (text/html): <html> <body>Bad Gateway</body></html>"),
    (500, {"Content-Type": "application/json"}, b"", "error: HTTP 500: unexpected answer (application/json): empty body"),
])
def test_service_errors_are_reported_and_nothing_is_written(client, clip, recorder, tmp_path, status, headers, body,
                                                            expected):
    recorder.replies.append((status, headers, body))
    out = tmp_path / "out.wav"
    proc = run_client(client, "--url", url(recorder), "--video", clip, "--prompt", "rain", "--out", out)
    assert proc.returncode == 1
    assert one_error_line(proc) == expected
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, fragment", [
    (["--prompt", "rain", "--out", "o.wav"], "--video is required"),
    (["--video", "CLIP", "--out", "o.wav"], "--prompt is required"),
    (["--video", "CLIP", "--prompt", "rain"], "--out is required"),
    (["--video", "missing.mp4", "--prompt", "rain", "--out", "o.wav"], "cannot read video file missing.mp4"),
    (["--video", "CLIP", "--prompt", "rain", "--out", "o.wav", "--energy-curve", "nope.csv"],
     "cannot read energy curve file nope.csv"),
    (["--video", "CLIP", "--prompt", "rain", "--out", "o.wav", "--stepz", "3"], "unknown argument '--stepz'"),
    (["--video", "CLIP", "--prompt", "rain", "--out", "o.wav", "--steps"], "--steps needs a value"),
    (["--video", "CLIP", "--prompt", "rain", "--out", "o.wav", "--timeout", "0"], "--timeout must be"),
])
def test_usage_errors_send_nothing(client, clip, recorder, tmp_path, args, fragment):
    args = [str(clip) if a == "CLIP" else a for a in args]
    proc = subprocess.run([str(client), "--url", url(recorder), *args], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 2
    assert fragment in one_error_line(proc)
    assert recorder.requests == [] and list(tmp_path.iterdir()) == []


def test_no_server_and_unwritable_output(client, clip, recorder, tmp_path):
    proc = run_client(client, "--url", f"http://127.0.0.1:{free_port()}", "--video", clip, "--prompt", "rain",
                      "--out", tmp_path / "o.wav")
    assert proc.returncode == 3 and "no answer from http://127.0.0.1:" in one_error_line(proc)
    recorder.replies.append((200, {"Content-Type": "audio/wav"}, b"x"))
    proc = run_client(client, "--url", url(recorder), "--video", clip, "--prompt", "rain",
                      "--out", tmp_path / "no" / "o.wav")
    assert proc.returncode == 4 and f"cannot write {tmp_path / 'no' / 'o.wav'}" in one_error_line(proc)


# ------------------------------------------------------------------------------ 2. the real service

SERVICE = "rewas_rt.serve.api"


@pytest.fixture(scope="module")
def service(request, tmp_path_factory):
    """The HTTP service (FastAPI app of rewas_rt.serve.api under uvicorn, no Ray) on 127.0.0.1."""
    if importlib.util.find_spec("rewas_rt.serve") is None or importlib.util.find_spec(SERVICE) is None:
        pytest.skip("the HTTP service (rewas_rt.serve, issue #10) is not in this tree")
    tiny_engines = request.getfixturevalue("tiny_engines")
    tmp = tmp_path_factory.mktemp("service")
    (tmp / "key").write_text("k3y-k3y-k3y-k3y-k3y\n")
    port = free_port()
    code = (
        "import sys, uvicorn\n"
        "from rewas_rt.serve.api import Service, build_fastapi\n"
        "from rewas_rt.serve.settings import ServeSettings\n"
        f"s = ServeSettings(engines={str(tiny_engines[0])!r}, backend='onnxruntime-cpu', threads=1, "
        f"port={port}, api_key='k3y-k3y-k3y-k3y-k3y', max_queue=4, deadline_s=300)\n"
        f"uvicorn.run(build_fastapi(Service(s)), host='127.0.0.1', port={port}, log_level='warning')\n"
    )
    log = open(tmp / "service.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the service did not start:\n{(tmp / 'service.log').read_text()}")
            time.sleep(0.5)
        yield base, tmp / "key"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_against_the_service_equals_infer(client, service, clip, tiny_engines, tmp_path):
    from rewas_rt.cli import main as cli

    base, key = service
    out = tmp_path / "service.wav"
    proc = run_client(client, "--url", base, "--video", clip, "--prompt", "rain on a roof", "--out", out,
                      "--steps", "2", "--seed", "5", "--api-key-file", key)
    assert proc.returncode == 0, proc.stderr
    assert "seed 5" in proc.stderr
    got, sr = sf.read(out, dtype="int16")
    assert sr == 16000 and got.shape == (3 * 16000,)  # cut to the 3 s clip
    ref_path = tmp_path / "infer.wav"
    assert cli(["infer", str(clip), "rain on a roof", "--engines", str(tiny_engines[0]), "--steps", "2", "--seed", "5",
                "--threads", "1", "-o", str(ref_path), "-q"]) == 0
    ref, _ = sf.read(ref_path, dtype="int16")
    np.testing.assert_array_equal(got, ref)


def test_service_refusals_reach_the_user(client, service, clip, tmp_path):
    base, key = service
    out = tmp_path / "o.wav"
    proc = run_client(client, "--url", base, "--video", clip, "--prompt", "rain", "--out", out, "--steps", "abc",
                      "--api-key-file", key)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert line.startswith("error: HTTP 400: ") and "steps" in line, line
    proc = run_client(client, "--url", base, "--video", clip, "--prompt", "rain", "--out", out,
                      env={"REWAS_API_KEY": "wrong"})
    assert proc.returncode == 1 and one_error_line(proc).startswith("error: HTTP 401: ")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    proc = run_client(client, "--url", base, "--video", bad, "--prompt", "rain", "--out", out, "--api-key-file", key)
    assert proc.returncode == 1 and one_error_line(proc).startswith("error: HTTP 400: ")
    assert not out.exists()


def test_the_client_knows_every_service_option():
    """Every form option of the service has a client flag (a new option must be added to kValueOptions)."""
    import re

    api = pytest.importorskip("rewas_rt.serve.api", reason="the service needs the [serve] extra")
    source = (SOURCE / "rewas_client.cpp").read_text()
    table = source[source.index("kValueOptions = {"):source.index("};", source.index("kValueOptions = {"))]
    fields = set(re.findall(r'\{"--[a-z-]+", "([a-z_]+)"\}', table)) | {"hint_mean"}  # hint_mean: a bare flag
    assert set(api.FORM_OPTIONS) <= fields, sorted(set(api.FORM_OPTIONS) - fields)
