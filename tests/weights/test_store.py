"""The one weights rule: resolution order, what start-up changes in the environment, and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fidesr import weights as W


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("FIDESR_WEIGHTS_DIR", "TORCH_HOME", "XDG_CACHE_HOME", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_resolution_order(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert (W.resolve_weights_dir(), W.weights_dir_origin()) == (
        home / ".cache/torch",
        "torch's default cache",
    )
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert W.resolve_weights_dir() == tmp_path / "xdg/torch"
    clean_env.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert (W.resolve_weights_dir(), W.weights_dir_origin()) == (tmp_path / "th", "$TORCH_HOME")
    clean_env.setenv("FIDESR_WEIGHTS_DIR", str(tmp_path / "fw"))
    assert (W.resolve_weights_dir(), W.weights_dir_origin()) == (tmp_path / "fw", "$FIDESR_WEIGHTS_DIR")
    assert (W.resolve_weights_dir(tmp_path / "arg"), W.weights_dir_origin(tmp_path / "arg")) == (
        tmp_path / "arg",
        "argument",
    )


def test_start_up_changes_nothing_for_the_standard_caches(clean_env: pytest.MonkeyPatch) -> None:
    before = dict(os.environ)
    assert W.apply_environment() == W.resolve_weights_dir()
    assert dict(os.environ) == before


def test_start_up_puts_everything_under_fidesr_weights_dir(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub  # noqa: F401  (imported already in most processes: the warning case below)

    clean_env.setenv("FIDESR_WEIGHTS_DIR", str(tmp_path / "fw"))
    with pytest.warns(UserWarning, match="huggingface_hub was imported before"):
        W.apply_environment()
    assert "HF_HOME" not in os.environ  # not half applied: huggingface_hub has read its cache already
    clean_env.setenv("HF_HOME", str(tmp_path / "hf"))  # a user's own HF_HOME is kept
    W.apply_environment(tmp_path / "other")
    assert os.environ["FIDESR_WEIGHTS_DIR"] == str(tmp_path / "other")
    assert os.environ["HF_HOME"] == str(tmp_path / "hf") and "TORCH_HOME" not in os.environ


def test_every_command_applies_the_rule_at_start_up(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A fresh process importing fidesr.cli (what every fidesr-* script does first) gets HF_HOME under
    $FIDESR_WEIGHTS_DIR, and huggingface_hub then uses it."""
    import subprocess
    import sys

    clean_env.setenv("FIDESR_WEIGHTS_DIR", str(tmp_path / "fw"))
    code = (
        "import fidesr.cli, os, huggingface_hub.constants as c; "
        "print(os.environ['HF_HOME']); print(c.HF_HUB_CACHE)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [str(tmp_path / "fw/huggingface"), str(tmp_path / "fw/huggingface/hub")]
