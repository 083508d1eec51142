"""Latent Residual Refinement Block (LRRB).

The UNet, called once at t = 1, predicts a latent residual ``r``; the LRRB refines it from
``cat[z_L, r]``: ``r' = r + LRRB(z_L, r)`` and the SR latent is ``z_r = z_L - r'``.

Architecture (official ``fidesr.py``): 1x1 ``in_conv`` (2C -> 64), three ESRGAN-style dense blocks applied
as ``f = f + 0.2 * DB_i(f)`` (no outer residual-in-residual skip), 1x1 ``out_conv`` (64 -> C). Module
names equal the official ones (``in_conv``, ``db1..db3.conv1..conv5``, ``out_conv``), so the official
``lrrb_state_dict`` loads without any key mapping.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["DenseBlock", "LatentResidualRefinementBlock"]


class DenseBlock(nn.Module):
    """Five 3x3 convs (padding 1) with dense connections; SiLU after conv1..conv4, none after conv5.

    conv_k sees ``cat[x, x1, ..., x_{k-1}]`` (``channels + (k-1) * growth`` channels); conv1..4 output
    ``growth`` channels, conv5 outputs ``channels``. conv5 is zero-initialised (weight and bias), so a
    fresh block outputs exactly 0.

    ``x``: ``[B, channels, h, w]`` -> ``[B, channels, h, w]``.
    """

    def __init__(self, channels: int = 64, growth: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, growth, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels + growth, growth, 3, 1, 1)
        self.conv3 = nn.Conv2d(channels + 2 * growth, growth, 3, 1, 1)
        self.conv4 = nn.Conv2d(channels + 3 * growth, growth, 3, 1, 1)
        self.conv5 = nn.Conv2d(channels + 4 * growth, channels, 3, 1, 1)
        self.act = nn.SiLU()
        nn.init.zeros_(self.conv5.weight)
        nn.init.zeros_(self.conv5.bias)

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(self.act(conv(torch.cat(feats, dim=1))))
        return self.conv5(torch.cat(feats, dim=1))


class LatentResidualRefinementBlock(nn.Module):
    """LRRB: ``delta = out_conv(DB_n(...DB_1(in_conv(cat[z_lq, residual]))...))`` with scaled skips.

    Args:
        latent_channels: channels ``C`` of the latent (4 for SD); the input has ``2C`` channels.
        mid_channels: feature width (64).
        growth: dense-block growth rate (32).
        num_blocks: number of dense blocks, named ``db1..db{n}`` (3).
        res_scale: scale of each dense block's output in its skip (0.2).

    With the defaults the block has 720,260 parameters. ``out_conv`` and every ``conv5`` are zero-init,
    so ``delta == 0`` at initialisation (training starts from the plain UNet residual). Note that, as a
    consequence, at the very first step only ``out_conv`` receives a non-zero gradient; conv5 receives
    one from the second step and conv1..conv4 from the third.
    """

    def __init__(
        self,
        latent_channels: int = 4,
        mid_channels: int = 64,
        growth: int = 32,
        num_blocks: int = 3,
        res_scale: float = 0.2,
    ) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.latent_channels = latent_channels
        self.num_blocks = num_blocks
        self.res_scale = float(res_scale)
        self.in_conv = nn.Conv2d(2 * latent_channels, mid_channels, 1, 1, 0)
        # db1..dbN as attributes (not a ModuleList) so that state_dict keys equal the official ones.
        for i in range(1, num_blocks + 1):
            self.add_module(f"db{i}", DenseBlock(mid_channels, growth))
        self.out_conv = nn.Conv2d(mid_channels, latent_channels, 1, 1, 0)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    @property
    def blocks(self) -> list[DenseBlock]:
        """The dense blocks in application order."""
        return [getattr(self, f"db{i}") for i in range(1, self.num_blocks + 1)]

    def forward(self, z_lq: Tensor, residual: Tensor) -> Tensor:
        """Residual correction.

        Args:
            z_lq: LQ latent ``z_L`` ``[B, C, h, w]`` (scaled by the VAE factor).
            residual: UNet residual ``r`` ``[B, C, h, w]``.

        Returns:
            ``delta`` ``[B, C, h, w]`` (same shape/dtype as ``residual``); the refined residual is
            ``residual + delta`` (``fidesr.generator.one_step``).
        """
        f = self.in_conv(torch.cat([z_lq, residual], dim=1))
        for block in self.blocks:
            f = f + block(f) * self.res_scale
        return self.out_conv(f)

    def load_official_state_dict(self, sd: Mapping[str, Tensor], strict: bool = True):
        """Load weights in the official layout.

        Accepts the official ``lrrb_state_dict`` (keys ``in_conv.*``, ``db1..db3.conv1..conv5.*``,
        ``out_conv.*``), a whole official checkpoint holding it under ``"lrrb_state_dict"``, or the same
        keys behind a ``"module."`` (DDP) or ``"lrrb."`` prefix. Returns ``load_state_dict``'s result;
        missing, unexpected or mis-shaped keys raise (with ``strict=True``).
        """
        if "lrrb_state_dict" in sd:
            sd = sd["lrrb_state_dict"]
        out: dict[str, Tensor] = {}
        for key, value in sd.items():
            for prefix in ("module.", "lrrb."):
                if key.startswith(prefix):
                    key = key[len(prefix) :]
            out[key] = value
        return self.load_state_dict(out, strict=strict)
