"""Download the released ReWaS files into one checkpoint folder, resumable and verified.

    python -m export.release [--dir DIR]          # download only
    python export/build_engines.py --release --out engines/rewas-m   # download, import, build

``SOURCES`` is the one table of where every file comes from (docs/design.md §7): the ReWaS
and φ checkpoints and the RoBERTa tokenizer from the Hugging Face Hub (through
``huggingface_hub``: ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, its cache and token apply),
three AudioLDM checkpoints that only exist inside AudioLDM-training's ``checkpoints.tar``
on Zenodo, and Synchformer's checkpoint from the URL in its README.

Guarantees:

* A file appears under its final name only after it is complete and verified: plain-URL
  downloads grow ``<name>.part`` (resumed with HTTP Range after an interruption, retried
  with backoff) and are renamed when their size and hash check out.
* Verification: the published hash where there is one (the Hub's sha256 / git-sha1 ETag,
  the md5 prefix in Synchformer's README, the archive md5 on Zenodo when the archive is
  streamed whole); always the sha256 of what was downloaded, recorded beside the file
  (``<name>.sha256``, ``sha256sum -c`` format) and in ``release.json``; and every
  checkpoint's keys and shapes against the model it feeds (``training.checkpoints``,
  memory-mapped, at the full "rewas-m" sizes unless other configs are given).
* From ``checkpoints.tar`` (7.8 GB) only the three members used are fetched: the tar
  headers are read with small Range requests and each member's bytes downloaded alone
  (resumable). A server without Range support gets the archive streamed once, the
  three members extracted on the way and the archive's md5 checked before they count.
* Every failure is one line naming the file and what to do (``ReleaseError``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import shutil
import socket
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewas_rt.atomic import atomic_path
from rewas_rt.errors import RewasError, cli_main
from rewas_rt.manifest import sha256_file

DEFAULT_DIR = Path("~/.cache/rewas-rt/release")
STATE_NAME = "release.json"
STATE_VERSION = 1
TOKENIZER_SUBDIR = "roberta-base"
CHUNK = 1 << 20
USER_AGENT = "rewas-rt-release/1"


class ReleaseError(RewasError):
    """A release file cannot be downloaded or verified; the message says which and what to do."""


@dataclasses.dataclass(frozen=True)
class Licence:
    name: str
    url: str
    note: str = ""


CC_BY_NC_SA = Licence(
    "CC BY-NC-SA 4.0", "https://creativecommons.org/licenses/by-nc-sa/4.0/",
    "the licence the ReWaS authors (NAVER Cloud) state in their code release; the model card of the Hub "
    "repository lee-j/ReWaS states a different one — we follow the authors' statement; non-commercial use only")
CC_BY_NC = Licence(
    "CC BY-NC 4.0", "https://creativecommons.org/licenses/by-nc/4.0/",
    "the licence of AudioLDM's pretrained checkpoints (AudioLDM README); non-commercial use only")
MIT_SYNCHFORMER = Licence("MIT", "https://github.com/v-iashin/Synchformer/blob/main/LICENSE")
MIT_ROBERTA = Licence("MIT", "https://huggingface.co/FacebookAI/roberta-base")


@dataclasses.dataclass(frozen=True)
class Archive:
    """A tar archive some release files are taken from (never kept whole on disk)."""

    name: str
    url: str
    md5: str | None  # published by Zenodo for the whole archive
    approx_bytes: int
    homepage: str


@dataclasses.dataclass(frozen=True)
class Source:
    """One release file: where it is published and how it is checked.

    ``kind``: ``hub`` (``location`` = repo id, ``path`` = file in the repo), ``url``
    (``location`` = URL) or ``tar`` (``path`` = member file name in ``ARCHIVE``, matched by
    base name). ``size``/``sha256``/``md5_prefix`` only where the publisher states them;
    ``approx_bytes`` (lower bound from the parameter counts) is for planning only.
    """

    name: str
    kind: str
    location: str
    path: str
    licence: Licence
    homepage: str
    approx_bytes: int
    size: int | None = None
    sha256: str | None = None
    md5_prefix: str | None = None
    subdir: str = ""
    revision: str = "main"

    @property
    def rel(self) -> str:
        return f"{self.subdir}/{self.name}" if self.subdir else self.name

    @property
    def is_checkpoint(self) -> bool:
        return not self.subdir


ARCHIVE = Archive(
    name="checkpoints.tar",
    url="https://zenodo.org/records/14342967/files/checkpoints.tar?download=1",
    md5="d9898f93372582119fa19c6464f59cdc",  # the record's file listing (10.5281/zenodo.14342967)
    approx_bytes=7_816_000_000,
    homepage="https://zenodo.org/records/14342967 (AudioLDM-training-finetuning)",
)

_SYNC = "https://a3s.fi/swift/v1/AUTH_a235c0f452d648828f745589cde1219a/sync/sync_models/24-01-04T16-39-21"

# The one table of release files. Sizes marked approx_bytes are lower bounds from the
# parameter counts (float32); the exact size comes from the server before downloading.
SOURCES: tuple[Source, ...] = (
    Source("audioldm_m_rewas_vggsound.ckpt", "hub", "lee-j/ReWaS", "audioldm_m_rewas_vggsound.ckpt",
           CC_BY_NC_SA, "https://huggingface.co/lee-j/ReWaS", approx_bytes=7_600_000_000),
    Source("phi_vggsound.ckpt", "hub", "lee-j/ReWaS", "phi_vggsound.ckpt",
           CC_BY_NC_SA, "https://huggingface.co/lee-j/ReWaS", approx_bytes=87_900_000),
    Source("vae_mel_16k_64bins.ckpt", "tar", ARCHIVE.url, "vae_mel_16k_64bins.ckpt",
           CC_BY_NC, ARCHIVE.homepage, approx_bytes=510_000_000),
    Source("hifigan_16k_64bins.ckpt", "tar", ARCHIVE.url, "hifigan_16k_64bins.ckpt",
           CC_BY_NC, ARCHIVE.homepage, approx_bytes=221_000_000),
    Source("clap_music_speech_audioset_epoch_15_esc_89.98.pt", "tar", ARCHIVE.url,
           "clap_music_speech_audioset_epoch_15_esc_89.98.pt", CC_BY_NC, ARCHIVE.homepage, approx_bytes=800_000_000),
    # README table: "ckpt (md5: `54037d2...`)" — only the first 7 hex digits are published.
    Source("24-01-04T16-39-21.pt", "url", f"{_SYNC}/24-01-04T16-39-21.pt", "", MIT_SYNCHFORMER,
           "https://github.com/v-iashin/Synchformer#audio-visual-synchronization-modules",
           approx_bytes=950_000_000, md5_prefix="54037d2"),
    Source("vocab.json", "hub", "FacebookAI/roberta-base", "vocab.json", MIT_ROBERTA,
           "https://huggingface.co/FacebookAI/roberta-base", approx_bytes=900_000, subdir=TOKENIZER_SUBDIR),
    Source("merges.txt", "hub", "FacebookAI/roberta-base", "merges.txt", MIT_ROBERTA,
           "https://huggingface.co/FacebookAI/roberta-base", approx_bytes=456_000, subdir=TOKENIZER_SUBDIR),
)


@dataclasses.dataclass(frozen=True)
class Release:
    sources: tuple[Source, ...] = SOURCES
    archive: Archive = ARCHIVE


RELEASE = Release()


@dataclasses.dataclass
class Options:
    """How downloads behave; tests shorten the waits and point the Hub elsewhere."""

    retries: int = 5  # attempts after the first, for network errors, 5xx and truncated transfers
    backoff: float = 2.0  # seconds before the first retry, doubling each time
    timeout: float = 60.0  # per socket operation
    progress: bool | None = None  # tqdm bars; None: only on a terminal
    offline: bool | None = None  # None: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE
    hub_endpoint: str | None = None  # None: HF_ENDPOINT or huggingface.co
    hub_cache: Path | None = None  # None: huggingface_hub's cache ($HF_HUB_CACHE, $HF_HOME/hub)
    hub_token: str | bool | None = None  # None: HF_TOKEN or the stored login
    disk_margin: int = 64 << 20  # free space to leave on the disk

    def is_offline(self) -> bool:
        if self.offline is not None:
            return self.offline
        return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
                   for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))

    # Read at call time (huggingface_hub reads its variables once, at import).
    def endpoint(self) -> str | None:
        return self.hub_endpoint or os.environ.get("HF_ENDPOINT") or None

    def cache_dir(self) -> Path | None:
        if self.hub_cache is not None:
            return self.hub_cache
        if os.environ.get("HF_HUB_CACHE"):
            return Path(os.environ["HF_HUB_CACHE"])
        if os.environ.get("HF_HOME"):
            return Path(os.environ["HF_HOME"]) / "hub"
        return None


# --------------------------------------------------------------------------- helpers

def _gb(n: int | float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1()  # noqa: S324 - git's object id, not a security hash
    h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 23), b""):
            h.update(block)
    return h.hexdigest()


def check_disk(directory: Path, need: int, what: str, opts: Options) -> None:
    """Refuse to start a download the disk cannot hold."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if need + opts.disk_margin > free:
        raise ReleaseError(f"{what}: needs {_gb(need)} more on the disk of {directory}, only {_gb(free)} free; "
                           "free some space or choose another folder with --dir")


