"""The training loss LPIPS(VGG, spatial), with honest handling of its ImageNet backbone.

LPIPS needs two sets of weights: the linear heads (shipped inside the ``lpips`` wheel) and torchvision's
VGG16 ImageNet backbone (``vgg16-397923af.pth``, downloaded by torchvision on first use). Where the backbone
cannot be had (offline machines, the CPU demo), ``backbone="random"`` builds the same network with a random
VGG: a *stand-in* that is named as such everywhere (``name``), never presented as LPIPS.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"


class PerceptualWeightsMissing(FileNotFoundError):
    """torchvision's VGG16 ImageNet weights are not in the torch cache."""


def vgg16_weights_path() -> Path:
    """Where torchvision looks for the VGG16 weights (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


class PerceptualLoss(nn.Module):
    """Spatial LPIPS map. Inputs [B,3,H,W] in [-1,1]; output [B,1,H,W] >= 0 (lower is closer).

    Args:
        net: LPIPS backbone, ``"vgg"`` as in the paper.
        backbone: ``"pretrained"`` (ImageNet weights from the torch cache; fails fast naming the file if
            absent) or ``"random"`` (the stand-in for offline demos and tests).
    """

    def __init__(self, net: str = "vgg", backbone: str = "pretrained") -> None:
        super().__init__()
        import lpips

        if backbone not in ("pretrained", "random"):
            raise ValueError(f"perceptual backbone must be 'pretrained' or 'random', got {backbone!r}")
        if backbone == "pretrained" and net == "vgg" and not vgg16_weights_path().is_file():
            raise PerceptualWeightsMissing(
                f"LPIPS-VGG needs torchvision's VGG16 ImageNet weights at {vgg16_weights_path()} "
                f"(get {VGG16_URL}; TORCH_HOME={os.environ.get('TORCH_HOME', '<unset>')}). "
                "Offline demos can use perceptual=standin (a random-backbone stand-in, not LPIPS)."
            )
        self.backbone = backbone
        self.net_name = net
        self.lpips = lpips.LPIPS(net=net, spatial=True, pnet_rand=backbone == "random", verbose=False)
        self.lpips.requires_grad_(False).eval()

    @property
    def name(self) -> str:
        return (
            f"lpips_{self.net_name}" if self.backbone == "pretrained" else f"standin_random_{self.net_name}"
        )

    def train(self, mode: bool = True) -> PerceptualLoss:
        # The loss network stays in eval mode (no dropout) whatever the surrounding module does.
        super().train(mode)
        self.lpips.eval()
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lpips(pred.float(), target.float(), normalize=False)
