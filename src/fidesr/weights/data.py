"""Weight files as data: nothing a downloaded file holds is unpickled beyond tensors and plain values.

The registry knows the full sha256 of some files and only the 8 hex digits of the file name of others
(torchvision's and pyiqa's ``name-<sha256 prefix>.pth`` convention). A prefix proves little: a file sharing
8 hex digits costs about a minute of brute force. So a prefix-only file is accepted only once it is also
*proven data*: ``prove_data`` loads it with ``torch.load(weights_only=True)`` (tensors, numbers, strings,
containers; no other class is constructed, no function called) when it is fetched, installed or linked and
whenever its status is computed afresh.

At use, every metric network and the perceptual loss are built inside ``data_only_loads``: for the block,
``torch.load`` is ours, so the libraries' own calls (pyiqa's ``weights_only=False``, torch.hub's, lpips')
receive the state dict our weights-only load made (their key handling then runs as usual), and a file that
needs more is refused naming it before any of its code could run. This holds for full-hash files too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from fidesr.errors import FidesrError


class WeightsNotDataError(FidesrError, RuntimeError):
    """A weight file holds more than tensors and plain values (or is no torch file at all): refused.

    ``reason``: what the weights-only unpickler refused (``Unsupported global: GLOBAL builtins.exec``)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


def _why(err: BaseException) -> str:
    """torch's long weights-only message cut to the offending global (``GLOBAL builtins.exec ...``)."""
    text = str(err)
    found = re.search(
        r"(Unsupported global: GLOBAL [\w.]+|Unsupported operand \S+|Trying to call [^.\n]+)", text
    )
    first = text.splitlines()[0].split(". ")[0] if text else ""
    return found.group(1) if found else f"{type(err).__name__}: {first}"


def _name(f: str | os.PathLike | IO[bytes]) -> str:
    return str(getattr(f, "name", f))


def load_data(f: str | os.PathLike | IO[bytes], map_location: Any = "cpu", **kwargs: Any) -> Any:
    """``torch.load(f, weights_only=True)``; anything it refuses becomes ``WeightsNotDataError`` naming ``f``.

    Args:
        f: a path or an open binary file.
        map_location: as ``torch.load``'s.
        kwargs: other ``torch.load`` options (``mmap``, ``encoding``); ``weights_only`` and
            ``pickle_module`` are ignored (always the weights-only unpickler).
    """
    import torch.serialization  # its ``load`` is the real one whatever ``data_only_loads`` put in ``torch.load``

    kwargs = {k: v for k, v in kwargs.items() if k not in ("weights_only", "pickle_module") and v is not None}
    try:
        return torch.serialization.load(f, map_location=map_location, weights_only=True, **kwargs)
    except OSError:
        raise
    except Exception as err:  # the weights-only unpickler on anything else: refusal, garbage, truncation
        if isinstance(err, RuntimeError) and "Attempting to deserialize object on" in str(err):
            raise  # about the machine (a CUDA location without CUDA), not the file
        why = f"not plain tensor data ({_why(err)})"
        raise WeightsNotDataError(
            f"{_name(f)}: {why}; refused: fidesr never unpickles a weight file beyond tensors (fetch it "
            "again from its source: `fidesr-weights download`)",
            why,
        ) from None


def prove_data(path: str | os.PathLike) -> str | None:
    """None when ``path`` loads as plain data (``load_data``), else why not (one line)."""
    try:
        load_data(path)
    except WeightsNotDataError as err:
        return err.reason
    except OSError as err:
        return f"unreadable ({type(err).__name__}: {err})"
    return None


@contextmanager
def data_only_loads() -> Iterator[None]:
    """For the block, ``torch.load`` is ``load_data``: whatever a library asks for, a weight file is read
    with the weights-only unpickler, and one that needs more raises ``WeightsNotDataError``. Restored after
    (nested scopes restore in order)."""
    import torch

    saved = torch.load

    def load(f: Any, map_location: Any = None, pickle_module: Any = None, **kwargs: Any) -> Any:
        return load_data(f, map_location, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = saved
