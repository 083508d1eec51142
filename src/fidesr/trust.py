"""The trust boundary for model files: what is read from a file is data, never code.

Two rules, applied by every loader (:mod:`fidesr.modelio.read`):

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
* **Every argument has a type and a bound.** Each section (``backbone``, ``lrrb``, ``lfim``) may only
  name its own targets (:data:`SECTION_TARGETS`), and every argument of a target must be one that
  :data:`TARGET_ARGS` lists, of its type and within its bounds (the ``model`` section likewise,
  :data:`MODEL_ARGS`); the LRRB also has a parameter budget. This is checked before anything is built, so
  a model file cannot allocate 10 GB or train for 1e9 steps. Locations are not the file's to choose: a
  stored ``cache_dir`` is accepted and ignored (:data:`LOCATION_ARGS`; the tiny backbone is built in the
  user's ``$FIDESR_CACHE_DIR``, else ``~/.cache/fidesr``). The one path a stored config names is the base
  model (``backbone.pretrained``: a Hub id or a diffusers folder, read as data; ``--pretrained`` replaces
  it).
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fidesr.components.lrrb import LatentResidualRefinementBlock
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


@dataclass(frozen=True)
class Arg:
    """What a stored config may give one argument: its type and, for numbers, inclusive bounds.

    ``kind``: ``"int"``, ``"float"``, ``"bool"``, ``"str"``, ``"choice"`` (one of ``choices``), ``"ints"``
    (a list of ints, each within the bounds and a multiple of ``multiple``) or ``"strs"`` (a list of
    strings); ``length``: the lengths a list may have; ``none``: null allowed too.
    """

    kind: str
    lo: float = 0
    hi: float = 0
    choices: tuple[Any, ...] = ()
    none: bool = False
    multiple: int = 1
    length: tuple[int, int] = (0, 0)

    def check(self, value: Any, where: str) -> None:
        """Raise :class:`UntrustedConfigError` (``where = value`` and what it should be) unless it fits."""
        if value is None and self.none:
            return
        if self.kind == "choice":
            ok = any(value == c and type(value) is type(c) for c in self.choices)
            if not ok:
                raise UntrustedConfigError(
                    f"{where} = {short_repr(value)} is not one of {', '.join(map(repr, self.choices))}"
                )
        elif self.kind in ("ints", "strs"):
            lo, hi = self.length
            if not isinstance(value, (list, tuple)) or not lo <= len(value) <= hi:
                raise UntrustedConfigError(
                    f"{where} = {short_repr(value)} is not a list of {lo} to {hi} items"
                )
            item = Arg("int", self.lo, self.hi, multiple=self.multiple) if self.kind == "ints" else Arg("str")
            for i, v in enumerate(value):
                item.check(v, f"{where}[{i}]")
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise UntrustedConfigError(f"{where} = {short_repr(value)} is not true or false")
        elif self.kind == "str":
            if not isinstance(value, str):
                raise UntrustedConfigError(f"{where} = {short_repr(value)} is not a string")
        else:
            number = (int,) if self.kind == "int" else (int, float)
            if isinstance(value, bool) or not isinstance(value, number):
                raise UntrustedConfigError(
                    f"{where} = {short_repr(value)} is not {'an integer' if self.kind == 'int' else 'a number'}"
                )
            if not math.isfinite(value):
                raise UntrustedConfigError(f"{where} = {value} is not finite")
            if not self.lo <= value <= self.hi or (self.kind == "int" and value % self.multiple):
                step = f", a multiple of {self.multiple}" if self.multiple > 1 else ""
                raise UntrustedConfigError(
                    f"{where} = {value} is out of bounds (from {self.lo:g} to {self.hi:g}{step})"
                )


def _int(lo: int, hi: int, multiple: int = 1, none: bool = False) -> Arg:
    return Arg("int", lo, hi, multiple=multiple, none=none)


def _float(lo: float, hi: float) -> Arg:
    return Arg("float", lo, hi)


_BOOL, _STR, _STR_OR_NULL = Arg("bool"), Arg("str"), Arg("str", none=True)

SD_TARGET = "fidesr.backbone.StableDiffusionBackbone.from_pretrained"
TINY_TARGET = "fidesr.backbone.build_tiny_backbone"
LRRB_TARGET = "fidesr.components.lrrb.LatentResidualRefinementBlock"
LFIM_TARGET = "fidesr.components.lfim.LatentFrequencyInjection"
#: Which targets each section of a stored config may name.
SECTION_TARGETS: dict[str, frozenset[str]] = {
    "backbone": frozenset({SD_TARGET, TINY_TARGET}),
    "lrrb": frozenset({LRRB_TARGET}),
    "lfim": frozenset({LFIM_TARGET}),
}
#: Arguments of the backbone constructor both backbone targets pass on (``StableDiffusionBackbone``).
#: Generous for SD 2.1 models: LoRA rank up to 256 (the paper's is 4 to 8), alpha up to 1024.
_BACKBONE_ARGS: dict[str, Arg] = {
    "lora_rank": _int(0, 256),
    "lora_alpha": _float(0, 1024),
    "lora_init": Arg("choice", choices=("gaussian", True, False)),
    "lora_targets": Arg("strs", length=(1, 64)),
    "gradient_checkpointing": _BOOL,  # (inference builds without it, whatever the file says)
    "frozen_dtype": Arg(
        "choice", choices=("float32", "float16", "bfloat16", "fp32", "fp16", "bf16"), none=True
    ),
    "timestep": _int(0, 999),  # the DDPM schedule's 1000 steps
    "prediction": Arg("choice", choices=("residual", "x0")),
    "lora_sets": Arg("strs", length=(2, 2), none=True),
    "vae_lora_rank": _int(0, 256),
}
#: Arguments a stored config may give each allow-listed target, with their bounds. The tiny preset
#: (tests, CPU demo: 32/64 channels, a 1000-step VAE warm-up) is bounded at several times its own size,
#: since a model file makes it build and train its VAE on first use.
TARGET_ARGS: dict[str, dict[str, Arg]] = {
    SD_TARGET: {
        "pretrained": _STR,  # the base model: a Hub id or a diffusers folder, read as data
        "revision": _STR_OR_NULL,
        "variant": _STR_OR_NULL,
        "local_files_only": Arg("bool", none=True),
        "weights": _BOOL,
        "expect": Arg("choice", choices=("auto", "sd21-base"), none=True),  # the base-model check
        **_BACKBONE_ARGS,
    },
    TINY_TARGET: {
        "unet_channels": Arg("ints", 8, 512, multiple=8, length=(1, 4)),
        "vae_channels": Arg("ints", 8, 512, multiple=8, length=(1, 4)),
        "text_dim": _int(2, 512, multiple=2),
        "ae_warmup_steps": _int(0, 10_000),
        "ae_crop": _int(8, 128, multiple=8),
        "ae_batch": _int(1, 64),
        "seed": _int(0, 2**32 - 1),
        "unet_zero_out": _BOOL,
        "prior_steps": _int(0, 10_000),
        "prior_crop": _int(8, 128, multiple=8),
        "prior_batch": _int(2, 64),
        **_BACKBONE_ARGS,
    },
    LRRB_TARGET: {
        "latent_channels": _int(1, 16),  # SD: 4
        "mid_channels": _int(1, 1024),
        "growth": _int(1, 1024),
        "num_blocks": _int(1, 64),
        "res_scale": _float(0, 10),
    },
    LFIM_TARGET: {
        "lf_scale": _float(0, 10),  # strengths: finite, >= 0 (0 switches a branch off)
        "hf_scale": _float(0, 10),
        "lf_cutoff": _float(1e-3, 2),  # normalised radius (r in [0, 1])
        "hf_cutoff": _float(1e-3, 2),
        "lf_order": _int(1, 16),
        "hf_order": _int(1, 16),
        "tau": _float(-10, 10),
        "sharpness": _float(0, 1000),
        "lf_gamma": _float(0, 10),
        "hf_gamma": _float(0, 10),
        "merge_ratio": _float(0, 1),
        "grid": Arg("choice", choices=("official", "centered")),
    },
}
#: The LRRB's parameter budget (all its arguments at their bounds would be billions): 64M parameters,
#: 256 MB in float32, about 90 times the paper's 720,260.
LRRB_MAX_PARAMETERS = 64_000_000
#: Locations a stored config may carry but never chooses: accepted, ignored, the user's own used instead.
LOCATION_ARGS = frozenset({"cache_dir"})
#: The ``model`` section's inference defaults (``min_lq_size`` 128 for SD 2.1: 512 px inputs).
MODEL_ARGS: dict[str, Arg] = {
    "color_fix": Arg("choice", choices=("adain", "wavelet", "none"), none=True),
    "min_lq_size": _int(0, 512, none=True),
}


def check_stored_config(node: Any, source: str | os.PathLike, key: str = "") -> None:
    """Refuse a stored config that is more than a selection of allow-listed components and plain values,
    each argument of its type and within its bounds (:data:`TARGET_ARGS`, :data:`MODEL_ARGS`).

    Args:
        node: the config (a dict from JSON or a checkpoint: sections ``backbone``, ``lrrb``, ``lfim``,
            ``model``), or a part of it.
        source: the file it came from, named in the error.
        key: the dotted key of ``node`` (for the message).

    Raises:
        UntrustedConfigError: naming ``source`` and the key of the first offending entry.
    """
    _check_plain(node, source, key)
    if key:
        return
    if not isinstance(node, Mapping):
        raise UntrustedConfigError(f"{source}: the stored config is a {type(node).__name__}, not a mapping")
    for section, targets in SECTION_TARGETS.items():
        sub = node.get(section)
        if sub is None or (isinstance(sub, Mapping) and not sub):
            continue  # switched off
        if not isinstance(sub, Mapping) or "_target_" not in sub:
            raise UntrustedConfigError(
                f"{source}: the stored config's {section} must be a mapping with a _target_ (or null), "
                f"got {short_repr(sub)}"
            )
        if sub["_target_"] not in targets:
            raise UntrustedConfigError(
                f"{source}: the stored config's {section}._target_ = {sub['_target_']!r} is not a "
                f"{section} (allowed: {', '.join(sorted(targets))})"
            )
        args = TARGET_ARGS[sub["_target_"]]
        for name, value in sub.items():
            if name in ("_target_", *_HYDRA_KEYS) or name in LOCATION_ARGS:
                continue
            if name not in args:
                raise UntrustedConfigError(
                    f"{source}: the stored config's {section}.{name} is not an argument of {sub['_target_']}"
                )
            args[name].check(value, f"{source}: the stored config's {section}.{name}")
        if sub["_target_"] == LRRB_TARGET:
            _check_lrrb_budget(sub, source)
    model = node.get("model")
    if model is not None and not isinstance(model, Mapping):
        raise UntrustedConfigError(
            f"{source}: the stored config's model must be a mapping, got {short_repr(model)}"
        )
    for name, value in (model or {}).items():  # other keys of the section are never read
        if name in MODEL_ARGS:
            MODEL_ARGS[name].check(value, f"{source}: the stored config's model.{name}")


def _check_plain(node: Any, source: str | os.PathLike, key: str) -> None:
    """Allow-listed ``_target_`` values, allowed Hydra keys and plain values only, anywhere in ``node``."""
    where = key or "<root>"
    if isinstance(node, Mapping):
        for k, v in node.items():
            if not isinstance(k, str):
                raise UntrustedConfigError(f"{source}: config key {k!r} under {where} is not a string")
            sub = f"{key}.{k}" if key else k
            if k == "_target_":
                if not isinstance(v, str) or v not in ALLOWED_TARGETS:
                    raise UntrustedConfigError(
                        f"{source}: refusing to load: the stored config's {sub} = {short_repr(v)} is not one of "
                        f"fidesr's model components (allowed: {', '.join(sorted(ALLOWED_TARGETS))})"
                    )
            elif k in _HYDRA_KEYS:
                if not isinstance(v, (str, bool)) or v not in _HYDRA_KEYS[k]:
                    raise UntrustedConfigError(
                        f"{source}: the stored config's {sub} = {short_repr(v)} is not allowed"
                    )
            elif k.startswith("_") and k.endswith("_"):
                # (_args_ too: positional arguments would pass by the named bounds of TARGET_ARGS)
                raise UntrustedConfigError(f"{source}: the stored config's {sub} is not an allowed Hydra key")
            else:
                _check_plain(v, source, sub)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _check_plain(v, source, f"{key}[{i}]")
    elif not isinstance(node, _PLAIN):
        raise UntrustedConfigError(
            f"{source}: the stored config's {where} is a {type(node).__name__}, not a plain value"
        )
    elif isinstance(node, str) and "${" in node:
        raise UntrustedConfigError(f"{source}: the stored config's {where} holds an interpolation ({node!r})")


def short_repr(value: Any) -> str:
    """``value`` for a one-line message: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _check_lrrb_budget(node: Mapping[str, Any], source: str | os.PathLike) -> None:
    """The LRRB's parameter count, from its arguments on the meta device (nothing allocated)."""
    kwargs = {k: v for k, v in node.items() if not (k.startswith("_") and k.endswith("_"))}
    with torch.device("meta"):
        n = sum(p.numel() for p in LatentResidualRefinementBlock(**kwargs).parameters())
    if n > LRRB_MAX_PARAMETERS:
        raise UntrustedConfigError(
            f"{source}: the stored config's lrrb has {n:,} parameters, more than the {LRRB_MAX_PARAMETERS:,} "
            "a model file may ask for (the paper's LRRB has 720,260)"
        )


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


