"""The errors fidesr reports to a user as one clear line.

Every error that is the user's input (a file, a key, a value) rather than a bug derives from
:class:`FidesrError`; the command-line tools print such an error as ``<prog>: error: <message>`` and exit
non-zero, and show the traceback only with ``--debug`` (argparse tools) or ``HYDRA_FULL_ERROR=1`` (Hydra
tools). Anything else is a bug and keeps its traceback.

The subclasses also derive from the built-in type code would catch (``ValueError``, ``FileNotFoundError``,
``RuntimeError``), so ``except ValueError`` keeps working where it did.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class FidesrError(Exception):
    """Base of the errors caused by the user's input; the message names the file or key."""


class ModelFileError(FidesrError, ValueError):
    """A model file (checkpoint, exported folder, official ``.pkl``, Hub repo) is not what its loader
    expects, or is not allowed to be loaded; the message names the file and what is wrong."""


class UntrustedConfigError(ModelFileError):
    """A config stored in a model file names something outside fidesr's allow-list."""


class ConfigValueError(FidesrError, ValueError):
    """A configuration value has the wrong type or is out of range; the message names the key."""


class MissingInputError(FidesrError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class NonFiniteOutputError(FidesrError, RuntimeError):
    """The model's output for some images is not finite (NaN or Inf): a per-image error, never a black
    image. ``indices``: those images' positions in the batch; ``output``: the whole batch's result (the
    other images are fine to use). Callers name the images."""

    def __init__(self, message: str, indices: Sequence[int] = (), output: Any = None) -> None:
        super().__init__(message)
        self.indices, self.output = list(indices), output


def user_error(exc: BaseException) -> FidesrError | None:
    """The :class:`FidesrError` behind ``exc``: itself, or one it was raised from (Hydra's instantiate
    wraps a constructor's error in its own ``InstantiationException``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, FidesrError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def debug_requested(argv_flag: bool = False) -> bool:
    """Whether to show tracebacks: ``--debug`` or ``HYDRA_FULL_ERROR=1`` (Hydra's own switch)."""
    return argv_flag or os.environ.get("HYDRA_FULL_ERROR") == "1"


def report_errors(prog: str, func: Callable[[], T], debug: bool = False) -> T:
    """Run ``func``; a :class:`FidesrError` (or an error raised from one) becomes ``prog: error: message``
    on stderr and exit status 1.

    With ``debug`` (or ``HYDRA_FULL_ERROR=1``) the traceback is printed as well. Other exceptions are
    bugs and propagate unchanged.
    """
    try:
        return func()
    except Exception as exc:
        err = user_error(exc)
        if err is None:
            raise
        if debug_requested(debug):
            traceback.print_exc()
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
