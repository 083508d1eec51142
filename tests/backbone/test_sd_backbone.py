"""The SD adapter on the tiny preset: LoRA split, loading paths, teacher, residual, merge."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from fidesr.backbone import (
    ADAPTER_NAMES,
    LORA_TARGETS,
    BackboneLoadError,
    StableDiffusionBackbone,
    split_lora_targets,
)


def test_lora_split_matches_official_selection(tiny_backbone_folder: Path):
    unet = UNet2DConditionModel.from_pretrained(tiny_backbone_folder / "unet")
    split = split_lora_targets(unet)
    # Independent re-statement of the official rule, over parameter names.
    expected = {k: set() for k in ADAPTER_NAMES}
    for name, _ in unet.named_parameters():
        if name.endswith(".bias") or "norm" in name or not any(p in name for p in LORA_TARGETS):
            continue
        module = name.removesuffix(".weight")
        key = (
            "default_encoder"
            if ("down_blocks" in name or "conv_in" in name)
            else "default_decoder"
            if ("up_blocks" in name or "conv_out" in name)
            else "default_others"
        )
        expected[key].add(module)
    assert {k: set(v) for k, v in split.items()} == expected
    assert all(split[k] for k in ADAPTER_NAMES)
    flat = [m for v in split.values() for m in v]
    assert len(flat) == len(set(flat)), "a module is in two adapters"
    assert "conv_in" in split["default_encoder"] and "conv_out" in split["default_decoder"]
    assert not any("time_emb" in m or "time_embedding" in m for m in flat), (
        "time embeddings must stay untouched"
    )
    assert any(m.startswith("mid_block") for m in split["default_others"])


def test_trainable_parameters_are_lora_only_with_expected_counts(make_tiny_backbone):
    bb = make_tiny_backbone(lora_rank=8, lora_alpha=8)
    names = [n for n, p in bb.named_parameters() if p.requires_grad]
    assert names and all("lora" in n for n in names)
    # One lora_A and one lora_B per wrapped module, each under its own adapter name.
    for adapter, modules in bb.lora_split.items():
        adapter_params = [n for n in names if n.endswith(f".{adapter}.weight")]
        assert len(adapter_params) == 2 * len(modules), adapter
    # Rank 8 and scale alpha / r = 1 on every LoRA layer.
    from peft.tuners.lora import LoraLayer

    layers = [m for m in bb.unet.modules() if isinstance(m, LoraLayer)]
    assert layers and all(m.r[a] == 8 and m.scaling[a] == 1.0 for m in layers for a in m.r)
    assert set(bb.unet.active_adapters()) == set(ADAPTER_NAMES)


def test_local_folder_written_by_save_pretrained_loads_like_a_hub_id(
    make_tiny_backbone, tiny_backbone_folder, tmp_path
):
    """A folder written with save_pretrained loads through the same from_pretrained path as a hub id."""
    bb = make_tiny_backbone(lora_rank=0)
    out = tmp_path / "sd"
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(bb, sub).save_pretrained(out / sub)
    again = StableDiffusionBackbone.from_pretrained(out, lora_rank=0)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    torch.testing.assert_close(again.encode(x, generator=g()), bb.encode(x, generator=g()), rtol=0, atol=0)
    emb = bb.encode_prompt(["a cat"])
    torch.testing.assert_close(again.encode_prompt(["a cat"]), emb, rtol=0, atol=0)
    assert again.alphas_cumprod.shape == (1000,)


def test_missing_or_incomplete_folder_names_what_is_missing(tiny_backbone_folder, tmp_path):
    with pytest.raises(BackboneLoadError, match="no such folder"):
        StableDiffusionBackbone.from_pretrained(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_backbone_folder, broken)
    shutil.rmtree(broken / "vae")
    (broken / "unet" / "config.json").unlink()
    with pytest.raises(
        BackboneLoadError, match=r"missing vae/, unet/config.json|missing unet/config.json, vae/"
    ):
        StableDiffusionBackbone.from_pretrained(broken)


def test_hub_id_without_network_says_how_to_provide_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(
        BackboneLoadError,
        match="looked for someone/sd-copy; .*hf download someone/sd-copy.*local diffusers folder",
    ):
        StableDiffusionBackbone.from_pretrained("someone/sd-copy", local_files_only=True)


def _with_trained_lora(bb: StableDiffusionBackbone) -> StableDiffusionBackbone:
    """Non-zero LoRA B matrices (seeded), so that "adapters on" really differs from the base UNet."""
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in bb.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return bb


def test_teacher_equals_separately_built_frozen_unet(make_tiny_backbone, tiny_backbone_folder):
    bb = _with_trained_lora(make_tiny_backbone())
    frozen = UNet2DConditionModel.from_pretrained(tiny_backbone_folder / "unet").eval()
    z = torch.randn(2, 4, 16, 16)
    t = torch.tensor([20, 499])
    emb = bb.encode_prompt(["", "a photo"])
    eps_teacher = bb.teacher_eps(z, t, emb)
    eps_ref = frozen(z, t, encoder_hidden_states=emb).sample
    torch.testing.assert_close(eps_teacher, eps_ref, rtol=1e-5, atol=1e-5)
    assert not eps_teacher.requires_grad
    # Adapters are restored after the teacher call: the LoRA UNet differs from the base again.
    with_lora = bb.unet(z, t, encoder_hidden_states=emb).sample
    assert (with_lora - eps_ref).abs().max() > 1e-3


def test_residual_is_unet_at_t1_and_merge_preserves_output(make_tiny_backbone):
    bb = _with_trained_lora(make_tiny_backbone())
    z = torch.randn(2, 4, 16, 16)
    emb = bb.encode_prompt(["", ""])
    with torch.no_grad():
        r = bb.residual(z, emb)
        ref = bb.unet(z, torch.ones(2, dtype=torch.long), encoder_hidden_states=emb).sample
        torch.testing.assert_close(r, ref, rtol=0, atol=0)
        bb.fuse_lora()
        merged = bb.residual(z, emb)
    torch.testing.assert_close(merged, r, rtol=1e-4, atol=1e-5)


def test_prompt_cache_and_gradient_checkpointing_flag(make_tiny_backbone):
    bb = make_tiny_backbone(gradient_checkpointing=True)
    assert bb.unet.is_gradient_checkpointing
    a = bb.encode_prompt(["", "neg"])
    b = bb.encode_prompt(["", "neg"])
    assert torch.equal(a, b) and a.shape[0] == 2
    assert any(k.endswith("|") for k in bb._prompt_cache)


def test_frozen_dtype_keeps_lora_in_float32(make_tiny_backbone):
    bb = make_tiny_backbone(frozen_dtype="bfloat16")
    lora = [p for n, p in bb.unet.named_parameters() if "lora" in n]
    base = [p for n, p in bb.unet.named_parameters() if "lora" not in n]
    assert all(p.dtype == torch.float32 for p in lora)
    assert all(p.dtype == torch.bfloat16 for p in base)
    assert next(bb.vae.parameters()).dtype == torch.bfloat16
