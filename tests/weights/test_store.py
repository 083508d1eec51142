"""The one weights rule: resolution order, what start-up changes in the environment, and nothing else;
verification (checksums, the digest cache), what check_weights warns and raises, the no-downloads guard,
and the process-wide state a suite build leaves alone."""

from __future__ import annotations

import os
import socket
import urllib.request
import warnings
from pathlib import Path

import pytest
import torch

from fidesr import weights as W
from fidesr.metrics.suite import MetricSuite, build_pyiqa_metric
from fidesr.protocol import PROTOCOL
from fidesr.weights import WeightsMissingError, check_weights


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


def test_bad_checksum_is_reported_and_fatal_when_required(weights_dir: Path) -> None:
    f = W.FILES["dists-alpha-beta"]
    W.file_path(f, weights_dir).parent.mkdir(parents=True)
    W.file_path(f, weights_dir).write_bytes(b"not the DISTS weights")
    assert W.file_status(f, weights_dir).state == "bad checksum"
    with pytest.raises(WeightsMissingError) as err:
        check_weights(["psnr", "dists"], required=["dists"], weights_dir=weights_dir)
    msg = str(err.value)
    assert "vgg16-397923af.pth [missing]" in msg and "DISTS_weights-f5e65c96.pth [bad checksum" in msg
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in msg


def test_digest_cache_tracks_file_changes(weights_dir: Path) -> None:
    W.install(["lpips"], weights_dir, log=lambda _: None)
    f = W.FILES["lpips-alex-v0.1"]
    assert W.file_status(f, weights_dir).ok
    assert (weights_dir / ".fidesr-verified.json").is_file()
    W.file_path(f, weights_dir).write_bytes(b"tampered")
    assert W.file_status(f, weights_dir).state == "bad checksum"


def test_digest_cache_is_not_fooled_by_same_size_and_restored_mtime(weights_dir: Path) -> None:
    """Before, size + mtime were trusted: a file rewritten in place with its mtime put back stayed "ok".
    The change of ctime (which no user can set back) makes it re-hashed."""
    import os

    W.install(["lpips"], weights_dir, log=lambda _: None)
    f = W.FILES["lpips-alex-v0.1"]
    path = W.file_path(f, weights_dir)
    assert W.file_status(f, weights_dir).ok
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    assert W.file_status(f, weights_dir).state == "bad checksum"


def test_optional_missing_metrics_warn_once(weights_dir: Path) -> None:
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(3):
            ok = check_weights(["psnr", "musiq", "clipiqa"], required=["psnr"], weights_dir=weights_dir)
    assert ok == ["psnr"]
    msgs = [str(w.message) for w in rec if "weights missing" in str(w.message)]
    assert len(msgs) == 1 and "clipiqa, musiq" in msgs[0]


def test_required_only_applies_to_selected_metrics(weights_dir: Path) -> None:
    assert check_weights(["psnr"], required=["psnr", "ssim", "lpips"], weights_dir=weights_dir) == ["psnr"]


def test_check_weights_takes_the_conf_mapping(weights_dir: Path) -> None:
    """What the train CLI passes: cfg.metrics (name -> options with `required`)."""
    with pytest.raises(WeightsMissingError, match="niqe_modelparameters.mat"):
        check_weights({"psnr": {"required": True}, "niqe": {"required": True}}, weights_dir=weights_dir)
    with pytest.warns(UserWarning, match="niqe"):
        assert check_weights({"psnr": {"required": True}, "niqe": None}, weights_dir=weights_dir) == ["psnr"]


def test_no_downloads_guard_blocks_every_download_path() -> None:
    W.import_pyiqa()
    import pyiqa.utils.download_util as dl

    with W.no_downloads("test"):
        for call in (
            lambda: torch.hub.download_url_to_file("https://example.com/x.pth", "/tmp/x"),
            lambda: urllib.request.urlopen("https://example.com/x"),
            lambda: dl.load_file_from_url("https://example.com/y.pth"),
        ):
            with pytest.raises(WeightsMissingError, match="tried to download"):
                call()
    assert torch.hub.download_url_to_file is not None and urllib.request.urlopen.__name__ == "urlopen"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("metric", ["lpips", "dists", "niqe", "musiq", "maniqa", "clipiqa", "fid"])
def test_missing_weights_raise_before_any_network_call(
    metric: str, weights_dir: Path, no_network: None
) -> None:
    # The production builder checks first ...
    with pytest.raises(WeightsMissingError, match=metric):
        build_pyiqa_metric(PROTOCOL[metric], {}, torch.device("cpu"), weights_dir)
    # ... and even pyiqa called directly inside the guard cannot reach the network or fall back to
    # random weights: whatever download it tries raises our error.
    pyiqa = W.import_pyiqa()
    with (
        W.torch_cache_scope(weights_dir),
        W.no_downloads(metric),
        pytest.raises(WeightsMissingError, match="tried to download"),
    ):
        from fidesr.metrics.suite import _maniqa_vit_without_imagenet_init

        with _maniqa_vit_without_imagenet_init():
            pyiqa.create_metric(PROTOCOL[metric].pyiqa_name, device="cpu")


def test_building_a_suite_changes_no_process_wide_setting(
    niqe_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weights dir is read per build (issue 12): torch hub, $TORCH_HOME and pyiqa's cache stay put."""
    import pyiqa.utils.download_util as dl

    monkeypatch.delenv("TORCH_HOME", raising=False)
    before = (torch.hub.get_dir(), dl.DEFAULT_CACHE_DIR, torch.hub._hub_dir)
    suite = MetricSuite(["psnr", "niqe"], weights_dir=niqe_weights)
    assert suite.active == ["psnr", "niqe"] and suite.weights_dir == niqe_weights
    assert (torch.hub.get_dir(), dl.DEFAULT_CACHE_DIR, torch.hub._hub_dir) == before
    assert "TORCH_HOME" not in __import__("os").environ
