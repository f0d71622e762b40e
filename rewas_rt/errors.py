"""User-facing errors: the CLI prints ``error: <message>`` and exits non-zero.

Messages are one line and say what is wrong with which file; no traceback is
shown for these. Anything else escaping the runtime is a bug.
"""
from __future__ import annotations


class RewasError(Exception):
    """Base class of the errors a user can fix (bad input, bad output path, ...)."""


class InputError(RewasError):
    """An input file is missing, unreadable or unusable."""


class OutputError(RewasError):
    """An output file cannot be written."""