def _os_error(name: str, dest: Path, err: OSError) -> ReleaseError:
    import errno

    if err.errno == errno.ENOSPC:
        return ReleaseError(f"{name}: the disk of {dest.parent} is full; free some space and run again "
                            "(the download resumes where it stopped)")
    return ReleaseError(f"{name}: cannot write {dest}: {err.strerror or err}")


def _progress(opts: Options, total: int | None, initial: int, desc: str):
    from tqdm import tqdm

    disable = None if opts.progress is None else not opts.progress
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=disable, leave=False, file=sys.stderr)


# --------------------------------------------------------------------------- HTTP (plain URLs)

class _Retryable(Exception):
    """A transient failure: retried with backoff, reported when the attempts run out."""

    def __init__(self, message: str):
        super().__init__(message)


def _http_error(name: str, url: str, err: urllib.error.HTTPError, homepage: str) -> Exception:
    code = err.code
    if code in (408, 429) or code >= 500:
        return _Retryable(f"{_host(url)} answered HTTP {code}")
    if code == 404:
        return ReleaseError(f"{name}: {url} not found (HTTP 404); the file has moved — see {homepage} and "
                            f"put the file into the release folder by hand")
    if code in (401, 403):
        return ReleaseError(f"{name}: access to {url} denied (HTTP {code}); check that the link still opens in "
                            f"a browser ({homepage}) or put the file into the release folder by hand")
    if code == 416:
        return _Retryable("range not satisfiable")
    return ReleaseError(f"{name}: {url} answered HTTP {code} ({err.reason})")


