"""The one base class of this package's user-facing errors.

Every error that means "the user's input or environment is wrong" (a bad file, a refused flag, a
checkpoint that does not fit) derives from :class:`BaichuanError`; ``baichuan.cli.main`` catches
it (and ``OSError``) once and prints ``baichuan <command>: error: <message>`` without a traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class BaichuanError(Exception):
    """A user mistake or a bad input, reported as one line by the command line."""

    exit_code: int = 2


class RefusedError(BaichuanError, ValueError):
    """A flag or an input was refused before any work was done (e.g. an unsafe ``--overwrite``)."""


@contextmanager
def as_user_error(*types: type[BaseException]) -> Iterator[None]:
    """Inside, an exception of ``types`` (say a library's ``ValueError`` for a bad flag, or
    sentencepiece's ``RuntimeError``) is the user's input, not our bug: it is re-raised as a
    :class:`BaichuanError` with the same message, for ``cli.main`` to print as one line."""
    try:
        yield
    except BaichuanError:
        raise
    except types as e:
        raise BaichuanError(str(e) or type(e).__name__) from e


class TrainingError(BaichuanError, RuntimeError):
    """The run cannot continue (bad input, diverged loss, inconsistent checkpoint)."""
