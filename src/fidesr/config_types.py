"""Check a composed config's values against the types its ``_target_`` constructors declare.

``trainer.max_steps=abc`` composes fine (Hydra has no schema for the trainer) and fails deep inside
Lightning with "'<' not supported between instances of 'str' and 'int'". :func:`check_config_types` reads
the annotations of every ``_target_`` in the config (``lightning.pytorch.Trainer.__init__``: ``max_steps:
int``) and reports the first value that cannot be of that type, naming the key::

    trainer.max_steps = 'abc': expected int

Only simple annotations are checked (``int``, ``float``, ``bool``, ``str``, ``None``, ``Literal``,
and unions/optionals of them); anything richer is left to the constructor. An int is accepted where a
float is declared.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from fidesr.errors import ConfigValueError

_SIMPLE = (int, float, bool, str, type(None))


def _resolve_target(target: str) -> Any | None:
    """The callable a ``_target_`` names, or None when it cannot be imported (left to Hydra)."""
    from hydra._internal.utils import _locate

    try:
        return _locate(target)
    except Exception:  # noqa: BLE001 - an unimportable target is Hydra's error to report, not ours
        return None


def _hints(fn: Any) -> dict[str, Any]:
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable forward references: nothing to check
        return {}


def _accepts(annotation: Any, value: Any) -> bool | None:
    """True/False when ``annotation`` is simple enough to decide, None when it is not."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return None
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        verdicts = [_accepts(arg, value) for arg in typing.get_args(annotation)]
        if any(v is True for v in verdicts):
            return True
        return None if any(v is None for v in verdicts) else False
    if annotation in _SIMPLE:
        if annotation is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if annotation is int:
            return isinstance(value, int) and not isinstance(value, bool)
        if annotation is type(None):
            return value is None
        return isinstance(value, annotation)
    return None


def _describe(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", text) if typing.get_origin(annotation) is None else text


def check_config_types(cfg: Mapping[str, Any], key: str = "") -> None:
    """Walk a resolved config (plain dicts/lists); raise :class:`ConfigValueError` at the first value that
    its target's annotation rules out.

    Args:
        cfg: e.g. ``OmegaConf.to_container(cfg, resolve=True)``.
        key: the dotted key of ``cfg`` (for the message).
    """
    target = cfg.get("_target_") if isinstance(cfg, Mapping) else None
    hints = _hints(fn) if isinstance(target, str) and (fn := _resolve_target(target)) is not None else {}
    for k, v in cfg.items():
        sub = f"{key}.{k}" if key else str(k)
        if isinstance(v, Mapping):
            check_config_types(v, sub)
        elif isinstance(v, list):
            for i, item in enumerate(v):
                if isinstance(item, Mapping):
                    check_config_types(item, f"{sub}[{i}]")
        if k in hints and not isinstance(v, (Mapping, list)) and _accepts(hints[k], v) is False:
            raise ConfigValueError(f"{sub} = {v!r}: expected {_describe(hints[k])}")