def _open(url: str, opts: Options, start: int = 0, end: int | None = None, method: str = "GET"):
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if start or end is not None:
        headers["Range"] = f"bytes={start}-{'' if end is None else end}"
    req = urllib.request.Request(url, headers=headers, method=method)
    return urllib.request.urlopen(req, timeout=opts.timeout)  # noqa: S310 - http(s) URLs from SOURCES


def _with_retries(name: str, url: str, homepage: str, opts: Options, attempt_fn: Callable[[], Any],
                  on_give_up: Callable[[str], str] | None = None):
    """Run ``attempt_fn`` until it succeeds; network errors, 5xx and cut transfers are retried."""
    delay = opts.backoff
    for attempt in range(opts.retries + 1):
        try:
            return attempt_fn()
        except urllib.error.HTTPError as e:
            err = _http_error(name, url, e, homepage)
            if isinstance(err, ReleaseError):
                raise err from None
            reason = str(err)
        except urllib.error.URLError as e:
            reason = f"cannot reach {_host(url)} ({getattr(e.reason, 'strerror', None) or e.reason})"
        except (_Retryable, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as e:
            reason = f"connection to {_host(url)} failed ({type(e).__name__}: {e})" if not isinstance(e, _Retryable) \
                else str(e)
        if attempt < opts.retries:
            time.sleep(delay)
            delay *= 2
    msg = on_give_up(reason) if on_give_up else f"{reason}; check the network connection and run again"
    raise ReleaseError(f"{name}: {msg}")


def _content_range_total(resp) -> int | None:
    cr = resp.headers.get("Content-Range", "")
    if "/" in cr and cr.rsplit("/", 1)[1].strip().isdigit():
        return int(cr.rsplit("/", 1)[1])
    return None


def _remote_size(url: str, opts: Options) -> tuple[int | None, bool]:
    """(total size, Range supported) from a one-byte Range request."""
    with _open(url, opts, 0, 0) as resp:
        if resp.status == 206:
            return _content_range_total(resp), True
        length = resp.headers.get("Content-Length")
        return (int(length) if length and length.isdigit() else None), False


def _copy_stream(resp, f, bar, hashers: Iterable[Any], limit: int | None = None) -> int:
    n = 0
    read = getattr(resp, "read1", resp.read)  # what has arrived: a killed run keeps all it received
    while limit is None or n < limit:
        block = read(CHUNK if limit is None else min(CHUNK, limit - n))
        if not block:
            break
        f.write(block)
        for h in hashers:
            h.update(block)
        bar.update(len(block))
        n += len(block)
    return n


def _fill_part(src: Source, dest: Path, resp, opts: Options, total: int | None, have: int, *, append: bool,
               limit: int | None = None) -> None:
    """Write ``resp``'s body to ``dest.part`` (after its ``have`` bytes when ``append``) with a progress
    bar; a full disk or an unwritable folder is a ReleaseError, a cut-off body a retryable one."""
    part = dest.with_name(dest.name + ".part")
    try:
        with open(part, "ab" if append else "wb", buffering=0) as f, _progress(opts, total, have, src.name) as bar:
            _copy_stream(resp, f, bar, (), limit=limit)
    except OSError as e:
        if isinstance(e, (ConnectionError, socket.timeout, TimeoutError)):
            raise
        raise _os_error(src.name, dest, e) from None
    got = part.stat().st_size
    if total is not None and got < total:
        raise _Retryable(f"download cut off at {got} of {total} bytes")


def download_url(src: Source, dest: Path, opts: Options, url: str | None = None) -> str:
    """Download ``url`` to ``dest`` via ``dest.part`` (resumed by Range); returns the sha256."""
    url = url or src.location
    part = dest.with_name(dest.name + ".part")
    state: dict[str, Any] = {}

    def probe():
        state["total"], state["ranges"] = _remote_size(url, opts)

    _with_retries(src.name, url, src.homepage, opts, probe)
    total = state["total"]
    if src.size is not None and total is not None and total != src.size:
        raise ReleaseError(f"{src.name}: the server offers {total} bytes, the release has {src.size}; "
                           f"the file at {url} changed — see {src.homepage}")
    have = part.stat().st_size if part.exists() else 0
    if total is not None and have > total:
        part.unlink()
        have = 0
    if total is not None:
        check_disk(dest.parent, total - have, src.name, opts)

    def attempt():
        have = part.stat().st_size if part.exists() else 0
        if total is not None and have == total:
            return
        try:
            resp = _open(url, opts, have if state["ranges"] else 0)
        except urllib.error.HTTPError as e:
            if e.code == 416 and total is not None and have == total:
                return
            raise
        with resp:
            resumed = resp.status == 206
            if have and not resumed:  # the server ignored Range: start over
                have = 0
            _fill_part(src, dest, resp, opts, total, have, append=resumed)

    def gave_up(reason: str) -> str:
        got = part.stat().st_size if part.exists() else 0
        where = f" ({got} of {total} bytes kept in {part.name})" if got else ""
        return f"{reason}{where}; check the network connection and run the same command again to resume"

    _with_retries(src.name, url, src.homepage, opts, attempt, gave_up)
    got = part.stat().st_size
    if total is not None and got != total:
        raise ReleaseError(f"{src.name}: got {got} bytes, expected {total}; run again to resume")
    digest = sha256_file(part)
    try:
        _check_published(src, part, digest)
    except ReleaseError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return digest


def _check_published(src: Source, path: Path, digest: str) -> None:
    size = path.stat().st_size
    if src.size is not None and size != src.size:
        raise ReleaseError(f"{src.name}: {size} bytes, the release has {src.size}; the corrupt download was "
                           "deleted — run again")
    if src.sha256 and digest != src.sha256:
        raise ReleaseError(f"{src.name}: sha256 {digest[:16]}… differs from the published {src.sha256[:16]}…; "
                           "the corrupt download was deleted — run again")
    if src.md5_prefix:
        md5 = hashlib.md5()  # noqa: S324 - comparing with the md5 the publisher lists
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 23), b""):
                md5.update(block)
        if not md5.hexdigest().startswith(src.md5_prefix):
            raise ReleaseError(f"{src.name}: md5 {md5.hexdigest()[:7]}… differs from the published "
                               f"{src.md5_prefix}…; the corrupt download was deleted — run again")


