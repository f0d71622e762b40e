"""A local stand-in for the places the release files come from (127.0.0.1 only).

* ``/hub/<repo>/resolve/<revision>/<file>``: the Hugging Face Hub's file URLs, as
  ``huggingface_hub`` reads them — HEAD with ``X-Repo-Commit`` and an ``ETag`` (git sha1
  for small files; for LFS files a 302 to ``/cdn/<sha256>`` with ``X-Linked-Etag`` /
  ``X-Linked-Size``), ``X-Error-Code`` on 404/401.
* ``/files/<name>``: plain URLs (Synchformer's checkpoint, ``checkpoints.tar``).
* Every GET honours ``Range`` (206 + ``Content-Range``) unless ranges are switched off.

The files are reduced-size stand-ins in the released files' exact key layouts, built from the
reduced reference models (``tests/fixtures/reference``), so the downloaded folder imports
and builds into a working engine directory. Faults for the error tests: a status per path,
a connection cut after N bytes, a pause mid-transfer, a flipped byte.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import tarfile
import threading
import time
from pathlib import Path

import torch

from export import release as R
from tests.test_import_checkpoints import reference_configs, reference_weights, released_files
from training import checkpoints as ck

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CLAP_PREFIX = "cond_stage_models.0.model."


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _tokenizer_files(vocab_size: int) -> dict[str, bytes]:
    """A RoBERTa-style vocab.json + merges.txt with exactly ``vocab_size`` tokens."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    pieces = list("abcdefghijklmnopqrstuvwxyz") + ["Ġ", "Ġd", "do", "og", "Ġdog", "ar", "Ġb", "Ġbar", "ki", "ng"]
    vocab = {t: i for i, t in enumerate(specials)}
    for p in pieces:
        if len(vocab) < vocab_size - 1:
            vocab[p] = len(vocab)
    c = 0
    while len(vocab) < vocab_size - 1:
        vocab[f"x{c}"] = len(vocab)  # filler, never produced by the merges
        c += 1
    vocab["<mask>"] = vocab_size - 1
    merges = "#version: 0.2\nĠ d\nd o\no g\nĠd og\na r\nĠ b\nĠb ar\nk i\nn g\n"
    return {"vocab.json": json.dumps(vocab, ensure_ascii=False).encode(), "merges.txt": merges.encode()}


def standin_configs() -> dict:
    """The reduced reference configs, with φ narrowed to the reduced Synchformer's width
    (the reference φ keeps the full 768, so the reference set alone does not connect)."""
    from training.models.phi import PhiConfig

    configs = reference_configs()
    configs["phi"] = PhiConfig(width=configs["synchformer"].embed_dim, num_heads=4, num_blocks=1,
                               proj_dims=[configs["synchformer"].embed_dim, 16, 1])
    return configs


def _phi_standin(config) -> dict:
    from training.models.phi import Phi

    torch.manual_seed(11)
    return {"module." + k: v for k, v in Phi(config).state_dict().items()}  # nn.DataParallel's prefix


def standin_files() -> dict[str, bytes]:
    """Every release file (by name), reduced, in its released layout."""
    w = reference_weights()
    rel = released_files(w, ema_offset=0.0)
    vae = {k[len("first_stage_model."):]: v for k, v in w["vae"].items() if k.startswith("first_stage_model.")}
    vae["loss.logvar"] = torch.zeros(())
    clap = {"module." + k[len(CLAP_PREFIX):]: v for k, v in w["clap_text"].items()}
    clap["module.text_branch.embeddings.position_ids"] = torch.arange(514)[None]
    clap["module.logit_scale_a"] = torch.tensor(1.0)
    clap["module.logit_scale_t"] = torch.tensor(1.0)
    files = {
        ck.REWAS_FILE: _torch_bytes({"state_dict": rel[ck.REWAS_FILE], "global_step": 1}),
        ck.PHI_FILE: _torch_bytes(_phi_standin(standin_configs()["phi"])),
        ck.SYNCHFORMER_FILE: _torch_bytes({"model": rel[ck.SYNCHFORMER_FILE]}),
        ck.VAE_FILE: _torch_bytes({"state_dict": vae}),
        ck.HIFIGAN_FILE: _torch_bytes({"generator": w["hifigan"]}),
        ck.CLAP_FILE: _torch_bytes({"state_dict": clap, "epoch": 15}),
    }
    files.update(_tokenizer_files(reference_configs()["clap_text"].vocab_size))
    return files


