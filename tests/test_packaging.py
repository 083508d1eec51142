"""Packaging: every package under src/ is listed in pyproject.toml (the list is explicit because the
mapped conf/ package is invisible to setuptools' find), and the console scripts point at real functions."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed() -> None:
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    src = ROOT / "src"
    found = {
        ".".join(p.parent.relative_to(src).parts)
        for p in src.rglob("__init__.py")
        if "egg-info" not in str(p)
    }
    assert found | {"fidesr.conf"} == listed, (found - listed, listed - found - {"fidesr.conf"})


def test_console_scripts_resolve() -> None:
    for name, target in _pyproject()["project"]["scripts"].items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