# --------------------------------------------------------------------------- tar members

class _RangeFile:
    """A read-only, seekable file over HTTP Range requests (for reading tar headers)."""

    def __init__(self, url: str, size: int, opts: Options, readahead: int = 64 << 10):
        self.url, self.size, self.opts, self.readahead = url, size, opts, readahead
        self.pos = 0
        self.buf_start, self.buf = 0, b""

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        n = max(0, min(n, self.size - self.pos))
        if n == 0:
            return b""
        lo, hi = self.pos - self.buf_start, self.pos - self.buf_start + n
        if not (0 <= lo and hi <= len(self.buf)):
            end = min(self.size, self.pos + max(n, self.readahead)) - 1
            with _open(self.url, self.opts, self.pos, end) as resp:
                if resp.status != 206:
                    raise _NoRanges()
                self.buf_start, self.buf = self.pos, resp.read()
            if len(self.buf) < end - self.pos + 1:
                raise _Retryable("archive header read cut off")
            lo, hi = 0, n
        self.pos += n
        return self.buf[lo:hi]


class _NoRanges(Exception):
    pass


def _member_index(archive: Archive, names: set[str], opts: Options,
                  size: int) -> tuple[dict[str, tarfile.TarInfo], list[str]]:
    """The tar headers of the wanted members (by base name), read with small Range requests;
    stops at the last one wanted. Also returns the file names seen (for error messages)."""
    found: dict[str, tarfile.TarInfo] = {}
    listing: list[str] = []
    with tarfile.open(fileobj=_RangeFile(archive.url, size, opts), mode="r:") as tf:  # type: ignore[arg-type]
        for info in tf:
            if not info.isfile():
                continue
            listing.append(info.name)
            base = info.name.rsplit("/", 1)[-1]
            if base in names and base not in found:
                found[base] = info
                if len(found) == len(names):
                    break
    return found, listing


def _missing_member(archive: Archive, name: str, listing: list[str], folder: Path) -> ReleaseError:
    shown = ", ".join(listing[:8]) + (" …" if len(listing) > 8 else "")
    return ReleaseError(f"{name}: not in {archive.name} (it holds: {shown or 'no files'}); the archive at "
                        f"{archive.homepage} changed — get {name} by hand into {folder}")


def extract_members(archive: Archive, wanted: Mapping[str, Path], opts: Options,
                    log: Callable[[str], None], approx_bytes: int = 0) -> dict[str, str]:
    """Fetch only the ``wanted`` members (base name -> destination); returns their sha256."""
    names = set(wanted)
    folder = next(iter(wanted.values())).parent
    state: dict[str, Any] = {}

    def probe():
        state["size"], state["ranges"] = _remote_size(archive.url, opts)

    _with_retries(archive.name, archive.url, archive.homepage, opts, probe)
    if state["ranges"] and state["size"]:
        try:
            def read_index():
                state["index"], state["listing"] = _member_index(archive, names, opts, state["size"])

            _with_retries(archive.name, archive.url, archive.homepage, opts, read_index)
        except _NoRanges:
            state["ranges"] = False
        except tarfile.TarError as e:
            raise ReleaseError(f"{archive.name}: not a readable tar archive ({e}); the file at "
                               f"{archive.homepage} changed") from None
    if not (state["ranges"] and state["size"]):
        return _extract_streaming(archive, wanted, opts, log, approx_bytes)
    index = state["index"]
    for name in sorted(names):
        if name not in index:
            raise _missing_member(archive, name, state["listing"], folder)
    need = sum(i.size - _part_size(wanted[n]) for n, i in index.items())
    check_disk(folder, need, archive.name, opts)
    digests = {}
    for name in sorted(names, key=lambda n: index[n].offset_data):
        info = index[name]
        log(f"{name}: {_gb(info.size)} from {archive.name} (bytes {info.offset_data}…)")
        src = Source(name, "tar", archive.url, info.name, CC_BY_NC, archive.homepage, info.size, size=info.size)
        digests[name] = _download_range(src, wanted[name], info.offset_data, info.size, opts)
    return digests


