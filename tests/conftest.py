"""Shared test fixtures: a session cache with the tiny backbone, the demo data and compose helpers."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REALSR = SHARED / "datasets" / "realsr"

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One intra-op thread for the whole suite: the tensors are small, and on a shared 2-core machine OpenMP
# threads mostly wait on each other (NIQE's float64 ops, the degradation ops: 2-9x slower with two).
torch.set_num_threads(1)

# The tiny backbone as tests use it: the first demo's factor-4 VAE, a very short VAE warm-up and no prior (the tests
# check plumbing and exactness, not image quality) and a random conv_out, so that the CSD teacher and the
# residual are non-trivial functions.
TINY_OVERRIDES = [
    "backbone.ae_warmup_steps=10",
    "backbone.prior_steps=0",
    "backbone.vae_channels=[32,64,64]",
    "backbone.unet_zero_out=false",
]
# A training run that takes seconds: all components on, 32 px crops, 2 images per batch.
FAST_TRAIN_OVERRIDES = [
    "experiment=demo",
    *TINY_OVERRIDES,
    "data.crop_size=32",
    "data.batch_size=2",
    "data.val_batch_size=4",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "daw.warmup_steps=0",
    "daw.ramp_steps=1",
]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FIDESR_CACHE_DIR for the whole session (tiny backbone and demo data are built once)."""
    path = Path(os.environ.get("FIDESR_TEST_CACHE") or tmp_path_factory.mktemp("fidesr_cache"))
    os.environ["FIDESR_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_backbone_folder(cache_dir: Path) -> Path:
    from fidesr.backbone.tiny import tiny_sd_folder

    spec = dict(
        unet_channels=[32, 64],
        vae_channels=[32, 64, 64],
        text_dim=32,
        ae_warmup_steps=10,
        ae_crop=32,
        ae_batch=16,
        seed=0,
        unet_zero_out=False,
    )
    return tiny_sd_folder(cache_dir, **spec)


@pytest.fixture
def make_tiny_backbone(tiny_backbone_folder: Path):
    from fidesr.backbone.sd import StableDiffusionBackbone

    def make(**kwargs):
        return StableDiffusionBackbone.from_pretrained(tiny_backbone_folder, local_files_only=True, **kwargs)

    return make


def _compose(overrides: list[str], config_name: str = "train", return_hydra_config: bool = False):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="fidesr.conf", version_base="1.3"):
        return hydra_compose(
            config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config
        )


@pytest.fixture
def compose():
    """compose(overrides, config_name="train") -> DictConfig, through the installed `fidesr.conf`."""
    return _compose


@pytest.fixture
def fast_train_overrides(cache_dir: Path, tiny_backbone_folder: Path) -> list[str]:
    return list(FAST_TRAIN_OVERRIDES)


@pytest.fixture(scope="session")
def session_train_setup(cache_dir: Path, tiny_backbone_folder: Path):
    """(compose, fast training overrides, tiny-backbone overrides) for module- or session-scoped fixtures
    that train a model (a test module cannot import these from ``conftest``: tests/metrics has its own)."""
    return _compose, list(FAST_TRAIN_OVERRIDES), list(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def realsr() -> Path:
    if not REALSR.is_dir():
        pytest.skip(f"{REALSR} not present (../shared is provided in CI)")
    return REALSR


LFIM_CFG = {"_target_": "fidesr.components.lfim.LatentFrequencyInjection", "lf_scale": 0.2, "hf_scale": 0.2}
LRRB_CFG = {"_target_": "fidesr.components.lrrb.LatentResidualRefinementBlock", "latent_channels": 4}


@pytest.fixture(scope="session")
def trained_model(tiny_backbone_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 'trained' model (random LoRA A and B, random LRRB) and its checkpoint in fidesr-train's format."""
    from fidesr.backbone.sd import StableDiffusionBackbone
    from fidesr.components.lrrb import LatentResidualRefinementBlock

    torch.manual_seed(1)
    backbone = StableDiffusionBackbone.from_pretrained(tiny_backbone_folder, local_files_only=True)
    for name, p in backbone.unet.named_parameters():
        if "lora_" in name:
            p.data.normal_(0.0, 0.05)
    lrrb = LatentResidualRefinementBlock()
    for p in lrrb.parameters():
        p.data.normal_(0.0, 0.02)
    config = {
        "backbone": {
            "_target_": "fidesr.backbone.StableDiffusionBackbone.from_pretrained",
            "pretrained": str(tiny_backbone_folder),
            "local_files_only": True,
            "lora_rank": 8,
            "lora_alpha": 8,
            "lora_init": "gaussian",
        },
        "lrrb": LRRB_CFG,
        "lfim": LFIM_CFG,
        "daw": None,
        "model": {"_target_": "fidesr.model.FiDeSRModule", "color_fix": "adain", "min_lq_size": 32},
    }
    state = {f"backbone.unet.{k}": v.clone() for k, v in backbone.lora_state_dict().items()}
    state.update({f"lrrb.{k}": v.clone() for k, v in lrrb.state_dict().items()})
    ckpt = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    torch.save({"state_dict": state, "global_step": 7, "fidesr": {"config": config}}, ckpt)
    # The reference output: the training-time (unmerged) pipeline, as validation runs it.
    from fidesr.components.lfim import LatentFrequencyInjection
    from fidesr.pipeline import FiDeSRPipeline

    live = FiDeSRPipeline(backbone, lrrb, LatentFrequencyInjection(), min_lq_size=32)
    return {"ckpt": ckpt, "backbone": backbone, "lrrb": lrrb, "live": live, "folder": tiny_backbone_folder}


def write_png_bomb(path: Path, side: int = 100_000) -> Path:
    """A valid PNG whose header claims ``side`` x ``side`` RGB pixels, a few hundred bytes on disk: a
    decompression bomb (the pixels would take side^2 x 3 bytes once decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture
def png_bomb():
    """write_png_bomb(path, side=100_000) -> path."""
    return write_png_bomb


@contextlib.contextmanager
def file_size_limit(limit: int):
    """A full disk without a tmpfs: within the block, writing a file past ``limit`` bytes fails with EFBIG
    (``RLIMIT_FSIZE``, with SIGXFSZ ignored so the write raises instead of killing the process)."""
    import resource
    import signal

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


@pytest.fixture
def full_disk():
    """file_size_limit(limit) -> a context manager: files written in it fail past ``limit`` bytes."""
    return file_size_limit
