"""Atomic output files: readers never see a partial file, failures leave none.

The one mechanism every writer in the repository uses (runtime outputs, manifests,
ONNX graphs, TensorRT plans, training checkpoints): ``atomic_path`` for one file,
``atomic_write_bytes``/``atomic_write_text`` for in-memory data.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rewas_rt.errors import OutputError


def os_reason(err: OSError, directory: str | os.PathLike) -> str:
    """A short reason for an ``OSError`` on a file in ``directory``."""
    if isinstance(err, FileNotFoundError):
        return f"directory {directory} does not exist"
    if isinstance(err, NotADirectoryError):
        return f"{directory} is not a directory"
    if isinstance(err, PermissionError):
        return "permission denied"
    return err.strerror or str(err)


def _umask_from_proc() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_file_mode() -> int:
    """0666 minus the umask: the mode a plain ``open(..., 'w')`` gives.

    Found without changing the process umask (``os.umask`` sets it, even for a moment,
    for every thread): from ``/proc/self/status`` (Linux >= 4.7), else by creating a
    probe file with mode 0666 and reading the mode the kernel gave it.
    """
    mask = _umask_from_proc()
    if mask is not None:
        return 0o666 & ~mask
    with tempfile.TemporaryDirectory(prefix="rewas-mode-") as d:
        probe = os.path.join(d, "probe")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        return stat.S_IMODE(os.stat(probe).st_mode)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a written file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: str | os.PathLike) -> str:
    """A fresh hidden name beside ``path`` that keeps its extension (writers infer formats from it)."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp{os.path.splitext(name)[1]}")


def create_temp(path: str | os.PathLike) -> str:
    """Create an empty temporary file beside ``path`` (mode 0666 minus the umask, as ``open`` gives)."""
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    for _ in range(100):
        tmp = temp_name(path)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
        except OSError as err:
            raise OutputError(f"cannot write {path}: {os_reason(err, directory)}") from None
    raise OutputError(f"cannot write {path}: no free temporary name in {directory}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; it replaces ``path`` when the block succeeds.

    The temporary file lives in the target's directory (``os.replace`` is atomic only
    within one file system), keeps the target's extension, and is fsynced before the
    rename. On any exception it is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = create_temp(path)
    try:
        yield tmp
        fsync_path(tmp)  # the data reaches the disk before the name does
        try:
            os.replace(tmp, path)
        except OSError as err:
            raise OutputError(f"cannot write {path}: {os_reason(err, directory)}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def publish_together(pairs: list[tuple[str, str]]) -> None:
    """Rename each fsynced temporary file onto its target, all or none.

    Renames cannot be one atomic step, so each target that existed is first kept under a
    hard-linked backup name; if a later rename fails, the earlier ones are rolled back
    from those backups. (A crash between two renames can still leave a mix.)
    """
    backups: list[tuple[str, str | None]] = []
    try:
        for tmp, final in pairs:
            backup = None
            if os.path.exists(final):
                backup = temp_name(final)
                os.link(final, backup)
            backups.append((final, backup))
            os.replace(tmp, final)
    except OSError as err:
        for final, backup in reversed(backups):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, final)
                else:
                    os.unlink(final)
        final = pairs[len(backups) - 1][1] if backups else pairs[0][1]
        raise OutputError(f"cannot write {final}: {os_reason(err, os.path.dirname(os.path.abspath(final)))}") from None
    finally:
        for _, backup in backups:
            if backup is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(backup)


@contextlib.contextmanager
def atomic_paths(paths: list[str | os.PathLike]) -> Iterator[list[str]]:
    """``atomic_path`` for several outputs of one request: yield one temporary path per target;
    only when the whole block succeeds are all of them fsynced and published together
    (``publish_together``). On any exception no target is touched and no temporary is left."""
    paths = [os.fspath(p) for p in paths]
    if len(set(map(os.path.abspath, paths))) != len(paths):
        raise OutputError("the same output file is named twice: " + ", ".join(paths))
    tmps: list[str] = []
    try:
        for p in paths:
            tmps.append(create_temp(p))
        yield list(tmps)
        for t in tmps:
            fsync_path(t)
        publish_together(list(zip(tmps, paths)))
    finally:
        for t in tmps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(t)