def _part_size(dest: Path) -> int:
    part = dest.with_name(dest.name + ".part")
    return part.stat().st_size if part.exists() else 0


def _download_range(src: Source, dest: Path, offset: int, size: int, opts: Options) -> str:
    """Bytes ``[offset, offset+size)`` of ``src.location`` into ``dest`` via ``dest.part``, resumable."""
    part = dest.with_name(dest.name + ".part")
    if part.exists() and part.stat().st_size > size:
        part.unlink()

    def attempt():
        have = part.stat().st_size if part.exists() else 0
        if have == size:
            return
        with _open(src.location, opts, offset + have, offset + size - 1) as resp:
            if resp.status != 206:
                raise _Retryable("the server stopped honouring Range requests")
            _fill_part(src, dest, resp, opts, size, have, append=True, limit=size - have)

    def gave_up(reason: str) -> str:
        return f"{reason}; check the network connection and run the same command again to resume"

    _with_retries(src.name, src.location, src.homepage, opts, attempt, gave_up)
    digest = sha256_file(part)
    os.replace(part, dest)
    return digest


def _extract_streaming(archive: Archive, wanted: Mapping[str, Path], opts: Options,
                       log: Callable[[str], None], approx_bytes: int) -> dict[str, str]:
    """No Range support: stream the archive once, keep only the wanted members, check its md5."""
    folder = next(iter(wanted.values())).parent
    log(f"{archive.name}: the server does not support resuming; streaming the whole archive "
        f"(≈ {_gb(archive.approx_bytes)}, only the members used are written)")
    check_disk(folder, approx_bytes, archive.name, opts)  # member sizes are unknown until their headers pass
    parts = {n: d.with_name(d.name + ".part") for n, d in wanted.items()}
    digests: dict[str, str] = {}
    listing: list[str] = []

    class _Hashing:
        def __init__(self, raw, bar):
            self.raw, self.bar, self.md5, self.n = raw, bar, hashlib.md5(), 0  # noqa: S324

        def read(self, n=-1):
            b = self.raw.read(n)
            self.md5.update(b)
            self.bar.update(len(b))
            self.n += len(b)
            return b

    def attempt():
        digests.clear()
        listing.clear()
        with _open(archive.url, opts) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with _progress(opts, total, 0, archive.name) as bar:
                stream = _Hashing(resp, bar)
                try:
                    with tarfile.open(fileobj=stream, mode="r|") as tf:  # type: ignore[call-overload]
                        for info in tf:
                            if not info.isfile():
                                continue
                            listing.append(info.name)
                            base = info.name.rsplit("/", 1)[-1]
                            if base in wanted and base not in digests:
                                fobj = tf.extractfile(info)
                                h = hashlib.sha256()
                                try:
                                    with open(parts[base], "wb") as f:
                                        for block in iter(lambda: fobj.read(CHUNK), b""):  # type: ignore[union-attr]
                                            f.write(block)
                                            h.update(block)
                                except OSError as e:
                                    raise _os_error(base, wanted[base], e) from None
                                if parts[base].stat().st_size != info.size:
                                    raise _Retryable(f"{base} cut off inside the archive")
                                digests[base] = h.hexdigest()
                    while stream.read(CHUNK):  # the rest, for the archive's md5
                        pass
                except tarfile.ReadError as e:
                    if total is not None and stream.n < total:
                        raise _Retryable(f"archive cut off at {stream.n} of {total} bytes") from None
                    raise ReleaseError(f"{archive.name}: not a readable tar archive ({e})") from None
                if total is not None and stream.n < total:
                    raise _Retryable(f"archive cut off at {stream.n} of {total} bytes")
        if archive.md5 and stream.md5.hexdigest() != archive.md5:
            raise ReleaseError(f"{archive.name}: md5 {stream.md5.hexdigest()[:12]}… differs from the published "
                               f"{archive.md5[:12]}…; nothing was kept — run again")

    try:
        _with_retries(archive.name, archive.url, archive.homepage, opts, attempt)
    except ReleaseError:
        for p in parts.values():
            p.unlink(missing_ok=True)
        raise
    for name in sorted(wanted):
        if name not in digests:
            for p in parts.values():
                p.unlink(missing_ok=True)
            raise _missing_member(archive, name, listing, folder)
    for name, dest in wanted.items():
        os.replace(parts[name], dest)
    return digests


# --------------------------------------------------------------------------- Hugging Face Hub