def file_in_folder(folder: Path, name: Any, where: str, root: Path | None = None) -> Path:
    """``folder / name`` for a file name a stored config gives, kept inside the folder.

    Args:
        folder: the model folder.
        name: the stored name: a relative path with ``/`` separators, without ``..``.
        where: the file and key it came from, for the message.
        root: where the file may really be, symlinks followed (default ``folder``; a Hub snapshot's
            files link into the repository's ``blobs/``, so there the repository folder).

    Raises:
        UntrustedConfigError: an absolute path, ``..``, a backslash, or a symlink leading out of ``root``.
    """
    if not isinstance(name, str) or not name:
        raise UntrustedConfigError(f"{where} = {short_repr(name)} is not a file name")
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or ":" in parts[0] or ".." in parts:
        raise UntrustedConfigError(
            f"{where} = {name!r}: refusing a path outside the model folder (a relative name without '..')"
        )
    path = folder / name
    inside = (root or folder).resolve()
    if not path.resolve().is_relative_to(inside):
        raise UntrustedConfigError(f"{where}: {path} is a link to {path.resolve()}, outside the model folder")
    return path


def check_finite(tensors: Mapping[str, Any], source: str | os.PathLike) -> None:
    """Refuse loaded weights that are not tensors, or hold NaN or Inf.

    Raises:
        ModelFileError: naming ``source`` and the first offending key.
    """
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise ModelFileError(f"{source}: {key!r} is a {type(value).__name__}, not a tensor")
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            raise ModelFileError(
                f"{source}: tensor {key!r} holds non-finite values (NaN or Inf): refusing to load these weights"
            )


def as_mapping(value: Any, source: str | os.PathLike, key: str) -> Mapping[str, Any]:
    """``value`` if it is a mapping (None: an empty one), else one line naming ``source`` and ``key``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ModelFileError(
            f"{source}: {key} is a {type(value).__name__} ({short_repr(value)}), not a mapping"
        )
    return value


def module_names(value: Any, source: str | os.PathLike, key: str) -> list[str]:
    """A list of module names, else one line naming ``source`` and ``key``."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ModelFileError(f"{source}: {key} = {short_repr(value)} is not a list of module names")
    return list(value)


def check_version(version: Any, source: str | os.PathLike, newest: int) -> None:
    """A format version: an integer this fidesr reads."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise ModelFileError(f"{source}: version = {short_repr(version)} is not an integer format version")
    if version > newest:
        raise ModelFileError(
            f"{source}: format version {version} is newer than this fidesr reads ({newest}); upgrade fidesr"
        )
