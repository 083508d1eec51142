"""The training loss LPIPS(VGG, spatial), with honest handling of its ImageNet backbone.

LPIPS needs two sets of weights: the linear heads (shipped inside the ``lpips`` wheel) and torchvision's
VGG16 ImageNet backbone (``vgg16-397923af.pth``). The backbone is found, and fetched when missing and
online, through the same weights directory and checks as every other weight file
(``fidesr.weights.store``; ``fidesr-weights download --metrics lpips_vgg``); offline, a missing file
stops construction with the path and that command. Where the backbone cannot be had (the CPU demo),
``backbone="random"`` builds the same network with a random VGG: a *stand-in* that is named as such
everywhere (``name``), never presented as LPIPS.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from fidesr import weights as W

VGG16_FILE = W.FILES["vgg16-imagenet"].filename


class PerceptualWeightsMissing(W.WeightsMissingError):
    """torchvision's VGG16 ImageNet weights are missing and could not be fetched."""


def vgg16_weights_path(weights_dir: str | os.PathLike | None = None) -> Path:
    """Where the VGG16 weights are read from (``<weights dir>/hub/checkpoints``, torchvision's layout)."""
    return W.file_path(W.FILES["vgg16-imagenet"], weights_dir)


class PerceptualLoss(nn.Module):
    """Spatial LPIPS map. Inputs [B,3,H,W] in [-1,1]; output [B,1,H,W] >= 0 (lower is closer).

    Args:
        net: LPIPS backbone, ``"vgg"`` as in the paper.
        backbone: ``"pretrained"`` (ImageNet weights from the weights directory, fetched when missing and
            online; offline it fails naming the file and the command) or ``"random"`` (the stand-in for
            offline demos and tests).
        weights_dir: see ``fidesr.weights.store.resolve_weights_dir`` (default: the shared rule).
    """

    def __init__(
        self, net: str = "vgg", backbone: str = "pretrained", weights_dir: str | os.PathLike | None = None
    ) -> None:
        super().__init__()
        import lpips

        if backbone not in ("pretrained", "random"):
            raise ValueError(f"perceptual backbone must be 'pretrained' or 'random', got {backbone!r}")
        pretrained = backbone == "pretrained"
        if pretrained and net == "vgg":
            W.ensure_weights([W.LPIPS_VGG], weights_dir, error_type=PerceptualWeightsMissing)
        self.backbone = backbone
        self.net_name = net
        # torchvision reads the weights dir when it loads the backbone, downloads nothing, and the backbone
        # and heads are read as data only (torch.hub's own torch.load gets our weights-only one).
        with W.build_scope(f"perceptual loss lpips_{net}", weights_dir):
            self.lpips = lpips.LPIPS(net=net, spatial=True, pnet_rand=not pretrained, verbose=False)
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