def _hub_fetch(src: Source, dest: Path, opts: Options) -> Path:
    """``hf_hub_download`` into the Hub cache; its errors as one-line ``ReleaseError``."""
    try:
        import huggingface_hub as hub
        from huggingface_hub import errors as herr
    except ImportError:
        raise ReleaseError(f"{src.name}: needs huggingface_hub (pip install 'rewas-rt[release]')") from None
    import httpx2

    offline = opts.is_offline()
    kwargs = dict(repo_id=src.location, filename=src.path, revision=src.revision, endpoint=opts.endpoint(),
                  cache_dir=opts.cache_dir(), token=opts.hub_token)
    where = f"{src.location}/{src.path} on {opts.endpoint() or 'huggingface.co'}"
    try:
        if not offline:
            meta = hub.get_hf_file_metadata(hub.hf_hub_url(src.location, src.path, revision=src.revision,
                                                           endpoint=opts.endpoint()),
                                            token=opts.hub_token, timeout=opts.timeout)
            if meta.size:
                cached = hub.try_to_load_from_cache(src.location, src.path, cache_dir=opts.cache_dir(),
                                                    revision=meta.commit_hash)
                if not isinstance(cached, str):
                    check_disk(Path(opts.cache_dir() or hub.constants.HF_HUB_CACHE), meta.size, src.name, opts)
        path = Path(hub.hf_hub_download(**kwargs, local_files_only=offline))
    except herr.GatedRepoError:
        raise ReleaseError(f"{src.name}: {src.location} is gated; accept its terms on {src.homepage} and log in "
                           "(`hf auth login` or HF_TOKEN)") from None
    except herr.RepositoryNotFoundError as e:
        code = getattr(getattr(e, "response", None), "status_code", None)
        raise ReleaseError(f"{src.name}: repository {src.location} not found or access denied (HTTP {code}); "
                           "check HF_ENDPOINT and your token (`hf auth login` or HF_TOKEN)") from None
    except (herr.RemoteEntryNotFoundError, herr.RevisionNotFoundError):
        raise ReleaseError(f"{src.name}: not found at {where} (HTTP 404); the file has moved — see "
                           f"{src.homepage}") from None
    except herr.LocalEntryNotFoundError:
        if offline:
            raise ReleaseError(f"{src.name}: offline (HF_HUB_OFFLINE) and not in the Hub cache; run once with "
                               "network access") from None
        raise ReleaseError(f"{src.name}: cannot reach {where}; check the network connection (or HF_ENDPOINT) "
                           "and run again — finished files are kept") from None
    except herr.HfHubHTTPError as e:
        code = getattr(getattr(e, "response", None), "status_code", None)
        if code in (401, 403):
            raise ReleaseError(f"{src.name}: access to {where} denied (HTTP {code}); log in with a token that can "
                               "read it (`hf auth login` or HF_TOKEN)") from None
        raise ReleaseError(f"{src.name}: {where} failed: {str(e).splitlines()[0]}; run again") from None
    except (httpx2.ConnectError, httpx2.TimeoutException) as e:
        raise ReleaseError(f"{src.name}: cannot reach {_host(opts.endpoint() or 'https://huggingface.co')} "
                           f"({type(e).__name__}); check the network connection (or HF_ENDPOINT) and run again — "
                           "finished files are kept") from None
    except (httpx2.HTTPError, OSError) as e:
        if isinstance(e, OSError) and getattr(e, "errno", None) == 28:
            raise _os_error(src.name, dest, e) from None
        raise ReleaseError(f"{src.name}: download from {where} failed ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}); check the network and run again — "
                           "huggingface_hub resumes") from None
    except ReleaseError:
        raise
    except Exception as e:  # noqa: BLE001 - huggingface_hub's consistency checks raise plain exceptions
        raise ReleaseError(f"{src.name}: download from {where} failed: {str(e).splitlines()[0]}; run again") from None

    return path


def _hub_problem(src: Source, path: Path) -> tuple[str | None, str, dict[str, str]]:
    """(what is wrong or None, sha256, the published hash) of a file in the Hub cache: its blob's
    name is the ETag — the sha256 of an LFS file, the git object id of a small one."""
    etag = Path(os.path.realpath(path)).name
    digest = sha256_file(path)
    if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag):
        if digest != etag:
            return f"sha256 {digest[:16]}… differs from the Hub's {etag[:16]}…", digest, {}
        return None, digest, {"sha256": etag}
    if len(etag) == 40 and all(c in "0123456789abcdef" for c in etag):
        if _git_blob_sha1(path) != etag:
            return f"git object id differs from the Hub's {etag[:12]}…", digest, {}
        return None, digest, {"git_sha1": etag}
    return None, digest, {}


def download_hub(src: Source, dest: Path, opts: Options) -> tuple[str, dict[str, Any]]:
    """From the Hub (cache) into ``dest`` (a hard link where possible), checked against the ETag.

    A corrupt copy in the cache is removed and fetched once more before giving up."""
    for attempt in range(2):
        path = _hub_fetch(src, dest, opts)
        problem, digest, published = _hub_problem(src, path)
        if problem is None:
            break
        _drop_hub_blob(path)
        if attempt or opts.is_offline():
            raise ReleaseError(f"{src.name}: {problem}; the corrupt copy was removed from the Hub cache — run again")
    _link_or_copy(path, dest, src.name)
    commit = path.parent.name if path.parent.parent.name == "snapshots" else None
    return digest, {"repo": src.location, "revision": src.revision, "commit": commit, **published}


