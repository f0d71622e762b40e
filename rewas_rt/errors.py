"""User-facing errors and the one command-line wrapper that reports them.

Every error a user can fix (bad input, bad option, bad output path, an unusable engine
or checkpoint directory, ...) derives from ``RewasError``; its message is one line that
says what is wrong with which file. ``cli_main`` turns it into ``error: <message>`` and
exit status 1 for every command-line entry point (``rewas-rt``, ``export/*.py``,
``training/*.py``, ``benchmarks/*.py``). Anything else escaping is a bug and keeps its
traceback.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence


class RewasError(Exception):
    """Base class of the errors a user can fix (bad input, bad output path, ...)."""


class InputError(RewasError):
    """An input file is missing, unreadable or unusable."""


class OutputError(RewasError):
    """An output file cannot be written."""


class BackendError(RewasError):
    """A backend is unusable here, an engine cannot be loaded, or a call was fed wrongly."""


class ConfigError(RewasError, ValueError):
    """A configuration (JSON file, ``--set`` override, command-line option) is invalid."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder the command needs does not exist."""


# Exit statuses of ``cli_main``.
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def cli_main(fn: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Decorate a command's ``main(argv)``: ``RewasError`` -> ``error: …`` on stderr and exit
    status 1, Ctrl-C -> ``interrupted`` and 130; ``None`` returned counts as success (0).

    ``argparse`` usage errors keep their own ``SystemExit(2)``.
    """

    @functools.wraps(fn)
    def main(argv: Sequence[str] | None = None) -> int:
        try:
            rc = fn(argv)
        except RewasError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        return 0 if rc is None else int(rc)

    return main
