"""The training-loss LPIPS: real weights or a named stand-in, never a silent substitute."""

from __future__ import annotations

import pytest
import torch

from fidesr.components.perceptual import PerceptualLoss, PerceptualWeightsMissing, vgg16_weights_path


def test_pretrained_vgg_offline_fails_naming_the_file_and_the_command(monkeypatch, tmp_path):
    monkeypatch.setenv("FIDESR_OFFLINE", "1")
    monkeypatch.delenv("FIDESR_WEIGHTS_MIRROR", raising=False)
    assert vgg16_weights_path(tmp_path) == tmp_path / "hub/checkpoints/vgg16-397923af.pth"
    with pytest.raises(PerceptualWeightsMissing) as err:
        PerceptualLoss(backbone="pretrained", weights_dir=tmp_path)
    msg = str(err.value)
    assert f"vgg16-397923af.pth [missing] -> {tmp_path}/hub/checkpoints/vgg16-397923af.pth" in msg
    assert f"fidesr-weights --weights-dir {tmp_path} download --metrics lpips_vgg" in msg


def test_pretrained_vgg_is_fetched_then_read_by_torchvision_from_the_weights_dir(monkeypatch, tmp_path):
    """VGG16 comes from the mirror into <weights dir>/hub/checkpoints and torchvision loads *that* file
    (an empty state dict here, registered for the test: the full 528 MB file cannot be had offline)."""
    import io

    from _weights_server import register, serve

    buf = io.BytesIO()
    torch.save({}, buf)
    register(monkeypatch, "vgg16-imagenet", buf.getvalue())
    hub_before = torch.hub.get_dir()
    with serve(tmp_path / "srv") as srv:
        srv.put("vgg16-397923af.pth", buf.getvalue())
        monkeypatch.setenv("FIDESR_WEIGHTS_MIRROR", srv.url)
        with pytest.raises(RuntimeError, match="Missing key.*features.0.weight"):
            PerceptualLoss(backbone="pretrained", weights_dir=tmp_path / "w")
    assert vgg16_weights_path(tmp_path / "w").read_bytes() == buf.getvalue()
    assert torch.hub.get_dir() == hub_before  # read in a scope, nothing process-wide changed


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