def _drop_hub_blob(path: Path) -> None:
    blob = Path(os.path.realpath(path))
    with contextlib.suppress(OSError):
        path.unlink()
    with contextlib.suppress(OSError):
        blob.unlink()


def _link_or_copy(cached: Path, dest: Path, name: str) -> None:
    """Hard link (no extra disk) where the cache is on the same file system, else copy; atomic."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    real = Path(os.path.realpath(cached))
    tmp = dest.with_name(f".{dest.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(real, tmp)
    except OSError:
        try:
            with atomic_path(dest) as t:
                shutil.copyfile(real, t)
            return
        except OSError as e:
            raise _os_error(name, dest, e) from None
    os.replace(tmp, dest)


# --------------------------------------------------------------------------- verification and state

def verify_layout(src: Source, path: Path, configs: Mapping[str, Any] | None, trust_pickle: bool) -> int:
    """Keys and shapes of a checkpoint against the model it feeds (memory-mapped load)."""
    from training import checkpoints as ck
    from training.models.presets import rewas_m

    configs = dict(configs or rewas_m())
    spec = ck.FILES_BY_NAME[src.name]
    try:
        sd = ck.read_released(path, spec, trust_pickle)
        res = ck.route_files({src.name: sd}, configs)
        for component, part in res.state_dicts.items():
            ck.check_state_dict(component, part, configs[component])
    except ck.CheckpointError as e:
        raise ReleaseError(f"{src.name}: {str(e).removeprefix(src.name + ': ')}") from None
    return len(sd)


def verify_tokenizer(folder: Path) -> int:
    from training import tokenizer as T

    try:
        tok = T.from_folder(folder)
    except T.TokenizerError as e:
        raise ReleaseError(f"{folder.name}: {e}") from None
    return tok.get_vocab_size()


def read_state(folder: Path) -> dict[str, Any]:
    try:
        state = json.loads((folder / STATE_NAME).read_text())
    except (OSError, ValueError):
        return {"files": {}}
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or not isinstance(state.get("files"), dict):
        return {"files": {}}
    return state


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    state["version"] = STATE_VERSION
    with atomic_path(folder / STATE_NAME) as tmp:
        Path(tmp).write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def is_current(folder: Path, src: Source, state: Mapping[str, Any], rehash: bool = False) -> bool:
    """The file is there, verified, and unchanged since (size and mtime; ``rehash``: its sha256)."""
    rec = state.get("files", {}).get(src.rel)
    path = folder / src.rel
    if not rec or not path.is_file() or not rec.get("verified"):
        return False
    if rehash:
        return path.stat().st_size == rec["bytes"] and sha256_file(path) == rec["sha256"]
    return _stat_key(path) == rec.get("stat")


def licence_lines(release: Release | None = None) -> list[str]:
    release = release or RELEASE
    by: dict[Licence, list[str]] = {}
    for s in release.sources:
        by.setdefault(s.licence, []).append(s.name)
    return [f"  {lic.name} ({lic.url}): {', '.join(names)}" + (f" — {lic.note}" if lic.note else "")
            for lic, names in by.items()]


def licences_section(folder: Path | None = None, release: Release | None = None) -> list[dict[str, Any]]:
    """For the engine manifest: which licence covers which release file (with its sha256)."""
    release = release or RELEASE
    files = read_state(folder)["files"] if folder is not None else {}
    by: dict[Licence, list[Source]] = {}
    for s in release.sources:
        by.setdefault(s.licence, []).append(s)
    return [{"licence": lic.name, "url": lic.url,
             "files": {s.name: files.get(s.rel, {}).get("sha256") for s in srcs},
             "sources": sorted({s.homepage for s in srcs}), **({"note": lic.note} if lic.note else {})}
            for lic, srcs in by.items()]


def load_configs(path: Path | None) -> dict[str, Any]:
    """The rewas-m component configs, overridden by a JSON ``{component: config}`` file."""
    from training.checkpoints import COMPONENTS
    from training.models.presets import rewas_m

    configs = rewas_m()
    if path is None:
        return configs
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ReleaseError(f"{path}: cannot be read as JSON ({e})") from None
    for name, cfg in data.items():
        if name not in COMPONENTS:
            raise ReleaseError(f"{path}: unknown component '{name}' (known: {', '.join(COMPONENTS)})")
        configs[name] = COMPONENTS[name].config_cls.from_dict(cfg)
    return configs


def import_release(folder: Path, configs: Mapping[str, Any], trust_pickle: bool = False,
                   log: Callable[[str], None] = print, release: Release | None = None) -> Path:
    """``training.import_checkpoints`` of the release folder into ``folder/canonical``; skipped
    when the release files (by sha256) and configs are those of the last import."""
    from training import checkpoints as ck

    release = release or RELEASE
    out = folder / "canonical"
    state = read_state(folder)["files"]
    key = {"files": {s.name: state.get(s.rel, {}).get("sha256") for s in release.sources if s.is_checkpoint},
           "configs": {c: cfg.to_dict() for c, cfg in configs.items()},
           "canonical_version": ck.CANONICAL_VERSION}
    stamp = out / "import.json"
    try:
        if json.loads(stamp.read_text()) == key and all(
                (out / f"{c}.safetensors").is_file() and (out / f"{c}.json").is_file() for c in ck.COMPONENTS):
            log(f"canonical checkpoints in {out}: up to date")
            return out
    except (OSError, ValueError):
        pass
    stamp.unlink(missing_ok=True)
    try:
        ck.import_checkpoints(folder, out, configs, trust_pickle=trust_pickle, log=log)
    except ck.CheckpointError as e:
        raise ReleaseError(str(e)) from None
    with atomic_path(stamp) as tmp:
        Path(tmp).write_text(json.dumps(key, indent=1, sort_keys=True) + "\n")
    return out


def ensure(folder: Path | None = None, *, release: Release | None = None, opts: Options | None = None,
           configs: Mapping[str, Any] | None = None, trust_pickle: bool = False, rehash: bool = False,
           log: Callable[[str], None] = print) -> Path:
    """Make ``folder`` hold every release file, verified; download only what is missing."""
    opts = opts or Options()
    release = release or RELEASE
    folder = Path(folder or DEFAULT_DIR).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReleaseError(f"release folder {folder}: cannot be created ({e.strerror or e})") from None
    state = read_state(folder)
    todo = [s for s in release.sources if not is_current(folder, s, state, rehash)]
    if not todo:
        log(f"release files in {folder}: all {len(release.sources)} present and verified")
        return folder
    for s in todo:  # a changed or unverified file is not trusted: it is fetched again
        state["files"].pop(s.rel, None)
    if opts.is_offline() and any(s.kind != "hub" for s in todo):
        names = ", ".join(s.name for s in todo if s.kind != "hub")
        raise ReleaseError(f"{names}: missing from {folder} and offline mode is on (HF_HUB_OFFLINE); run once "
                           "with network access")
    log("The released model's files come under these licences (by downloading you accept them):")
    for line in licence_lines(release):
        log(line)
    log(f"downloading {len(todo)} file(s) into {folder}")

    def done(src: Source, digest: str, extra: Mapping[str, Any]) -> None:
        path = folder / src.rel
        info: dict[str, Any] = {"bytes": path.stat().st_size, "sha256": digest, "source": src.location,
                                "kind": src.kind, "licence": src.licence.name, **extra}
        try:
            if src.is_checkpoint:
                info["keys"] = verify_layout(src, path, configs, trust_pickle)
        except ReleaseError:
            path.unlink(missing_ok=True)
            (folder / f"{src.rel}.sha256").unlink(missing_ok=True)
            raise
        (folder / f"{src.rel}.sha256").write_text(f"{digest}  {src.name}\n")
        info["verified"] = True
        info["stat"] = _stat_key(path)
        state["files"][src.rel] = info
        _write_state(folder, state)
        log(f"{src.rel}: {_gb(info['bytes'])}, sha256 {digest[:16]}…, verified")

    tar_todo = [s for s in todo if s.kind == "tar"]
    for src in todo:
        dest = folder / src.rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.kind == "hub":
            digest, extra = download_hub(src, dest, opts)
            done(src, digest, extra)
        elif src.kind == "url":
            digest = download_url(src, dest, opts)
            done(src, digest, {})
    if tar_todo:
        wanted = {s.path: folder / s.rel for s in tar_todo}
        digests = extract_members(release.archive, wanted, opts, log, sum(s.approx_bytes for s in tar_todo))
        for s in tar_todo:
            done(s, digests[s.path], {"archive": release.archive.name})
    tok_sources = [s for s in release.sources if s.subdir == TOKENIZER_SUBDIR]
    if tok_sources:
        try:
            verify_tokenizer(folder / TOKENIZER_SUBDIR)
        except ReleaseError:
            for s in tok_sources:  # not usable: fetched again next time
                state["files"].pop(s.rel, None)
                (folder / s.rel).unlink(missing_ok=True)
            _write_state(folder, state)
            raise
    return folder


# --------------------------------------------------------------------------- CLI

@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.release", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=None, help=f"release folder (default: {DEFAULT_DIR})")
    p.add_argument("--rehash", action="store_true", help="re-check every file's sha256, not only size and date")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling for checkpoints that are not plain tensor pickles")
    p.add_argument("--licences", action="store_true", help="print the sources and licences and exit")
    args = p.parse_args(argv)
    if args.licences:
        for s in RELEASE.sources:
            print(f"{s.rel}: {s.kind} {s.location}{' :: ' + s.path if s.kind != 'url' else ''} "
                  f"(≈ {_gb(s.approx_bytes)}), {s.licence.name}")
        return 0
    # Interrupted (cli_main: exit 130), finished files are kept and partial downloads resume on the next run.
    ensure(args.dir, rehash=args.rehash, trust_pickle=args.trust_pickle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
