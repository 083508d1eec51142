"""The trust boundary for model files: what is read from a file is data, never code.

Two rules, applied by every loader (:mod:`fidesr.model_files`):

* **Tensors and plain values only.** ``.ckpt`` / ``.pkl`` / ``.pt`` files are read with
  ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, dicts; no arbitrary classes),
  everything else fidesr writes is safetensors or JSON. There is no silent retry with full unpickling:
  :func:`load_torch_file` unpickles fully only when the caller passes ``unsafe_pickle=True``, which the
  command-line tools expose as ``--unsafe-pickle`` for a foreign file the user vouches for.
* **A stored config may only select fidesr's own components.** Before anything in a stored config is
  instantiated, :func:`check_stored_config` walks it: every ``_target_`` must be in
  :data:`ALLOWED_TARGETS`, every other value must be a plain value (number, string, bool, None, list,
  dict), and no string may hold an ``${...}`` interpolation (stored configs are resolved). Anything else
  raises :class:`~fidesr.errors.UntrustedConfigError` naming the file and the key.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fidesr.errors import ModelFileError, PickleRefusedError, UntrustedConfigError

#: What a stored config may instantiate: the model parts an inference model is rebuilt from (backbone,
#: LRRB, LFIM). tests/test_trust.py checks that every target of conf/{backbone,lrrb,lfim} is here.
ALLOWED_TARGETS: frozenset[str] = frozenset(
    {
        "fidesr.backbone.StableDiffusionBackbone.from_pretrained",
        "fidesr.backbone.build_tiny_backbone",
        "fidesr.components.lrrb.LatentResidualRefinementBlock",
        "fidesr.components.lfim.LatentFrequencyInjection",
    }
)
#: Hydra's own keys, with the values they may take.
_HYDRA_KEYS = {
    "_convert_": {"none", "partial", "object", "all"},
    "_recursive_": {True, False},
    "_partial_": {False},
}
_PLAIN = (str, int, float, bool, type(None))


def check_stored_config(node: Any, source: str | os.PathLike, key: str = "") -> None:
    """Refuse a stored config that is more than a selection of allow-listed components and plain values.

    Args:
        node: the config (a dict from JSON or a checkpoint), or a part of it.
        source: the file it came from, named in the error.
        key: the dotted key of ``node`` (for the message).

    Raises:
        UntrustedConfigError: naming ``source`` and the key of the first offending entry.
    """
    where = key or "<root>"
    if isinstance(node, Mapping):
        for k, v in node.items():
            if not isinstance(k, str):
                raise UntrustedConfigError(f"{source}: config key {k!r} under {where} is not a string")
            sub = f"{key}.{k}" if key else k
            if k == "_target_":
                if v not in ALLOWED_TARGETS:
                    raise UntrustedConfigError(
                        f"{source}: refusing to load: the stored config's {sub} = {v!r} is not one of fidesr's "
                        f"model components (allowed: {', '.join(sorted(ALLOWED_TARGETS))})"
                    )
            elif k in _HYDRA_KEYS:
                if v not in _HYDRA_KEYS[k]:
                    raise UntrustedConfigError(f"{source}: the stored config's {sub} = {v!r} is not allowed")
            elif k.startswith("_") and k.endswith("_") and k != "_args_":
                raise UntrustedConfigError(f"{source}: the stored config's {sub} is not an allowed Hydra key")
            else:
                check_stored_config(v, source, sub)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            check_stored_config(v, source, f"{key}[{i}]")
    elif not isinstance(node, _PLAIN):
        raise UntrustedConfigError(
            f"{source}: the stored config's {where} is a {type(node).__name__}, not a plain value"
        )
    elif isinstance(node, str) and "${" in node:
        raise UntrustedConfigError(f"{source}: the stored config's {where} holds an interpolation ({node!r})")


def load_torch_file(path: str | os.PathLike, what: str, unsafe_pickle: bool = False) -> Any:
    """``torch.load`` a file as data (``weights_only=True``), on the CPU.

    Args:
        path: the file.
        what: what the file should be (``"training checkpoint"``), for the messages.
        unsafe_pickle: unpickle fully (``weights_only=False``): runs whatever code the file names. Only for
            a foreign file the user trusts; a warning says so.

    Raises:
        ModelFileError: the file is missing or is not a torch file; :class:`PickleRefusedError` when it needs
            more than ``weights_only`` allows (the message names the type it wanted; each command adds
            its own way out, if it has one).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} not found: {path}")
    if unsafe_pickle:
        warnings.warn(
            f"{path}: fully unpickling (--unsafe-pickle): any code the file names runs now", stacklevel=2
        )
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with (
            warnings.catch_warnings()
        ):  # torch's note on foreign pickle protocols: the outcome is what counts
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():  # not a pickle at all: random bytes, another format
            raise ModelFileError(
                f"{path} is not a readable {what} (corrupt or not a torch file): {err}"
            ) from err
        # torch's message names the global the file asked for: keep the line that says which.
        lines = [ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        reason = lines[0] if lines else "unsupported type"
        # No way out named here: it depends on the command (report_errors' advice; unsafe_pickle=True in Python).
        raise PickleRefusedError(
            f"{path}: refusing to load this {what}: it is not made of tensors and plain values only "
            f"(corrupt, or a pickle that names code: {reason}); fidesr loads model files as data only"
        ) from err
    except Exception as err:  # noqa: BLE001 - arbitrary bytes raise anything (IndexError, EOFError, ...)
        raise ModelFileError(
            f"{path} is not a readable {what} (corrupt, truncated or not a torch file): {type(err).__name__}: {err}"
        ) from err
