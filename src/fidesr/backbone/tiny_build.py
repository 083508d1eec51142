"""Training the tiny backbone once: the VAE as an autoencoder, the UNet as a small text-conditioned prior.

Both run on the demo photographs (:mod:`fidesr.data.photos`), on CPU, from a seed. What this produces is
shipped in the package (:data:`fidesr.backbone.tiny.SHIPPED_FILE`, rebuilt with ``make tiny-backbone``), so
a fresh clone never runs it for the default spec; a non-default spec runs it once into the cache.

The prior is what lets classifier score distillation carry a signal at demo scale: the UNet learns
``eps`` prediction (SD 2.1's schedule, ``t ~ U_int[0, 1000)``) of clean photo crops under the empty prompt
and of their degraded versions (bicubic x4 down and up: the demo's own degradation) under the negative
prompt of the official CSD/VSD code. Classifier-free guidance between the two prompts then points from
"blurry" towards "sharp", the direction SD's prior gives real training. The paper path never runs this.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from fidesr.data.imageio import list_images, load_image

__all__ = ["degrade", "encode_prompt", "random_crops", "reconstruction_psnr", "train_prior", "warm_up_vae"]


def random_crops(
    images: Sequence[torch.Tensor], n: int, crop: int, generator: torch.Generator
) -> torch.Tensor:
    """``n`` random ``crop`` px crops of the images large enough, ``[n,3,crop,crop]`` in [0,1]."""
    usable = [im for im in images if min(im.shape[-2:]) >= crop]
    crops = []
    for _ in range(n):
        im = usable[int(torch.randint(len(usable), (1,), generator=generator))]
        y = int(torch.randint(im.shape[1] - crop + 1, (1,), generator=generator))
        x = int(torch.randint(im.shape[2] - crop + 1, (1,), generator=generator))
        crops.append(im[:, y : y + crop, x : x + crop])
    return torch.stack(crops)


def warm_up_vae(
    vae,
    images: Sequence[torch.Tensor],
    steps: int,
    crop: int,
    batch: int,
    lr: float,
    generator: torch.Generator,
) -> float:
    """Train the tiny VAE as an autoencoder on random crops; returns the last batch's PSNR (dB).

    L1 loss plus a 1e-6 KL term; Adam with a one-cycle schedule (5 % warm-up to ``lr``, cosine decay)."""
    vae.train()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.05)
    mse = torch.tensor(1.0)
    for _ in range(steps):
        x = random_crops(images, batch, crop, generator) * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        mse = F.mse_loss(recon, x)
        loss = F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    vae.eval()
    # mse is on [-1,1]; on [0,1] it is a quarter of that.
    return float(10 * torch.log10(1.0 / (mse.detach() / 4)))


@torch.no_grad()
def reconstruction_psnr(vae, val_root: Path) -> dict[str, float]:
    """Mean RGB PSNR (dB) on the demo validation pairs (``val_root``/gt, /lq) of the VAE round trip of the
    GT (posterior mean) and, for reference, of bicubic-upsampled LQ."""
    vae_db, bicubic_db = [], []
    for gt_path, lq_path in zip(list_images(val_root / "gt"), list_images(val_root / "lq"), strict=True):
        gt, lq = load_image(gt_path)[None], load_image(lq_path)[None]
        recon = (vae.decode(vae.encode(gt * 2 - 1).latent_dist.mean).sample + 1) / 2
        up = F.interpolate(lq, size=gt.shape[-2:], mode="bicubic")
        for out, acc in ((recon, vae_db), (up, bicubic_db)):
            acc.append(float(10 * torch.log10(1 / F.mse_loss(out.clamp(0, 1), gt))))
    return {
        "vae_val_psnr_db": sum(vae_db) / len(vae_db),
        "bicubic_val_psnr_db": sum(bicubic_db) / len(bicubic_db),
    }


def degrade(x: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """The demo's degradation and the pipeline's upsampling: antialiased bicubic x``scale`` down, bicubic
    back up. ``x`` ``[B,3,H,W]`` in [0,1] (H, W multiples of ``scale``) -> same shape, clamped to [0,1]."""
    lq = F.interpolate(x, scale_factor=1 / scale, mode="bicubic", antialias=True)
    return F.interpolate(lq, scale_factor=scale, mode="bicubic").clamp(0, 1)


@torch.no_grad()
def encode_prompt(tokenizer, text_encoder, text: str) -> torch.Tensor:
    """Prompt embeddings ``[1,77,D]`` as the backbone computes them (padded to the model's length)."""
    ids = tokenizer(
        text,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids)[0]


def train_prior(
    unet,
    vae,
    tokenizer,
    text_encoder,
    alphas_cumprod: torch.Tensor,
    images: Sequence[torch.Tensor],
    negative_prompt: str,
    steps: int,
    crop: int,
    batch: int,
    lr: float,
    pool: int,
    generator: torch.Generator,
) -> float:
    """Pre-train the UNet as an ``eps`` predictor on the demo photos' latents; returns the mean loss of the
    last 10 % of the steps.

    ``pool`` crops of ``crop`` px are encoded once (VAE mean times its scaling factor), clean and degraded
    (:func:`degrade`); each step draws ``batch`` of them, half clean with the empty prompt and half degraded
    with ``negative_prompt``, random flips, ``t ~ U_int[0, 1000)``. AdamW with a cosine decay.
    """
    sf = float(vae.config.scaling_factor)
    with torch.no_grad():
        clean = random_crops(images, pool, crop, generator)
        latents = []
        for part in (clean, degrade(clean)):
            latents.append(torch.cat([vae.encode(c * 2 - 1).latent_dist.mean * sf for c in part.split(32)]))
        embeds = torch.cat([encode_prompt(tokenizer, text_encoder, t) for t in ("", negative_prompt)])
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1)))
    )
    losses: list[float] = []
    half = batch // 2
    for _ in range(steps):
        kind = torch.cat([torch.zeros(batch - half, dtype=torch.long), torch.ones(half, dtype=torch.long)])
        idx = torch.randint(pool, (batch,), generator=generator)
        z0 = torch.stack([latents[int(k)][int(i)] for k, i in zip(kind, idx, strict=True)])
        flip = torch.rand(batch, generator=generator) < 0.5
        z0 = torch.where(flip[:, None, None, None], z0.flip(-1), z0)
        t = torch.randint(len(alphas_cumprod), (batch,), generator=generator)
        eps = torch.randn(z0.shape, generator=generator)
        abar = alphas_cumprod[t].view(-1, 1, 1, 1)
        z_t = abar.sqrt() * z0 + (1 - abar).sqrt() * eps
        pred = unet(z_t, t, encoder_hidden_states=embeds[kind]).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    unet.eval()
    tail = losses[-max(1, steps // 10) :] if losses else [float("nan")]
    return sum(tail) / len(tail)
