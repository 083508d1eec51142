"""fidesr-weights: status report, --check, install (wheels), install --from, link."""

from __future__ import annotations

from pathlib import Path

import pytest

from fidesr.cli.weights import main

REPO = Path(__file__).resolve().parents[2]
NIQE_NPZ = REPO.parent / "shared" / "weights" / "niqe_pris_params.npz"


@pytest.fixture(autouse=True)
def weights_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    wd = tmp_path_factory.mktemp("weights")
    monkeypatch.setenv("FIDESR_WEIGHTS_DIR", str(wd))
    return wd


def test_status_lists_files_hashes_paths_and_sources(weights_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"weights dir: {weights_dir}  ($FIDESR_WEIGHTS_DIR)" in out
    assert "psnr     ready" in out and "(no weights needed)" in out
    assert "lpips    n/a (weights missing: 2/2 files)" in out
    assert "LPIPS_v0.1_alex-df73285e.pth  sha256 df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0" in out
    assert f"missing: {weights_dir}/hub/checkpoints/alexnet-owt-7be5be79.pth" in out
    assert "source:  https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in out
    assert f"torchvision: {weights_dir}/hub/checkpoints" in out
    assert "fetch the missing files: fidesr-weights download --metrics lpips dists fid niqe musiq maniqa clipiqa" in out
    assert out.rstrip().endswith("ready: psnr, ssim; weights missing: lpips, dists, fid, niqe, musiq, maniqa, clipiqa")
    assert main(["status", "--metrics", "psnr", "ssim", "--check"]) == 0
    assert main(["status", "--metrics", "psnr", "lpips", "--check"]) == 1


def test_install_from_wheels(weights_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--weights-dir", str(weights_dir), "install", "--metrics", "lpips", "dists"]) == 0
    out = capsys.readouterr().out
    assert "installed LPIPS_v0.1_alex-df73285e.pth <- installed package `lpips`" in out
    assert "installed DISTS_weights-f5e65c96.pth <- installed package `torchmetrics`" in out
    assert f"found:   {weights_dir}/hub/pyiqa/DISTS_weights-f5e65c96.pth" in out


@pytest.mark.skipif(not NIQE_NPZ.is_file(), reason="shared NIQE parameters absent")
@pytest.mark.parametrize("how", [["install", "--from"], ["link"]])
def test_adopt_user_files(how: list[str], weights_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([*how, str(NIQE_NPZ.parent)]) == 0
    out = capsys.readouterr().out
    assert f"adopted  {NIQE_NPZ} -> {weights_dir}/hub/pyiqa/niqe_modelparameters.mat" in out
    assert "niqe     ready" in out
