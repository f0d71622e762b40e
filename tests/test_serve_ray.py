"""`rewas-rt serve` for real: a local Ray cluster on 127.0.0.1 (one per module: it
takes seconds to start and ~2 GB), the Serve deployment with @serve.batch (which
fails in Serve's local testing mode, so this is the real cluster), the tiny
engines. Bounded: ~30 requests, every call with a timeout, SIGTERM at the end.

Checks: 8 concurrent requests all succeed and at least one engine batch holds
more than one request; batched bytes equal the CLI's for the same seed; bad
inputs get their 4xx and the server stays healthy; overload gets 503 +
Retry-After; no upload is left on disk; SIGTERM stops it cleanly (exit 0)."""
from __future__ import annotations

import concurrent.futures
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("ray.serve", reason="the service needs the [serve] extra (ray[serve])")
requests = pytest.importorskip("requests", reason="the tests talk HTTP with requests")

from rewas_rt.cli import main  # noqa: E402
from tests.local_net import free_port  # noqa: E402
from tests.media_files import write_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEY = "ray-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
STEPS = "2"
MAX_QUEUE = 8
START_TIMEOUT = 240


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=6.0)


@pytest.fixture(scope="module")
def server(tiny_engines, tmp_path_factory):
    work = tmp_path_factory.mktemp("serve")
    uploads = work / "uploads"
    uploads.mkdir()
    (work / "key").write_text(KEY + "\n")
    port = free_port()
    log = open(work / "server.log", "w+")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rewas_rt.cli", "serve", "--engines", str(tiny_engines[0]), "--port", str(port),
         "--backend", "onnxruntime-cpu", "--threads", "1", "--num-cpus", "2", "--max-batch", "8",
         "--batch-wait-ms", "500", "--max-queue", str(MAX_QUEUE), "--deadline-s", "150", "--max-upload-mb", "1",
         "--tmp-dir", str(uploads), "--api-key-file", str(work / "key")],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, proc, log)
        yield {"url": url, "proc": proc, "uploads": uploads, "log": log}
    finally:
        stop(proc)
    log.close()


def wait_until_healthy(url, proc, log) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if requests.get(url + "/healthz", timeout=10).ok:
                return
        except requests.RequestException:  # not listening yet, or the proxy has no replica yet
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            pytest.fail(f"rewas-rt serve did not come up:\n{log.read()[-4000:]}")
        time.sleep(1)


