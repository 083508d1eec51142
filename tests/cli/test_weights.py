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


def test_status_lists_files_hashes_paths_and_sources(
    weights_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"weights dir: {weights_dir}  ($FIDESR_WEIGHTS_DIR)" in out
    assert "psnr     ready" in out and "(no weights needed)" in out
    assert "lpips    n/a (weights missing: 2/2 files)" in out
    assert (
        "LPIPS_v0.1_alex-df73285e.pth  sha256 df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"
        in out
    )
    assert f"missing: {weights_dir}/hub/checkpoints/alexnet-owt-7be5be79.pth" in out
    assert "source:  https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in out
    assert f"torchvision: {weights_dir}/hub/checkpoints" in out
    assert (
        f"fetch the missing files: fidesr-weights --weights-dir {weights_dir} download --metrics lpips dists "
        "fid niqe musiq maniqa clipiqa"
    ) in out
    assert out.rstrip().endswith(
        "ready: psnr, ssim; weights missing: lpips, dists, fid, niqe, musiq, maniqa, clipiqa"
    )
    assert main(["status", "--metrics", "psnr", "ssim", "--check"]) == 0
    assert main(["status", "--metrics", "psnr", "lpips", "--check"]) == 1
    assert "(or: fidesr-weights install)" in capsys.readouterr().out  # the LPIPS head ships in a wheel
    assert main(["download", "--metrics", "psnr", "nique"]) == 2
    assert "unknown metric 'nique'" in capsys.readouterr().err


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


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real HTTP mirror on 127.0.0.1 as $FIDESR_WEIGHTS_MIRROR."""
    from _weights_server import serve

    with serve(tmp_path / "srv") as srv:
        monkeypatch.setenv("FIDESR_WEIGHTS_MIRROR", srv.url)
        yield srv


def _niqe_mat(tmp_path: Path, scale: float = 1.0) -> bytes:
    """pyiqa's niqe_modelparameters.mat built from the shared parameters (``scale`` != 1 corrupts them)."""
    import numpy as np
    import scipy.io

    npz = np.load(NIQE_NPZ)
    path = tmp_path / "niqe.mat"
    scipy.io.savemat(
        path, {"mu_prisparam": npz["mu_pris_param"] * scale, "cov_prisparam": npz["cov_pris_param"]}
    )
    return path.read_bytes()


@pytest.mark.skipif(not NIQE_NPZ.is_file(), reason="shared NIQE parameters absent")
def test_download_niqe_from_a_mirror_then_status_is_ready(
    mirror, tmp_path: Path, weights_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    """The issue's acceptance: NIQE's real (value-checked) file fetched from an HTTP mirror."""
    mirror.put("niqe_modelparameters.mat", _niqe_mat(tmp_path))
    assert main(["download", "--metrics", "niqe"]) == 0
    assert (
        f"fetched   niqe_modelparameters.mat <- {mirror.url}niqe_modelparameters.mat"
        in capsys.readouterr().out
    )
    assert main(["status", "--metrics", "niqe"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("ready: niqe; weights missing: -")


@pytest.mark.skipif(not NIQE_NPZ.is_file(), reason="shared NIQE parameters absent")
def test_download_of_a_corrupted_file_fails_and_leaves_nothing(
    mirror, tmp_path: Path, weights_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    mirror.put("niqe_modelparameters.mat", _niqe_mat(tmp_path, scale=1.0001))
    assert main(["download", "--metrics", "niqe"]) == 1
    out = capsys.readouterr().out
    assert "FAILED    niqe_modelparameters.mat" in out and "checksum mismatch" in out
    assert not list(weights_dir.rglob("niqe_modelparameters.mat*"))


def test_download_all_fetches_every_registered_file(
    mirror, weights_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """--all covers the protocol and the training loss's VGG16; a 404 makes the exit status 1."""
    from _weights_server import register
    from fidesr import weights as W

    for key, f in W.FILES.items():
        data = f"test bytes for {key}".encode()
        if f.check == "bytes":
            register(monkeypatch, key, data)
            mirror.put(f.filename, data)
    niqe = W.FILES["niqe-params"]
    assert main(["download", "--all"]) == 1  # NIQE was not put on the mirror
    out = capsys.readouterr().out
    assert f"FAILED    {niqe.filename}: {mirror.url}{niqe.filename}: HTTP 404" in out
    assert out.rstrip().endswith(
        "ready: psnr, ssim, lpips, dists, fid, musiq, maniqa, clipiqa, lpips_vgg; weights missing: niqe"
    )
    assert (weights_dir / "hub/checkpoints/vgg16-397923af.pth").is_file()
