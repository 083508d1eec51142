"""The training-loss LPIPS: real weights or a named stand-in, never a silent substitute."""

from __future__ import annotations

import pytest
import torch

from fidesr.components.perceptual import PerceptualLoss, PerceptualWeightsMissing, vgg16_weights_path


def test_pretrained_vgg_without_weights_fails_naming_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert not vgg16_weights_path().exists()
    with pytest.raises(PerceptualWeightsMissing, match="vgg16-397923af.pth"):
        PerceptualLoss(backbone="pretrained")


def test_standin_is_named_as_such_and_gives_a_spatial_map():
    loss = PerceptualLoss(backbone="random")
    assert loss.name == "standin_random_vgg" and "lpips" not in loss.name
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    same = loss(x, x)
    other = loss(x, x.flip(-1))
    assert same.shape == (2, 1, 32, 32)
    assert same.abs().max() < 1e-6 and other.mean() > 0
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.lpips.training