def stop(proc) -> None:
    """SIGTERM (the command shuts Serve and Ray down), then the whole process group if needed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of a failed start (its own session: only ours)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def post(url, video: bytes | None, timeout=180, headers=AUTH, files=None, **fields):
    data = {"prompt": "rain", "steps": STEPS, **{k: str(v) for k, v in fields.items()}}
    files = {**({"video": ("clip.mp4", video)} if video is not None else {}), **(files or {})}
    return requests.post(url + "/v1/generate", data=data, files=files, headers=headers, timeout=timeout)


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_healthz_info_metrics(server):
    url = server["url"]
    assert requests.get(url + "/healthz", timeout=10).json()["status"] == "ok"
    info = requests.get(url + "/v1/info", headers=AUTH, timeout=10).json()
    assert info["backend"] == "onnxruntime-cpu" and info["batching"]["max_batch"] == 8
    assert "rewas_queue_capacity 8.0" in requests.get(url + "/metrics", headers=AUTH, timeout=10).text


def test_concurrent_requests_are_batched_and_equal_the_cli(server, clip, tmp_path, capsys):
    url, video = server["url"], clip.read_bytes()
    before = requests.get(url + "/metrics", headers=AUTH, timeout=10).text
    # duration 5: one window each (the 6 s clip would be two, and a whole-video request runs alone)
    jobs = [dict(seed=i, prompt=f"sound {i}", duration=5) for i in range(6)]
    jobs += [dict(seed=40, prompt="rain on a roof", candidates=2, duration=5),
             dict(seed=41, prompt="a bell", format="mp4", duration=5)]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(lambda kw: post(url, video, **kw), jobs))
    for kw, r in zip(jobs, responses):
        assert r.status_code == 200, (kw, r.status_code, r.text)
        assert r.headers["X-Rewas-Seed"] == str(kw["seed"])
    after = requests.get(url + "/metrics", headers=AUTH, timeout=10).text
    calls = metric(after, "rewas_batch_requests_count") - metric(before, "rewas_batch_requests_count")
    served = metric(after, "rewas_batch_requests_sum") - metric(before, "rewas_batch_requests_sum")
    assert served == len(jobs)
    assert calls < len(jobs), "no engine batch held more than one request"
    singles = (metric(after, 'rewas_batch_requests_bucket{le="1.0"}')
               - metric(before, 'rewas_batch_requests_bucket{le="1.0"}'))
    assert singles < calls

    # Same seed through the CLI, alone: the same bytes.
    for kw, r, extra in [(jobs[0], responses[0], []), (jobs[6], responses[6], ["--candidates", "2"])]:
        out = tmp_path / f"cli{kw['seed']}.wav"
        code = main(["infer", str(clip), kw["prompt"], "--engines", server_engines(server), "--steps", STEPS,
                     "--seed", str(kw["seed"]), "-o", str(out), "-q", "--backend", "onnxruntime-cpu",
                     "--duration", "5", *extra])  # the requests' clip: the first 5 s
        assert code == 0, capsys.readouterr().err
        if extra:
            z = zipfile.ZipFile(io.BytesIO(r.content))
            for i in range(2):
                assert z.read(f"candidate-{i}.wav") == out.with_name(f"{out.stem}.{i}.wav").read_bytes()
        else:
            assert r.headers["content-type"] == "audio/wav" and r.content == out.read_bytes()
    assert responses[7].headers["content-type"] == "video/mp4" and b"ftyp" in responses[7].content[:32]


def server_engines(server) -> str:
    cmd = server["proc"].args
    return cmd[cmd.index("--engines") + 1]


def test_bad_inputs_get_4xx_and_the_server_stays_healthy(server, clip):
    url, video = server["url"], clip.read_bytes()
    cases = [
        (post(url, b"plain text, not a video"), 400, "video: not a media file"),
        (post(url, video, prompt="   "), 400, "the prompt is empty"),
        (post(url, None, files={"energy_curve": ("c.csv", b"1\n2\n")}), 400, "missing field 'video'"),
        (requests.post(url + "/v1/generate", files={"video": ("v.mp4", video)}, headers=AUTH, timeout=30), 400,
         "missing field 'prompt'"),
        (post(url, video, steps=300), 400, "nearest valid step counts: 250 or 334"),
        (post(url, video, guidance="nan"), 400, "guidance must be a finite number"),
        (post(url, video, eta=-1), 400, "eta must be"),
        (post(url, video, seed=-5), 400, "seed must be an integer"),
        (post(url, video, candidates=10**6), 400, "candidates must be"),
        (post(url, video, start=1e400), 400, "start must be"),
        (post(url, video, energy_offset="loud"), 400, "energy_offset must be"),
        (post(url, video, files={"energy_curve": ("x.txt", b"1")}), 400, "energy_curve: the file name"),
        (post(url, video + b"\0" * (2**20)), 413, "upload larger than the limit"),
        (post(url, video, headers={}), 401, "API key"),
        (post(url, video, headers={"Authorization": "Bearer nope"}), 401, "API key"),
    ]
    for r, status, fragment in cases:
        assert r.status_code == status, (fragment, r.status_code, r.text)
        assert set(r.json()) == {"error"} and fragment in r.json()["error"], r.text
    assert requests.get(url + "/healthz", timeout=10).json()["status"] == "ok"
    r = post(url, video, seed=1, steps=1)
    assert r.status_code == 200, r.text


def test_overload_gets_503_with_retry_after(server, clip):
    """Fill the queue with uploads that stall mid-body (admitted, counted), then one more."""
    url = server["url"]
    host, port = url.split("//")[1].split(":")
    stalled = []
    try:
        for _ in range(MAX_QUEUE):
            s = socket.create_connection((host, int(port)), timeout=30)
            s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                      b"\r\nContent-Type: multipart/form-data; boundary=B\r\nContent-Length: 100000\r\n\r\n"
                      b"--B\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nrain\r\n")
            stalled.append(s)
        for _ in range(100):  # until the service has admitted them all; meanwhile Ray's router may still
            h = requests.get(url + "/healthz", timeout=10)  # hold them and drop this probe (its own plain 503)
            if h.status_code == 200 and h.json()["queue"] >= MAX_QUEUE:
                break
            time.sleep(0.1)
        r = post(url, clip.read_bytes(), timeout=30)
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) >= 1 and "busy" in r.json()["error"]
    finally:
        for s in stalled:
            s.close()
    for _ in range(100):  # the stalled requests end when their clients go away
        h = requests.get(url + "/healthz", timeout=10)
        if h.status_code == 200 and h.json()["queue"] == 0:
            break
        time.sleep(0.1)
    metrics = requests.get(url + "/metrics", headers=AUTH, timeout=10).text
    assert 'rewas_requests_total{route="generate",status="503"}' in metrics
    assert post(url, clip.read_bytes(), seed=2, steps=1).status_code == 200


def test_no_uploads_remain_and_sigterm_stops_cleanly(server):
    uploads, proc, log = server["uploads"], server["proc"], server["log"]
    for _ in range(50):
        if not any(uploads.iterdir()):
            break
        time.sleep(0.2)
    assert list(uploads.iterdir()) == []
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) == 0
    log.seek(0)
    text = log.read()
    assert f"listening on {server['url']}" in text and "\nstopped" in text, text[-2000:]
