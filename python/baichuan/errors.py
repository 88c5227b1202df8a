"""The one base class of this package's user-facing errors.

Every error that means "the user's input or environment is wrong" (a bad file, a refused flag, a
checkpoint that does not fit) derives from :class:`BaichuanError`; ``baichuan.cli.main`` catches
it (and ``OSError``) once and prints ``baichuan <command>: error: <message>`` without a traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class BaichuanError(Exception):
    """A user mistake or a bad input, reported as one line by the command line."""

    exit_code: int = 2


class RefusedError(BaichuanError, ValueError):
    """A flag or an input was refused before any work was done (e.g. an unsafe ``--overwrite``)."""


class TrainingError(BaichuanError, RuntimeError):
    """The run cannot continue (bad input, diverged loss, inconsistent checkpoint)."""
