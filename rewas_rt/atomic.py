"""Atomic output files: readers never see a partial file, failures leave none."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from rewas_rt.errors import OutputError


def _os_reason(err: OSError, directory: str) -> str:
    if isinstance(err, FileNotFoundError):
        return f"directory {directory} does not exist"
    if isinstance(err, NotADirectoryError):
        return f"{directory} is not a directory"
    if isinstance(err, PermissionError):
        return "permission denied"
    return err.strerror or str(err)


def default_file_mode() -> int:
    """0666 minus the umask: the mode a plain ``open(..., 'w')`` gives."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; it replaces ``path`` when the block succeeds.

    The temporary file lives in the target's directory (``os.replace`` is atomic only
    within one file system) and keeps the target's extension, so writers that infer
    the format from the name still work. On any exception it is removed.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{os.path.splitext(name)[1]}", dir=directory)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {_os_reason(err, directory)}") from None
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data reaches the disk before the name does
        finally:
            os.close(fd)
        os.chmod(tmp, default_file_mode())  # mkstemp creates 0600; give the usual permissions
        try:
            os.replace(tmp, path)
        except OSError as err:
            raise OutputError(f"cannot write {path}: {_os_reason(err, directory)}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
