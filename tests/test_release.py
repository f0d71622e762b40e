"""export/release.py and ``build_engines.py --release`` against a local server (no internet).

The server (tests/release_server.py) serves reduced stand-ins of every release file in the
released key layouts, in the Hub's URL layout, as plain URLs and inside a tar.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from export import release as R
from tests.release_server import ReleaseServer, make_tar, options_for, standin_configs, standin_files
from training import checkpoints as ck

ROOT = Path(__file__).resolve().parents[1]
SYNC = "24-01-04T16-39-21.pt"


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return standin_files()


@pytest.fixture
def server(files):
    with ReleaseServer(files, ()) as srv:
        yield srv


@pytest.fixture
def release(server) -> R.Release:
    return server.publish(R.RELEASE)


TAR_FILES = (ck.VAE_FILE, ck.HIFIGAN_FILE, ck.CLAP_FILE)


def _ensure(server, release, tmp_path, *names: str, **kw):
    """``R.ensure`` into ``tmp_path/rel`` of the files ``names`` (default: all) from ``server``."""
    opts = options_for(server, tmp_path / "hub", **{k: kw.pop(k) for k in ("retries", "offline", "timeout") if k in kw})
    if names:
        release = R.Release(tuple(s for s in release.sources if s.name in names), release.archive)
    return R.ensure(tmp_path / "rel", release=release, opts=opts, configs=standin_configs(),
                    log=kw.pop("log", lambda _: None), **kw)


def _source(release: R.Release, name: str) -> R.Source:
    return next(s for s in release.sources if s.name == name)


def _one_line(e: pytest.ExceptionInfo, *fragments: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


def _no_partial_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".part", ".tmp", ".link")))


# ---- the table ----------------------------------------------------------------------------------

def test_sources_table_covers_every_released_file():
    names = {s.name for s in R.SOURCES}
    assert {f.name for f in ck.FILES} | {"vocab.json", "merges.txt"} == names
    for s in R.SOURCES:
        assert s.kind in ("hub", "url", "tar") and s.licence.name and s.homepage.startswith("https://")
        if s.sha256:
            assert len(s.sha256) == 64
    by_name = {s.name: s for s in R.SOURCES}
    assert by_name[ck.REWAS_FILE].location == by_name[ck.PHI_FILE].location == "lee-j/ReWaS"
    assert by_name[ck.REWAS_FILE].licence.name == "CC BY-NC-SA 4.0" and "Hub" in by_name[ck.REWAS_FILE].licence.note
    assert {by_name[n].kind for n in (ck.VAE_FILE, ck.HIFIGAN_FILE, ck.CLAP_FILE)} == {"tar"}
    assert by_name[ck.VAE_FILE].licence.name == "CC BY-NC 4.0" and by_name[SYNC].licence.name == "MIT"
    assert "zenodo.org/records/14342967" in R.ARCHIVE.url and len(R.ARCHIVE.md5) == 32


# ---- the full flow --------------------------------------------------------------------------------

def test_release_to_a_working_engine_directory(server, release, tmp_path, monkeypatch, capsys):
    """--release: download everything, import, build, verify; a second run is a no-op."""
    from export import build_engines as B
    from export.export_onnx import run_onnx
    from rewas_rt import constants as C
    from rewas_rt import manifest as M

    monkeypatch.setattr(R, "RELEASE", release)
    monkeypatch.setenv("HF_ENDPOINT", server.hub_endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "configs.json").write_text(json.dumps({k: c.to_dict() for k, c in standin_configs().items()}))
    argv = ["--release", "--dir", str(tmp_path / "rel"), "--configs", str(tmp_path / "configs.json"),
            "--out", str(tmp_path / "eng"), "--no-fp16-check"]
    assert B.main(argv) == 0
    out = capsys.readouterr().out
    assert out.index("CC BY-NC-SA 4.0") < out.index("downloading 8 file(s)")  # licences before the first download
    m = M.verify(tmp_path / "eng")
    lic = {e.licence: e for e in m.licences}
    assert set(lic) == {"CC BY-NC-SA 4.0", "CC BY-NC 4.0", "MIT"}
    assert lic["CC BY-NC-SA 4.0"].files[ck.REWAS_FILE] == hashlib.sha256(server.files[ck.REWAS_FILE]).hexdigest()
    assert m.build_command.startswith("python export/build_engines.py --release --dir ")
    d = M.open_engine_dir(tmp_path / "eng")
    ids = np.array([d.unconditional_ids], np.int64)
    emb = run_onnx(d.graph("clap_text").onnx, {"input_ids": ids, "attention_mask": np.ones_like(ids)})["text_embedding"]
    assert emb.shape == (1, C.TEXT_EMBED_DIM) and np.isfinite(emb).all()
    # every byte of the release folder is the served bytes
    for s in release.sources:
        assert (tmp_path / "rel" / s.rel).read_bytes() == server.files[s.name], s.name
        assert (tmp_path / "rel" / f"{s.rel}.sha256").read_text().split()[0] == hashlib.sha256(server.files[s.name]).hexdigest()

    n = len(server.requests)
    assert B.main(argv) == 0
    out = capsys.readouterr().out
    assert len(server.requests) == n, server.requests[n:]  # no network at all
    assert "all 8 present and verified" in out and "up to date" in out
    assert out.count("unchanged, skipped") == 7


def test_tar_members_are_fetched_alone_by_range(server, release, tmp_path):
    _ensure(server, release, tmp_path, *TAR_FILES)
    tar_gets = [r for r in server.requests if r[1] == "/files/checkpoints.tar" and r[0] == "GET"]
    tar = server.plain["/files/checkpoints.tar"]
    fetched = 0
    for _, _, rng in tar_gets:
        a, b = rng[6:].split("-")
        fetched += int(b) - int(a) + 1
    wanted = sum(len(server.files[n]) for n in (ck.VAE_FILE, ck.HIFIGAN_FILE, ck.CLAP_FILE))
    assert all(rng for _, _, rng in tar_gets)  # never the whole archive
    assert fetched <= wanted + 5 * 65536 < len(tar) - (4 << 20) + 5 * 65536  # headers + the three members only
    assert not (tmp_path / "rel" / "checkpoints.tar").exists() and not (tmp_path / "rel" / "audiomae_16k_128bins.ckpt").exists()
    assert _no_partial_files(tmp_path) == []


def test_without_range_support_the_archive_is_streamed_once_and_md5_checked(server, release, tmp_path, files):
    server.ranges = False
    _ensure(server, release, tmp_path, *TAR_FILES)
    for n in (ck.VAE_FILE, ck.HIFIGAN_FILE, ck.CLAP_FILE):
        assert (tmp_path / "rel" / n).read_bytes() == files[n]
    # a wrong archive md5: nothing from it is kept
    bad = R.Release(release.sources, dataclasses.replace(release.archive, md5="0" * 32))
    with pytest.raises(R.ReleaseError) as e:
        _ensure(server, bad, tmp_path / "b", *TAR_FILES)
    _one_line(e, "checkpoints.tar", "md5", "run again")
    assert not any((tmp_path / "b" / "rel" / n).exists() for n in (ck.VAE_FILE, ck.HIFIGAN_FILE, ck.CLAP_FILE))
    assert _no_partial_files(tmp_path / "b") == []


# ---- interruptions -----------------------------------------------------------------------------

def test_download_killed_midway_resumes_byte_identical(server, release, tmp_path):
    """A separate process is SIGKILLed mid-transfer; the next run asks for the rest only."""
    src = _source(release, SYNC)
    data = server.files[SYNC]
    half = len(data) // 2
    server.pause_after[f"/files/{SYNC}"] = (half, 30.0)
    dest = tmp_path / SYNC
    code = (f"import sys; from pathlib import Path; from export import release as R\n"
            f"src = R.Source({SYNC!r}, 'url', {src.location!r}, '', R.MIT_SYNCHFORMER, 'https://x', 0)\n"
            f"R.download_url(src, Path({str(dest)!r}), R.Options(retries=0, progress=False))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    part = tmp_path / f"{SYNC}.part"
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size >= half) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=10)
    assert part.stat().st_size == half and not dest.exists()  # half-written: never under the final name

    R.download_url(src, dest, options_for(server, tmp_path / "hub"))
    assert dest.read_bytes() == data and not part.exists()
    assert server.requests[-1] == ("GET", f"/files/{SYNC}", f"bytes={half}-")


def test_cut_connection_is_retried_from_where_it_stopped(server, release, tmp_path):
    server.cut_after[f"/files/{SYNC}"] = 1000
    _ensure(server, release, tmp_path, SYNC)
    assert (tmp_path / "rel" / SYNC).read_bytes() == server.files[SYNC]
    gets = [r for r in server.requests if r[1] == f"/files/{SYNC}" and r[0] == "GET"]
    assert gets[-1][2] == "bytes=1000-"


def test_cut_tar_member_resumes_inside_the_archive(server, release, tmp_path, files):
    server.cut_after["/files/checkpoints.tar"] = 100_000  # longer than a header read: hits the first member
    _ensure(server, release, tmp_path, *TAR_FILES)
    for n in TAR_FILES:
        assert (tmp_path / "rel" / n).read_bytes() == files[n]
    tar = tarfile.open(fileobj=io.BytesIO(server.plain["/files/checkpoints.tar"]))
    first = min((m for m in tar.getmembers() if m.name.rsplit("/", 1)[-1] in TAR_FILES), key=lambda m: m.offset_data)
    ranges = [r[2] for r in server.requests if r[1] == "/files/checkpoints.tar"]
    assert f"bytes={first.offset_data + 100_000}-{first.offset_data + first.size - 1}" in ranges


def test_interrupted_without_retries_keeps_only_the_part_file(server, release, tmp_path):
    server.cut_after[f"/files/{SYNC}"] = 1000
    with pytest.raises(R.ReleaseError) as e:
        _ensure(server, release, tmp_path, SYNC, retries=0)
    _one_line(e, SYNC, "cut off at 1000", "run the same command again to resume")
    assert not (tmp_path / "rel" / SYNC).exists() and (tmp_path / "rel" / f"{SYNC}.part").stat().st_size == 1000
    assert SYNC not in R.read_state(tmp_path / "rel")["files"]
    _ensure(server, release, tmp_path, SYNC)
    assert (tmp_path / "rel" / SYNC).read_bytes() == server.files[SYNC]


# ---- corruption ----------------------------------------------------------------------------------

def test_corrupted_byte_is_caught_and_nothing_is_kept(server, release, tmp_path, files):
    bad = bytearray(files[SYNC])
    bad[len(bad) // 2] ^= 0x01
    server.plain[f"/files/{SYNC}"] = bytes(bad)
    with pytest.raises(R.ReleaseError) as e:
        _ensure(server, release, tmp_path, SYNC)
    _one_line(e, SYNC, "md5", "differs from the published", "deleted")
    assert not (tmp_path / "rel" / SYNC).exists() and _no_partial_files(tmp_path / "rel") == []


def test_corrupted_hub_transfer_is_caught(server, release, tmp_path, files):
    sha = hashlib.sha256(files[ck.PHI_FILE]).hexdigest()
    bad = bytearray(files[ck.PHI_FILE])
    bad[-100] ^= 0x80
    server.cdn[sha] = bytes(bad)  # the Hub announces the right sha256, the transfer delivers another
    with pytest.raises(R.ReleaseError) as e:
        _ensure(server, release, tmp_path, ck.PHI_FILE)
    _one_line(e, ck.PHI_FILE, "sha256", "differs from the Hub's")
    assert not (tmp_path / "rel" / ck.PHI_FILE).exists()
    del server.cdn[sha]
    _ensure(server, release, tmp_path, ck.PHI_FILE)  # the corrupt blob left the Hub cache: fetched again
    assert (tmp_path / "rel" / ck.PHI_FILE).read_bytes() == files[ck.PHI_FILE]


def test_a_file_changed_after_download_is_fetched_again(server, release, tmp_path, files):
    _ensure(server, release, tmp_path, *TAR_FILES)
    path = tmp_path / "rel" / ck.VAE_FILE
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not R.is_current(tmp_path / "rel", _source(release, ck.VAE_FILE), R.read_state(tmp_path / "rel"))
    _ensure(server, release, tmp_path, *TAR_FILES)
    assert path.read_bytes() == files[ck.VAE_FILE]


def test_a_hub_file_changed_in_place_is_healed_in_one_run(server, release, tmp_path, files):
    """The release file is a hard link into the Hub cache: editing it corrupts the cached copy too."""
    _ensure(server, release, tmp_path, ck.PHI_FILE)
    path = tmp_path / "rel" / ck.PHI_FILE
    with open(path, "r+b") as f:
        f.seek(-50, 2)
        f.write(b"\xff")
    _ensure(server, release, tmp_path, ck.PHI_FILE)
    assert path.read_bytes() == files[ck.PHI_FILE]


def test_wrong_key_layout_is_refused(server, release, tmp_path):
    import io

    import torch

    sd = torch.load(io.BytesIO(server.files[ck.PHI_FILE]), weights_only=True)
    sd["module.projection1.0.bias"] = torch.zeros(3)
    buf = io.BytesIO()
    torch.save(sd, buf)
    server.hub["lee-j/ReWaS/phi_vggsound.ckpt"].data = buf.getvalue()
    with pytest.raises(R.ReleaseError) as e:
        _ensure(server, release, tmp_path, ck.PHI_FILE)
    _one_line(e, ck.PHI_FILE, "mis-shaped keys: projection1.0.bias (3,)")
    assert not (tmp_path / "rel" / ck.PHI_FILE).exists()
    assert ck.PHI_FILE not in R.read_state(tmp_path / "rel")["files"]


def test_layout_check_is_at_full_size_by_default(tmp_path, files):
    """Without other configs the check is against rewas-m: a reduced file is refused, by name."""
    import torch

    path = tmp_path / ck.PHI_FILE
    path.write_bytes(files[ck.PHI_FILE])
    with pytest.raises(R.ReleaseError) as e:
        R.verify_layout(_source(R.RELEASE, ck.PHI_FILE), path, None, False)
    _one_line(e, ck.PHI_FILE, "phi:", "mis-shaped keys")
    n_keys = len(torch.load(path, weights_only=True))
    assert R.verify_layout(_source(R.RELEASE, ck.PHI_FILE), path, standin_configs(), False) == n_keys


# ---- errors: one line, naming the file and what to do ------------------------------------------

def test_404_is_one_line(server, release, tmp_path):
    server.status[f"/files/{SYNC}"] = 404
    with pytest.raises(R.ReleaseError) as e:
        _ensure(server, release, tmp_path, SYNC)
    _one_line(e, SYNC, "HTTP 404", "by hand")
    server.status.clear()
    server.status["/hub/lee-j/ReWaS/resolve/main/phi_vggsound.ckpt"] = 404
    with pytest.raises(R.ReleaseError) as e:
        _ensure(server, release, tmp_path / "b", ck.PHI_FILE)
    _one_line(e, ck.PHI_FILE, "not found", "HTTP 404")


@pytest.mark.parametrize("code", [401, 403])
def test_access_denied_is_one_line(server, release, tmp_path, code):
    server.status[f"/files/{SYNC}"] = code
    with pytest.raises(R.ReleaseError) as e:
        _ensure(server, release, tmp_path, SYNC)
    _one_line(e, SYNC, f"denied (HTTP {code})")
    server.status.clear()
    server.status["/hub/lee-j/"] = code
    with pytest.raises(R.ReleaseError) as e:
        _ensure(server, release, tmp_path / "b", ck.REWAS_FILE)
    _one_line(e, ck.REWAS_FILE, f"HTTP {code}", "token")


def test_no_network_is_one_line(server, release, tmp_path):
    from tests.local_net import free_port

    port = free_port()  # a port nothing listens on
    dead = f"http://127.0.0.1:{port}"
    sources = tuple(dataclasses.replace(s, location=dead + "/x.pt") if s.kind == "url" else s
                    for s in release.sources if s.name in (ck.REWAS_FILE, SYNC))
    with pytest.raises(R.ReleaseError) as e:
        R.ensure(tmp_path / "rel", release=R.Release(sources, release.archive), log=lambda _: None,
                 opts=R.Options(retries=1, backoff=0.01, progress=False, offline=False, hub_endpoint=dead + "/hub",
                                hub_cache=tmp_path / "hub"), configs=standin_configs())
    _one_line(e, ck.REWAS_FILE, "cannot reach", "network")
    with pytest.raises(R.ReleaseError) as e:
        R.download_url(sources[1], tmp_path / SYNC, R.Options(retries=1, backoff=0.01, progress=False))
    _one_line(e, SYNC, f"cannot reach 127.0.0.1:{port}", "network")


def test_offline(server, release, tmp_path):
    with pytest.raises(R.ReleaseError) as e:
        _ensure(server, release, tmp_path, ck.PHI_FILE, SYNC, offline=True)
    _one_line(e, "offline", "HF_HUB_OFFLINE", SYNC)
    _ensure(server, release, tmp_path, ck.PHI_FILE, SYNC)
    n = len(server.requests)
    (tmp_path / "rel" / ck.PHI_FILE).unlink()  # still in the Hub cache
    _ensure(server, release, tmp_path, ck.PHI_FILE, SYNC, offline=True)
    assert len(server.requests) == n and (tmp_path / "rel" / ck.PHI_FILE).is_file()
    (tmp_path / "rel" / SYNC).unlink()
    with pytest.raises(R.ReleaseError) as e:
        _ensure(server, release, tmp_path, ck.PHI_FILE, SYNC, offline=True)
    _one_line(e, SYNC, "offline")


def test_full_disk_is_refused_before_downloading(server, release, tmp_path, monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(R.shutil, "disk_usage", lambda p: real(p)._replace(free=10_000))
    with pytest.raises(R.ReleaseError) as e:
        _ensure(server, release, tmp_path, ck.PHI_FILE, SYNC)
    _one_line(e, "free", "--dir")
    assert not any(p.is_file() and p.stat().st_size for p in (tmp_path / "rel").iterdir() if p.name != R.STATE_NAME)


def test_disk_full_while_writing_is_one_line(tmp_path):
    import errno

    err = R._os_error(SYNC, tmp_path / SYNC, OSError(errno.ENOSPC, "No space left on device"))
    assert SYNC in str(err) and "full" in str(err) and "resumes" in str(err)


def test_tar_without_the_member_is_one_line(server, release, tmp_path, files):
    tar = make_tar({ck.VAE_FILE: files[ck.VAE_FILE], ck.HIFIGAN_FILE: files[ck.HIFIGAN_FILE]})
    server.plain["/files/checkpoints.tar"] = tar
    with pytest.raises(R.ReleaseError) as e:
        _ensure(server, release, tmp_path, *TAR_FILES)
    _one_line(e, ck.CLAP_FILE, "not in checkpoints.tar", "checkpoints/vae_mel_16k_64bins.ckpt")
    assert not (tmp_path / "rel" / ck.VAE_FILE).exists()
    server.ranges = False  # the streaming path says the same
    bad = R.Release(release.sources, dataclasses.replace(release.archive, md5=hashlib.md5(tar).hexdigest()))
    with pytest.raises(R.ReleaseError) as e:
        _ensure(server, bad, tmp_path / "s", *TAR_FILES)
    _one_line(e, ck.CLAP_FILE, "not in checkpoints.tar")
    assert _no_partial_files(tmp_path) == []


def test_build_engines_release_argument_errors(tmp_path):
    from export import build_engines as B

    for argv, fragment in ((["--release", "--checkpoints", str(tmp_path)], "not with --checkpoints"),
                           (["--dir", str(tmp_path), "--config", "tiny", "--random-weights"], "go with --release")):
        with pytest.raises(SystemExit) as e:
            B.parse_args(argv)
        assert e.value.code == 2


def test_info_says_how_to_get_the_released_model(tmp_path, capsys):
    from rewas_rt.cli import main

    assert main(["info", "--engines", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "build_engines.py --release" in out
