"""One error model (RewasError + cli_main), one atomic-write helper, imports flowing one way."""
from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path

import pytest

from rewas_rt import atomic
from rewas_rt.errors import ConfigError, InputError, MissingFileError, RewasError, cli_main

ROOT = Path(__file__).resolve().parents[1]

# Every command-line entry point of the repository (pyproject's rewas-rt and the scripts).
def _entry_points() -> tuple[str, ...]:
    """Every script in benchmarks/, export/ and training/ (a module with a ``__main__`` block), and
    pyproject's ``rewas-rt``: found, not listed, so a new script without ``cli_main`` fails here."""
    found = ["rewas_rt.cli"]
    for package in ("benchmarks", "export", "training"):
        for p in sorted((ROOT / package).rglob("*.py")):
            if 'if __name__ == "__main__"' in p.read_text():
                found.append(".".join(p.relative_to(ROOT).with_suffix("").parts))
    return tuple(found)


ENTRY_POINTS = _entry_points()
# Every user-facing error class: module, name.
ERRORS = (
    ("rewas_rt.manifest", "ManifestError"), ("rewas_rt.backends.base", "BackendError"),
    ("training.data", "DataError"), ("training.checkpoints", "CheckpointError"),
    ("training.tokenizer", "TokenizerError"), ("export.build_engines", "BuildError"),
    ("export.tensorrt_build", "EngineBuildError"), ("export.export_onnx", "ExportError"),
    ("export.release", "ReleaseError"),
)


def test_cli_main_maps_errors_and_interrupts(capsys):
    def run(exc):
        @cli_main
        def main(argv=None):
            if exc is not None:
                raise exc
        return main([])

    assert run(None) == 0
    assert run(InputError("video.mp4: no video stream")) == 1
    assert capsys.readouterr().err == "error: video.mp4: no video stream\n"
    assert run(KeyboardInterrupt()) == 130
    assert capsys.readouterr().err == "interrupted\n"
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run(ZeroDivisionError("bug"))


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_entry_point_uses_cli_main(module, monkeypatch, capsys):
    """Drive the real ``main``: a RewasError raised inside it becomes ``error: …`` and exit 1."""
    mod = importlib.import_module(module)
    assert mod.main.__wrapped__ is not None  # functools.wraps of cli_main

    def boom(*a, **k):
        raise ConfigError("a typo in the config")

    monkeypatch.setattr("argparse.ArgumentParser.parse_args", boom)
    assert mod.main([]) == 1
    assert capsys.readouterr().err == "error: a typo in the config\n"


@pytest.mark.parametrize("module,name", ERRORS)
def test_user_facing_errors_derive_from_rewas_error(module, name):
    assert issubclass(getattr(importlib.import_module(module), name), RewasError)


def test_missing_file_error_is_both():
    assert issubclass(MissingFileError, FileNotFoundError) and issubclass(MissingFileError, InputError)


def _umask() -> int:
    mask = os.umask(0o022)  # the test may set it: it runs single-threaded
    os.umask(mask)
    return mask


@pytest.mark.parametrize("proc", [True, False], ids=["proc-status", "probe-file"])
def test_default_file_mode_leaves_the_umask_alone(proc, monkeypatch, tmp_path):
    old = os.umask(0o027)
    try:
        if not proc:
            monkeypatch.setattr(atomic, "_umask_from_proc", lambda: None)

        def forbidden(*a):
            raise AssertionError("os.umask called")

        monkeypatch.setattr(os, "umask", forbidden)
        assert atomic.default_file_mode() == 0o640
        with atomic.atomic_path(tmp_path / "x.txt") as tmp:
            Path(tmp).write_text("x")
        assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o640  # as a plain open() would give
    finally:
        monkeypatch.undo()
        os.umask(old)


def test_atomic_path_failure_leaves_nothing(tmp_path):
    (tmp_path / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(tmp_path / "a.txt") as tmp:
            Path(tmp).write_text("half")
            raise RuntimeError("writer failed")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old"


def test_atomic_path_fsyncs_before_rename(tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(atomic, "fsync_path", lambda p: events.append(("fsync", Path(p).name)))
    real_replace = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append(("replace", Path(a).name)), real_replace(a, b)))
    atomic.atomic_write_text(tmp_path / "b.json", "{}")
    assert [e[0] for e in events] == ["fsync", "replace"] and events[0][1] == events[1][1]


# --------------------------------------------------------------------------- import direction

# benchmarks -> export -> training -> rewas_rt: a package may import only those after it.
LAYERS = ("benchmarks", "export", "training", "rewas_rt")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", LAYERS)
def test_imports_flow_one_way(package):
    above = set(LAYERS[: LAYERS.index(package)])
    bad = {str(p.relative_to(ROOT)): sorted(_imports(p) & above) for p in (ROOT / package).rglob("*.py")}
    assert {k: v for k, v in bad.items() if v} == {}


def _modules(path: Path) -> set[str]:
    return {n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Import) for a in n.names}


def test_presets_do_not_import_checkpoints():
    """training.checkpoints uses the presets; the presets (also lazily) never use it back."""
    assert "training.checkpoints" not in _modules(ROOT / "training/models/presets.py")
