"""The errors fidesr reports to a user as one clear line.

Every error that is the user's input (a file, a key, a value) rather than a bug derives from
:class:`FidesrError`; the command-line tools print such an error as ``<prog>: error: <message>`` and exit
non-zero, and show the traceback only with ``--debug`` (argparse tools) or ``HYDRA_FULL_ERROR=1`` (Hydra
tools). Anything else is a bug and keeps its traceback.

A full disk (``ENOSPC``, a quota, a file-size limit) is the user's problem too: :func:`user_error` turns it
into ``no space left writing PATH (...)``, whichever library was writing.

The subclasses also derive from the built-in type code would catch (``ValueError``, ``FileNotFoundError``,
``RuntimeError``), so ``except ValueError`` keeps working where it did.
"""

from __future__ import annotations

import errno
import io
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class FidesrError(Exception):
    """Base of the errors caused by the user's input; the message names the file or key."""


class ModelFileError(FidesrError, ValueError):
    """A model file (checkpoint, exported folder, official ``.pkl``, Hub repo) is not what its loader
    expects, or is not allowed to be loaded; the message names the file and what is wrong."""


class UntrustedConfigError(ModelFileError):
    """A config stored in a model file names something outside fidesr's allow-list."""


class PickleRefusedError(ModelFileError):
    """A ``.ckpt``/``.pkl`` needs more than weights-only loading allows. The message says so without
    naming a way out: what the user can do depends on the command (``report_errors``' ``advice``)."""


#: The advice of the commands that take ``--unsafe-pickle`` (fidesr-upscale, fidesr-app, fidesr-export).
UNSAFE_PICKLE_ADVICE = {
    PickleRefusedError: "if you trust the file's origin, --unsafe-pickle unpickles it fully, which runs any "
    "code it names"
}


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


#: ``errno`` of a write that found no room: no space left, disk quota exceeded, file-size limit
#: (``RLIMIT_FSIZE``, with SIGXFSZ ignored).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class DiskFullError(FidesrError, OSError):
    """A file could not be written for want of space (or quota, or a file-size limit); the message names
    the file. Its ``errno`` is the original one."""


def _disk_full_errno(exc: BaseException) -> int | None:
    """The errno of :data:`DISK_FULL_ERRNOS` that ``exc`` reports: an ``OSError``'s, or the ``(os error N)``
    that Rust writers (safetensors) put in their message; None otherwise."""
    if isinstance(exc, OSError):
        return exc.errno if exc.errno in DISK_FULL_ERRNOS else None
    found = _RUST_OS_ERROR.search(str(exc))
    return int(found.group(1)) if found and int(found.group(1)) in DISK_FULL_ERRNOS else None


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def full_disk_cause(exc: BaseException) -> BaseException | None:
    """The error of a full disk that is ``exc`` or that it was raised from (torch's writer turns a failed
    ``write()`` into a ``RuntimeError``, safetensors into a ``SafetensorError``); None if there is none."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if _disk_full_errno(exc) is not None:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised from, a full disk (:data:`DISK_FULL_ERRNOS`)."""
    return full_disk_cause(exc) is not None


def disk_full_error(exc: BaseException, path: str | os.PathLike | None = None) -> DiskFullError:
    """The one-line :class:`DiskFullError` of a full-disk ``exc``: ``no space left writing PATH (reason)``.

    ``path`` (else the error's own file name, else the file being written in the frames of its traceback:
    a bare ``write()`` error names no file) is the file named.
    """
    if isinstance(exc, DiskFullError):
        return exc
    cause = full_disk_cause(exc) or exc
    code = _disk_full_errno(cause)
    where = path or getattr(cause, "filename", None) or _file_being_written(cause) or "a file"
    out = DiskFullError(f"no space left writing {os.fspath(where)} ({os.strerror(code) if code else cause})")
    out.errno = code
    return out


def _file_being_written(exc: BaseException) -> str | None:
    """The name of the innermost open file (a local of a frame of ``exc``'s traceback) opened for writing."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            name, mode = getattr(value, "name", None), getattr(value, "mode", "")
            if isinstance(value, io.IOBase) and isinstance(name, str) and any(c in str(mode) for c in "wax+"):
                found = name
        tb = tb.tb_next
    return found


def user_error(exc: BaseException) -> FidesrError | None:
    """The :class:`FidesrError` behind ``exc``: itself, or one it was raised from (Hydra's instantiate
    wraps a constructor's error in its own ``InstantiationException``); a full disk (an ``OSError`` of
    :data:`DISK_FULL_ERRNOS`, whoever wrote) becomes a :class:`DiskFullError` naming the file."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, FidesrError):
            return exc
        if _disk_full_errno(exc) is not None:
            return disk_full_error(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def debug_requested(argv_flag: bool = False) -> bool:
    """Whether to show tracebacks: ``--debug`` or ``HYDRA_FULL_ERROR=1`` (Hydra's own switch)."""
    return argv_flag or os.environ.get("HYDRA_FULL_ERROR") == "1"


def report_errors(
    prog: str,
    func: Callable[[], T],
    debug: bool = False,
    advice: Mapping[type[FidesrError], str] | None = None,
) -> T:
    """Run ``func``; a :class:`FidesrError` (or an error raised from one) becomes ``prog: error: message``
    on stderr and exit status 1.

    With ``debug`` (or ``HYDRA_FULL_ERROR=1``) the traceback is printed as well. Other exceptions are
    bugs and propagate unchanged. ``advice``: what this command lets the user do about an error type,
    appended as ``message; advice`` (e.g. :data:`UNSAFE_PICKLE_ADVICE`: only the commands with the option
    name it).
    """
    try:
        return func()
    except Exception as exc:
        err = user_error(exc)
        if err is None:
            raise
        if debug_requested(debug):
            traceback.print_exc()
        hint = next((text for kind, text in (advice or {}).items() if isinstance(err, kind)), None)
        print(f"{prog}: error: {err}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        raise SystemExit(1) from None


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint (raised by ``fidesr-train`` after fit). Not a
    :class:`FidesrError`: nothing was wrong; ``fidesr-train`` says how to resume and exits 128 + signal."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path | None) -> None:
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        where = (
            f"checkpoint saved: {checkpoint}"
            if checkpoint
            else "no checkpoint (stopped before the first step)"
        )
        super().__init__(f"{signal_name} at step {step}: {where}")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process stopped by that signal (130, 143)."""
        return 128 + int(getattr(signal, self.signal_name, signal.SIGINT))
