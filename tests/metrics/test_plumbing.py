"""Plumbing of the metrics whose weights cannot be obtained here (LPIPS, DISTS, MUSIQ, MANIQA, CLIP-IQA,
FID): pyiqa's real architectures with random weights, or stand-in networks, fed through MetricSuite.

These check shapes, ranges, direction, batching, per-image aggregation and folder FID. Their numbers
mean nothing, which is why the suite reports them as ``<name>-standin``; the production path (no
stand-in) refuses to run without the real weights (last tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from fidesr import weights as W
from fidesr.metrics import NA_WEIGHTS, MetricSuite, fid_folders
from fidesr.metrics.images import save_image
from fidesr.protocol import monitor_mode
from fidesr.weights import WeightsMissingError


def _random_backbones(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision constructors ignore `weights`: random ImageNet backbones, no file, no download."""
    for name in ("alexnet", "vgg16"):
        ctor = getattr(torchvision.models, name)
        monkeypatch.setattr(torchvision.models, name, lambda *a, _c=ctor, **k: _c(weights=None))


def _random_pyiqa(name: str, monkeypatch: pytest.MonkeyPatch, **opts: object) -> torch.nn.Module:
    _random_backbones(monkeypatch)
    pyiqa = W.import_pyiqa()
    torch.manual_seed(0)
    with W.no_downloads(f"random {name}"):  # proves the random build needs no file at all
        return pyiqa.create_metric(name, device="cpu", pretrained=False, **opts)


def _check_rows(suite: MetricSuite, name: str, n: int) -> list[float]:
    vals = [r[name] for r in suite.per_image]
    assert len(vals) == n and all(isinstance(v, float) for v in vals)
    assert suite.compute()[name] == pytest.approx(sum(vals) / n)
    return vals


def test_plumbing_random_weights_lpips_shape_range(
    monkeypatch: pytest.MonkeyPatch, make_pair: object
) -> None:
    net = _random_pyiqa("lpips", monkeypatch)
    suite = MetricSuite(["psnr", "lpips"], stand_ins={"lpips": net})
    assert suite.names == ["psnr", "lpips-standin"] and monitor_mode("lpips-standin") == "min"
    sr, gt = make_pair(64, n=3)
    suite.update(sr, gt, ["a", "b", "c"])
    vals = _check_rows(suite, "lpips-standin", 3)
    assert all(v >= 0 for v in vals)
    same = suite.score(gt, gt)["lpips-standin"]
    assert same.shape == (3,) and torch.all(same.abs() < 1e-6)  # a distance: 0 for identical images
    batched, single = suite.score(sr, gt)["lpips-standin"], suite.score(sr[1:2], gt[1:2])["lpips-standin"]
    assert batched[1].item() == pytest.approx(single.item(), rel=1e-5)


def test_plumbing_random_weights_dists_shape_range(
    monkeypatch: pytest.MonkeyPatch, make_pair: object
) -> None:
    net = _random_pyiqa("dists", monkeypatch)
    suite = MetricSuite(["dists"], stand_ins={"dists": net}, required=())
    sr, gt = make_pair(64, n=2)
    suite.update(sr, gt, ["a", "b"])
    vals = _check_rows(suite, "dists-standin", 2)
    assert all(0 <= v <= 1 for v in vals)
    assert torch.all(suite.score(gt, gt)["dists-standin"].abs() < 1e-4)


def test_plumbing_random_weights_musiq_no_reference(
    monkeypatch: pytest.MonkeyPatch, make_pair: object
) -> None:
    net = _random_pyiqa("musiq", monkeypatch)
    suite = MetricSuite(["musiq"], stand_ins={"musiq": net}, required=())
    sr, _ = make_pair(64, n=2)
    suite.update(sr, names=["a", "b"])  # no-reference: no GT needed
    vals = _check_rows(suite, "musiq-standin", 2)
    assert all(torch.isfinite(torch.tensor(vals)))
    assert monitor_mode("musiq-standin") == "max"


class _MeanStandin(torch.nn.Module):
    """A deterministic no-reference 'score' in [0,1]: mean brightness, shape [B,1] like pyiqa nets."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3)).unsqueeze(1)


def test_plumbing_standin_maniqa_clipiqa_per_image(make_pair: object) -> None:
    suite = MetricSuite(
        ["maniqa", "clipiqa", "psnr"], stand_ins={"maniqa": _MeanStandin(), "clip-iqa": _MeanStandin()}
    )
    assert suite.names == ["maniqa-standin", "clipiqa-standin", "psnr"]
    sr, gt = make_pair(32, n=3)
    suite.update(sr[:2], gt[:2], ["a", "b"])
    suite.update(sr[2:], gt[2:], ["c"])
    vals = _check_rows(suite, "maniqa-standin", 3)
    torch.testing.assert_close(torch.tensor(vals, dtype=torch.float64), sr.mean(dim=(1, 2, 3)).double())
    assert suite.lower_better("maniqa-standin") is False


class _PooledFeatures(torch.nn.Module):
    """Stand-in FID feature extractor: [N,3,299,299] in [0,255] -> [N,48] (pooled colour statistics)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(x / 255.0, 4)
        return x.flatten(1)


def _folder(path: Path, imgs: torch.Tensor) -> Path:
    for i, im in enumerate(imgs):
        save_image(im, path / f"{i:03d}.png")
    return path


def test_plumbing_fid_between_two_folders(tmp_path: Path, make_pair: object) -> None:
    sr, gt = make_pair(48, n=12, seed=1)
    a, b = _folder(tmp_path / "sr", sr), _folder(tmp_path / "gt", gt)
    far = _folder(tmp_path / "far", (gt * 0.3).clamp(0, 1))
    ext = _PooledFeatures()
    suite = MetricSuite(["psnr", "fid"], stand_ins={"fid": ext})
    assert suite.has_fid and suite.fid_name == "fid-standin" and suite.active == ["psnr"]
    assert suite.fid(b, b) == pytest.approx(0.0, abs=1e-6)
    near, distant = suite.fid(a, b), suite.fid(far, b)
    assert 0 < near < distant
    assert fid_folders(a, b, feature_extractor=ext) == pytest.approx(near)


def test_production_path_refuses_missing_weights(weights_dir: Path, make_pair: object) -> None:
    for metric in ("lpips", "dists", "musiq", "maniqa", "clipiqa", "fid"):
        with pytest.raises(WeightsMissingError):
            MetricSuite([metric], required=[metric], weights_dir=weights_dir)
    with pytest.raises(WeightsMissingError, match="pt_inception"):
        fid_folders(weights_dir, weights_dir, weights_dir=weights_dir)
    with pytest.warns(UserWarning, match="weights missing"):
        suite = MetricSuite(["psnr", "lpips", "musiq"], required=["psnr"], weights_dir=weights_dir)
    sr, gt = make_pair(32)
    suite.update(sr, gt)
    assert set(suite.compute()) == {"psnr"}  # never a number for lpips/musiq
    assert suite.format("musiq", None) == NA_WEIGHTS
