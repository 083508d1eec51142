"""The registry of weight files: every protocol metric's files (torch-hub names carry the checksum prefix the
registry checks), and the evidence behind the package-registry providers."""

from __future__ import annotations

from fidesr import weights as W
from fidesr.protocol import PROTOCOL
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