def make_tar(members: dict[str, bytes], prefix: str = "checkpoints/") -> bytes:
    """A tar like AudioLDM-training's: a folder, other checkpoints around the ones used."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        d = tarfile.TarInfo(prefix.rstrip("/"))
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for name, data in members.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()  # noqa: S324


@dataclasses.dataclass
class Served:
    data: bytes
    lfs: bool = False


class ReleaseServer:
    """Serves the stand-ins; ``faults`` and ``ranges`` are changed by tests between requests."""

    def __init__(self, files: dict[str, bytes], tar_members: tuple[str, ...]):
        self.files = dict(files)
        self.tar_members = tar_members
        self.hub: dict[str, Served] = {}  # "<repo>/<file>" -> content
        self.plain: dict[str, bytes] = {}  # "/files/<name>" -> content
        self.cdn: dict[str, bytes] = {}
        self.status: dict[str, int] = {}  # path prefix -> status to answer
        self.cut_after: dict[str, int] = {}  # path -> close the connection after this many body bytes (once)
        self.pause_after: dict[str, tuple[int, float]] = {}  # path -> (bytes, seconds) pause mid-body
        self.ranges = True
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.max_requests = 2000
        self._lock = threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # ---- content

    def publish(self, release: R.Release) -> R.Release:
        """Put every file of ``release`` here; return the release pointing at this server with
        the stand-ins' hashes as the published ones (as the real table records the real ones)."""
        tar_files = {s.path: self.files[s.name] for s in release.sources if s.kind == "tar"}
        extra = {"audiomae_16k_128bins.ckpt": bytes(4 << 20), "hifigan_48k_256bins.json": b"{}"}  # not wanted
        tar = make_tar({**extra, **tar_files})
        self.plain["/files/checkpoints.tar"] = tar
        sources = []
        for s in release.sources:
            data = self.files[s.name]
            if s.kind == "hub":
                self.hub[f"{s.location}/{s.path}"] = Served(data, lfs=s.is_checkpoint)
                sources.append(s)
            elif s.kind == "url":
                self.plain[f"/files/{s.name}"] = data
                md5 = hashlib.md5(data).hexdigest()[:7] if s.md5_prefix else None  # noqa: S324
                sources.append(dataclasses.replace(s, location=f"{self.url}/files/{s.name}", md5_prefix=md5))
            else:
                sources.append(dataclasses.replace(s, location=f"{self.url}/files/checkpoints.tar"))
        archive = dataclasses.replace(release.archive, url=f"{self.url}/files/checkpoints.tar",
                                      md5=hashlib.md5(tar).hexdigest())  # noqa: S324
        return R.Release(tuple(sources), archive)

    @property
    def hub_endpoint(self) -> str:
        return f"{self.url}/hub"

    # ---- serving

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_HEAD(self):
                self._serve(head=True)

            def do_GET(self):
                self._serve(head=False)

            def _send(self, code: int, headers: dict[str, str], body: bytes = b"", head: bool = False):
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head and body:
                    self.wfile.write(body)

            def _serve(self, head: bool):
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.requests.append((self.command, path, self.headers.get("Range")))
                    if len(server.requests) > server.max_requests:
                        self._send(503, {})
                        return
                for prefix, code in server.status.items():
                    if path.startswith(prefix):
                        err = {404: "EntryNotFound", 401: "RepoNotFound"}.get(code)
                        self._send(code, {"X-Error-Code": err} if err and path.startswith("/hub/") else {},
                                   b"{}", head)
                        return
                if path.startswith("/hub/"):
                    self._hub(path[len("/hub/"):], head)
                elif path.startswith("/cdn/") and path[5:] in server.cdn:
                    self._body(path, server.cdn[path[5:]], {"ETag": f'"{path[5:]}"'}, head)
                elif path in server.plain:
                    self._body(path, server.plain[path], {}, head)
                else:
                    self._send(404, {}, b"not found", head)

            def _hub(self, rest: str, head: bool):
                try:
                    repo_a, repo_b, resolve, _rev, file = rest.split("/", 4)
                except ValueError:
                    self._send(404, {"X-Error-Code": "RepoNotFound"}, b"{}", head)
                    return
                served = server.hub.get(f"{repo_a}/{repo_b}/{file}")
                if resolve != "resolve" or served is None:
                    self._send(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, b"{}", head)
                    return
                if served.lfs:
                    sha = hashlib.sha256(served.data).hexdigest()
                    server.cdn.setdefault(sha, served.data)
                    # another host name (same server): huggingface_hub treats it as the CDN and stops there
                    cdn = server.url.replace("127.0.0.1", "localhost")
                    self._send(302, {"Location": f"{cdn}/cdn/{sha}", "X-Repo-Commit": COMMIT,
                                     "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(served.data)),
                                     "ETag": f'"{git_sha1(b"pointer " + sha.encode())}"', "Content-Length": "0"},
                               b"", head)
                    return
                self._body(self.path, served.data, {"X-Repo-Commit": COMMIT, "ETag": f'"{git_sha1(served.data)}"'},
                           head)

            def _body(self, path: str, data: bytes, headers: dict[str, str], head: bool):
                start, end, code = 0, len(data) - 1, 200
                rng = self.headers.get("Range")
                if rng and server.ranges and rng.startswith("bytes="):
                    a, _, b = rng[6:].partition("-")
                    start = int(a or 0)
                    end = min(int(b), len(data) - 1) if b else len(data) - 1
                    if start >= len(data):
                        self._send(416, {"Content-Range": f"bytes */{len(data)}"}, b"", head)
                        return
                    code = 206
                    headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
                body = data[start:end + 1]
                headers = {**headers, "Content-Length": str(len(body)), "Content-Type": "application/octet-stream"}
                if server.ranges:
                    headers["Accept-Ranges"] = "bytes"
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if head:
                    return
                key = path.split("?", 1)[0]
                # a fault hits the first transfer long enough to be hit (not the one-byte size probe)
                cut = server.cut_after.pop(key) if server.cut_after.get(key, len(body)) < len(body) else None
                pause = server.pause_after.pop(key) if server.pause_after.get(key, (len(body),))[0] < len(body) else None
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if pause is not None:
                    n, seconds = pause
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    time.sleep(seconds)
                    body = body[n:]
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def options_for(server: ReleaseServer, cache: Path, **kw) -> R.Options:
    return R.Options(retries=kw.pop("retries", 2), backoff=0.01, timeout=kw.pop("timeout", 10), progress=False,
                     offline=kw.pop("offline", False), hub_endpoint=server.hub_endpoint, hub_cache=cache, **kw)
