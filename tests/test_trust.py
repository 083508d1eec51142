"""The trust boundary: hostile model files stay data. Each file is built here with a payload that would
leave a trace (a marker file created, a victim file truncated or overwritten) if any code from it ran."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from fidesr.cli.upscale import main as upscale
from fidesr.errors import ModelFileError, UntrustedConfigError
from fidesr.modelio import TrainedWeights
from fidesr.pipeline import FiDeSRPipeline
from fidesr.trust import ALLOWED_TARGETS, check_stored_config, load_torch_file

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this calls os.system: what a crafted .pkl / .ckpt does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text("precious")
    return path


def _hostile_config(
    trained: dict, victim: Path, section: str = "lrrb", target: str = "builtins.open"
) -> dict:
    """The trained model's config with one section replaced by a call that would truncate ``victim``."""
    config = TrainedWeights.load(trained["ckpt"]).config
    args = [str(victim), "w"] if target == "builtins.open" else [str(victim.with_suffix(".src")), str(victim)]
    config[section] = {"_target_": target, "_args_": args}
    return config


def _upscale_with(model: Path, tmp_path: Path, *extra: str) -> int:
    lq = tmp_path / "lq.png"
    if not lq.exists():
        from fidesr.data.imageio import save_image

        save_image(torch.rand(3, 16, 16), lq)
    return upscale(
        [
            str(lq),
            "-o",
            str(tmp_path / "out"),
            "--checkpoint",
            str(model),
            "--device",
            "cpu",
            "--no-progress",
            *extra,
        ]
    )


def test_a_pickle_payload_never_runs(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    for name in ("fidesr.pkl", "last.ckpt", "model.pt"):
        path = tmp_path / name
        with path.open("wb") as fh:
            pickle.dump({"state_dict": {"x": _Payload(marker)}}, fh)
        with pytest.raises(ModelFileError, match=name):
            TrainedWeights.load(path)
        assert _upscale_with(path, tmp_path) == 1
        err = capsys.readouterr().err
        assert f"fidesr-upscale: error: {path}: refusing to load" in err and "--unsafe-pickle" in err
        assert (
            upscale(
                [
                    str(tmp_path / "lq.png"),
                    "-o",
                    str(tmp_path / "o2"),
                    "--official",
                    str(path),
                    "--pretrained",
                    str(tmp_path),
                    "--device",
                    "cpu",
                ]
            )
            == 1
        )
        assert "refusing to load" in capsys.readouterr().err
    # torch.save'd too (the zip format): the same refusal.
    torch.save({"state_dict": {"x": _Payload(marker)}}, tmp_path / "zip.ckpt")
    with pytest.raises(ModelFileError, match="posix.system|refusing"):
        TrainedWeights.load(tmp_path / "zip.ckpt")
    assert not marker.exists()


def test_random_bytes_are_refused_with_the_file_named(tmp_path: Path) -> None:
    path = tmp_path / "noise.pkl"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ModelFileError, match="noise.pkl"):
        TrainedWeights.load(path)


def test_unsafe_pickle_is_an_explicit_opt_in(tmp_path: Path) -> None:
    """A harmless foreign class (argparse.Namespace) is refused by default and loads with the flag."""
    import argparse

    path = tmp_path / "foreign.pkl"
    torch.save({"cfg": argparse.Namespace(a=1)}, path)
    with pytest.raises(ModelFileError, match="refusing"):
        load_torch_file(path, "official checkpoint")
    with pytest.warns(UserWarning, match="unsafe-pickle"):
        assert load_torch_file(path, "official checkpoint", unsafe_pickle=True)["cfg"].a == 1


@pytest.mark.parametrize("target", ["builtins.open", "shutil.copyfile"])
def test_a_checkpoint_whose_config_names_code_is_refused(
    trained_model: dict, tmp_path: Path, victim: Path, target: str, capsys
) -> None:
    ckpt = torch.load(trained_model["ckpt"], weights_only=True)
    victim.with_suffix(".src").write_text("attacker's bytes")
    ckpt["fidesr"]["config"].update(_hostile_config(trained_model, victim, target=target))
    path = tmp_path / "hostile.ckpt"
    torch.save(ckpt, path)  # plain dicts and strings: weights_only loads it, the allow-list must stop it
    with pytest.raises(UntrustedConfigError, match=f"hostile.ckpt.*lrrb._target_ = '{target}'"):
        FiDeSRPipeline.from_pretrained(path, device="cpu")
    assert _upscale_with(path, tmp_path) == 1
    assert "not one of fidesr's model components" in capsys.readouterr().err
    assert victim.read_text() == "precious"


def test_an_exported_folder_whose_config_names_code_is_refused(
    trained_model: dict, tmp_path: Path, victim: Path, capsys
) -> None:
    folder = TrainedWeights.load(trained_model["ckpt"]).save_pretrained(tmp_path / "export")
    meta = json.loads((folder / "config.json").read_text())
    meta["config"] = _hostile_config(trained_model, victim, section="lfim")
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(UntrustedConfigError, match=r"config.json.*lfim._target_ = 'builtins.open'"):
        FiDeSRPipeline.from_pretrained(folder, device="cpu")
    assert _upscale_with(folder, tmp_path) == 1
    assert "refusing to load" in capsys.readouterr().err
    assert victim.read_text() == "precious"


def test_a_legacy_adapter_file_whose_config_names_code_is_refused(
    trained_model: dict, tmp_path: Path, victim: Path, capsys
) -> None:
    """The exact file of the report: an adapter .safetensors with builtins.open in its lrrb section."""
    from safetensors.torch import save_file

    weights = TrainedWeights.load(trained_model["ckpt"])
    header = {
        "format": "fidesr-adapter",
        "version": 1,
        "config": _hostile_config(trained_model, victim),
        "source": {},
    }
    path = tmp_path / "adapter.safetensors"
    save_file(
        {k: v.contiguous() for k, v in weights.state.items()},
        str(path),
        metadata={"fidesr": json.dumps(header)},
    )
    assert _upscale_with(path, tmp_path) == 1
    assert (
        "adapter.safetensors: refusing to load: the stored config's lrrb._target_" in capsys.readouterr().err
    )
    assert victim.read_text() == "precious"


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"backbone": {"_target_": "os.system", "_args_": ["true"]}}, "backbone._target_ = 'os.system'"),
        (
            {
                "lrrb": {
                    "_target_": "fidesr.components.lrrb.LatentResidualRefinementBlock",
                    "x": {"_target_": "eval"},
                }
            },
            "lrrb.x._target_",
        ),
        (
            {"lfim": {"_target_": "fidesr.components.lfim.LatentFrequencyInjection", "_partial_": True}},
            "_partial_",
        ),
        (
            {
                "lfim": {
                    "_target_": "fidesr.components.lfim.LatentFrequencyInjection",
                    "tau": "${oc.env:HOME}",
                }
            },
            "interpolation",
        ),
        (
            {"lrrb": {"_target_": "fidesr.components.lrrb.LatentResidualRefinementBlock", "_call_": "x"}},
            "_call_",
        ),
        ({"lrrb": [1, {"_target_": "subprocess.run"}]}, r"lrrb\[1\]._target_"),
    ],
)
def test_stored_config_rules(config: dict, match: str) -> None:
    with pytest.raises(UntrustedConfigError, match=match):
        check_stored_config(config, "model.json")


def test_every_model_component_our_configs_name_is_allowed() -> None:
    """The allow-list and conf/{backbone,lrrb,lfim} do not drift apart: a model trained with any shipped
    option loads again."""
    named = set()
    for group in ("backbone", "lrrb", "lfim"):
        for path in (ROOT / "conf" / group).glob("*.yaml"):
            node = yaml.safe_load(path.read_text()) or {}
            if "_target_" in node:
                named.add(node["_target_"])
    assert named and named <= ALLOWED_TARGETS, named - ALLOWED_TARGETS


def test_resuming_reads_the_checkpoint_as_data(tmp_path: Path) -> None:
    from fidesr.callbacks.training import AtomicCheckpointIO

    marker, path = tmp_path / "pwned", tmp_path / "last.ckpt"
    with path.open("wb") as fh:
        pickle.dump({"state_dict": {}, "loops": _Payload(marker)}, fh)
    with pytest.raises(ModelFileError, match="last.ckpt"):
        AtomicCheckpointIO().load_checkpoint(path)
    assert not marker.exists()
    # What fidesr-train writes loads this way (a real checkpoint: tensors, numbers, strings, dicts).
    io = AtomicCheckpointIO()
    io.save_checkpoint(
        {"state_dict": {"w": torch.ones(2)}, "global_step": 3, "loops": {"a": [1, 2.0, "x"]}}, path
    )
    assert io.load_checkpoint(path)["global_step"] == 3


def test_hub_fetch_never_asks_for_pickles(monkeypatch, tmp_path: Path) -> None:
    """from_hub fetches only the exported folder's JSON, safetensors and card (allow_patterns)."""
    import huggingface_hub

    seen = {}

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kw):
        seen["patterns"] = allow_patterns
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    with pytest.raises(ModelFileError, match="hf download user/model"):
        TrainedWeights.load("user/model")
    assert all(p.endswith((".json", ".safetensors", ".md")) for p in seen["patterns"])


# ---------------------------------------------------------------- a model folder is data within its folder
SD = "fidesr.backbone.StableDiffusionBackbone.from_pretrained"
TINY = "fidesr.backbone.build_tiny_backbone"
LRRB = "fidesr.components.lrrb.LatentResidualRefinementBlock"
LFIM = "fidesr.components.lfim.LatentFrequencyInjection"


def _valid_config() -> dict:
    return {
        "backbone": {"_target_": TINY, "unet_channels": [32, 64], "ae_warmup_steps": 10, "lora_rank": 8},
        "lrrb": {"_target_": LRRB, "num_blocks": 3},
        "lfim": {"_target_": LFIM, "lf_scale": 0.2},
        "model": {"color_fix": "adain", "min_lq_size": 32},
    }


@pytest.mark.parametrize(
    ("section", "key", "value", "match"),
    [
        ("lrrb", "num_blocks", 100_000, r"lrrb.num_blocks = 100000 is out of bounds \(from 1 to 64\)"),
        ("model", "min_lq_size", 30_000, r"model.min_lq_size = 30000 is out of bounds"),
        ("backbone", "ae_warmup_steps", 10**9, r"backbone.ae_warmup_steps = 1000000000 is out of bounds"),
        ("backbone", "lora_rank", 100_000, r"backbone.lora_rank = 100000 is out of bounds \(from 0 to 256\)"),
        ("backbone", "unet_channels", [12, 64], r"backbone.unet_channels\[0\] = 12 .*a multiple of 8"),
        ("backbone", "unet_channels", 64, r"backbone.unet_channels = 64 is not a list"),
        ("lfim", "lf_scale", float("nan"), r"lfim.lf_scale = nan is not finite"),
        ("lfim", "hf_scale", float("inf"), r"lfim.hf_scale = inf is not finite"),
        ("lfim", "lf_scale", -1, r"lfim.lf_scale = -1 is out of bounds"),
        ("lrrb", "num_blocks", "3", r"lrrb.num_blocks = '3' is not an integer"),
        ("lrrb", "num_blocks", True, r"lrrb.num_blocks = True is not an integer"),
        ("lfim", "grid", "polar", r"lfim.grid = 'polar' is not one of 'official', 'centered'"),
        ("lrrb", "colour", 1, r"lrrb.colour is not an argument of fidesr.components.lrrb"),
        ("lrrb", "_args_", [4, 64, 32, 100_000], r"lrrb._args_ is not an allowed Hydra key"),
        ("lrrb", "mid_channels", 1024, r"lrrb has [\d,]+ parameters, more than the 64,000,000"),
        (
            "backbone",
            "_target_",
            {"_target_": "os.system"},
            r"backbone._target_ = \{'_target_'.* is not one of",
        ),
        ("backbone", "_target_", [TINY], r"backbone._target_ = \['fidesr.backbone.build_tiny_backbone'\]"),
        (
            "lrrb",
            "_target_",
            LFIM,
            r"lrrb._target_ = 'fidesr.components.lfim.LatentFrequencyInjection' is not a lrrb",
        ),
    ],
)
def test_every_stored_argument_has_a_type_and_a_bound(section: str, key: str, value, match: str) -> None:
    """One line naming the file and the key, before anything is built (the LRRB budget: 1024 channels x
    1024 growth x 3 blocks is within each bound, not together)."""
    config = _valid_config()
    config[section][key] = value
    if key == "mid_channels":
        config["lrrb"]["growth"] = 1024
    with pytest.raises(UntrustedConfigError, match=f"^model.json: .*{match}") as info:
        check_stored_config(config, "model.json")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ("hello", "the stored config is a str, not a mapping"),
        ({"backbone": "hello"}, "backbone must be a mapping with a _target_"),
        ({"backbone": {"lora_rank": 8}}, "backbone must be a mapping with a _target_"),
        ({"model": [1]}, "model must be a mapping"),
        ({"model": {"color_fix": "sepia"}}, "model.color_fix = 'sepia' is not one of"),
    ],
)
def test_malformed_sections_are_one_line(config, match: str) -> None:
    with pytest.raises(UntrustedConfigError, match=match):
        check_stored_config(config, "model.json")


def test_the_bounds_cover_every_argument_and_every_shipped_config() -> None:
    """TARGET_ARGS and the targets' signatures, and conf/*, do not drift apart: every argument a target
    takes has an entry, and a model trained with any shipped option (values included) loads again."""
    import inspect

    from fidesr.backbone import build_tiny_backbone
    from fidesr.backbone.sd import StableDiffusionBackbone
    from fidesr.components.lfim import LatentFrequencyInjection
    from fidesr.components.lrrb import LatentResidualRefinementBlock
    from fidesr.trust import LOCATION_ARGS, SECTION_TARGETS, TARGET_ARGS

    assert set().union(*SECTION_TARGETS.values()) == set(TARGET_ARGS) == ALLOWED_TARGETS

    def params(fn) -> set[str]:
        return {
            p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD
        }

    backbone = params(StableDiffusionBackbone.__init__) - {
        "self",
        "unet",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
    }
    assert set(TARGET_ARGS[SD]) == params(StableDiffusionBackbone.from_pretrained) - {"cls"} | backbone
    assert set(TARGET_ARGS[TINY]) | LOCATION_ARGS == params(build_tiny_backbone) | backbone
    assert set(TARGET_ARGS[LRRB]) == params(LatentResidualRefinementBlock.__init__) - {"self"}
    assert set(TARGET_ARGS[LFIM]) == params(LatentFrequencyInjection.__init__) - {"self"}
    model = yaml.safe_load((ROOT / "conf" / "model" / "fidesr.yaml").read_text())
    for group in ("backbone", "lrrb", "lfim"):
        for path in (ROOT / "conf" / group).glob("*.yaml"):
            node = yaml.safe_load(path.read_text()) or {}
            if "_target_" in node:
                node = {k: ("/somewhere" if k == "cache_dir" else v) for k, v in node.items()}
                config = {group: node, "model": {k: model[k] for k in ("color_fix", "min_lq_size")}}
                check_stored_config(config, path)


def _export(trained: dict, tmp_path: Path, name: str = "export") -> Path:
    return TrainedWeights.load(trained["ckpt"]).save_pretrained(tmp_path / name)


def _edit_meta(folder: Path, edit) -> None:
    meta = json.loads((folder / "config.json").read_text())
    edit(meta)
    (folder / "config.json").write_text(json.dumps(meta))


def test_a_folder_reads_no_file_outside_itself(trained_model: dict, tmp_path: Path, capsys) -> None:
    """lora.weights as an absolute path, with '..', or a symlink leading out: refused, naming the key."""
    folder = _export(trained_model, tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    lora = outside / "pytorch_lora_weights.safetensors"
    lora.write_bytes((folder / "pytorch_lora_weights.safetensors").read_bytes())  # loads, if reached
    for name in (str(lora), "../elsewhere/pytorch_lora_weights.safetensors", "sub/../../x.safetensors"):
        _edit_meta(folder, lambda m, name=name: m["lora"].update(weights=name))
        with pytest.raises(
            UntrustedConfigError, match=r"config.json: lora.weights = .*outside the model folder"
        ):
            TrainedWeights.load(folder)
    _edit_meta(folder, lambda m: m["lora"].update(weights={"pix": str(lora)}))
    with pytest.raises(UntrustedConfigError, match=r"lora.weights.pix = .*outside the model folder"):
        TrainedWeights.load(folder)
    # The file names it always reads: a symlink out of the folder is refused as well.
    _edit_meta(folder, lambda m: m["lora"].update(weights="pytorch_lora_weights.safetensors"))
    (folder / "lrrb.safetensors").rename(outside / "lrrb.safetensors")
    (folder / "lrrb.safetensors").symlink_to(outside / "lrrb.safetensors")
    with pytest.raises(
        UntrustedConfigError, match=r"lrrb.safetensors is a link to .*outside the model folder"
    ):
        TrainedWeights.load(folder)
    assert _upscale_with(folder, tmp_path) == 1
    err = capsys.readouterr().err
    assert "fidesr-upscale: error: " in err and "outside the model folder" in err and "Traceback" not in err
    # A link inside the folder is fine.
    (folder / "lrrb.safetensors").unlink()
    (outside / "lrrb.safetensors").rename(folder / "weights.bin")
    (folder / "lrrb.safetensors").symlink_to("weights.bin")
    assert any(k.startswith("lrrb.") for k in TrainedWeights.load(folder).state)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.update(version="abc"), r"config.json: version = 'abc' is not an integer"),
        (lambda m: m.update(config="hello"), r"config.json: config is a str \('hello'\), not a mapping"),
        (
            lambda m: m["config"]["backbone"].update(_target_={"a": 1}),
            r"backbone._target_ = \{'a': 1\} is not one",
        ),
        (lambda m: m["config"]["lrrb"].update(_target_=[LRRB]), r"lrrb._target_ = \['fidesr.components"),
        (lambda m: m.update(lora=[1]), r"config.json: lora is a list"),
        (
            lambda m: m["lora"].update(adapters={"default_encoder": "down"}),
            r"lora.adapters.default_encoder = 'down'",
        ),
        (lambda m: m["config"]["lfim"].update(lf_scale=float("nan")), r"lfim.lf_scale = nan is not finite"),
    ],
)
def test_malformed_folder_fields_are_one_line_naming_the_key(
    trained_model: dict, tmp_path: Path, edit, match: str
) -> None:
    folder = _export(trained_model, tmp_path)
    _edit_meta(folder, edit)
    with pytest.raises(ModelFileError, match=match) as info:
        TrainedWeights.load(folder)
    assert "\n" not in str(info.value)


def test_malformed_checkpoint_and_adapter_fields_are_one_line(trained_model: dict, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    ckpt = torch.load(trained_model["ckpt"], weights_only=True)
    for fidesr, match in (
        ("hello", r"checkpoint\['fidesr'\] is a str"),
        ({"config": [1]}, r"\['config'\] is a list"),
    ):
        torch.save({**ckpt, "fidesr": fidesr}, tmp_path / "bad.ckpt")
        with pytest.raises(ModelFileError, match=match):
            TrainedWeights.load(tmp_path / "bad.ckpt")
    state = {k: v.contiguous() for k, v in TrainedWeights.load(trained_model["ckpt"]).state.items()}
    for header, match in (
        ({"format": "fidesr-adapter", "version": "x", "config": {}}, "version = 'x' is not an integer"),
        ({"format": "fidesr-adapter", "version": 1, "config": "hello"}, r"config is a str"),
        ([1, 2], "the fidesr metadata is a list"),
    ):
        path = tmp_path / "adapter.safetensors"
        save_file(state, str(path), metadata={"fidesr": json.dumps(header)})
        with pytest.raises(ModelFileError, match=match):
            TrainedWeights.load(path)


def test_a_stored_cache_dir_is_ignored(
    trained_model: dict, tiny_backbone_folder: Path, tmp_path: Path, capsys
) -> None:
    """The tiny preset is rebuilt in the user's $FIDESR_CACHE_DIR (here the session's, where it already
    is: same spec, so nothing is built), never where the file says; an export does not carry the stored
    location on."""
    ckpt = torch.load(trained_model["ckpt"], weights_only=True)
    elsewhere = tmp_path / "not-here"
    ckpt["fidesr"]["config"]["backbone"] = {
        "_target_": TINY,
        "cache_dir": str(elsewhere),
        "ae_warmup_steps": 10,
        "vae_channels": [32, 64, 64],
        "unet_zero_out": False,
        "lora_rank": 8,
        "lora_alpha": 8,
    }
    path = tmp_path / "tiny.ckpt"
    torch.save(ckpt, path)
    weights = TrainedWeights.load(path)
    assert "cache_dir" not in weights.config["backbone"]
    backbone, _, _ = weights.build()
    assert backbone.lora_rank == 8 and not elsewhere.exists()
    meta = json.loads((weights.save_pretrained(tmp_path / "export") / "config.json").read_text())
    assert "cache_dir" not in meta["config"]["backbone"]
    # Out of bounds in the same file: refused before anything is built.
    ckpt["fidesr"]["config"]["backbone"]["ae_warmup_steps"] = 10**9
    torch.save(ckpt, path)
    assert _upscale_with(path, tmp_path) == 1
    assert "backbone.ae_warmup_steps = 1000000000 is out of bounds" in capsys.readouterr().err
    assert not elsewhere.exists()


# ---------------------------------------------------------------- finite or refused
def test_non_finite_lora_or_lrrb_tensors_are_refused_at_load(trained_model: dict, tmp_path: Path) -> None:
    """A checkpoint, an exported folder and an adapter file with NaN / Inf: the file and the first
    offending tensor named."""
    from safetensors.torch import load_file, save_file

    ckpt = torch.load(trained_model["ckpt"], weights_only=True)
    key = next(k for k in ckpt["state_dict"] if "lora_A" in k)
    ckpt["state_dict"][key] = ckpt["state_dict"][key].clone()
    ckpt["state_dict"][key][0, 0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.ckpt")
    with pytest.raises(ModelFileError, match=r"nan.ckpt: tensor 'unet\..*lora_A.*' holds non-finite values"):
        TrainedWeights.load(tmp_path / "nan.ckpt")
    folder = _export(trained_model, tmp_path)
    lrrb = load_file(str(folder / "lrrb.safetensors"))
    lrrb["out_conv.bias"] = torch.full_like(lrrb["out_conv.bias"], float("inf"))
    save_file(lrrb, str(folder / "lrrb.safetensors"))
    with pytest.raises(ModelFileError, match=r"lrrb.safetensors: tensor 'out_conv.bias' holds non-finite"):
        TrainedWeights.load(folder)
    state = {k: v.contiguous() for k, v in TrainedWeights.load(trained_model["ckpt"]).state.items()}
    state["lrrb.in_conv.weight"] = state["lrrb.in_conv.weight"] * float("nan")
    header = {"format": "fidesr-adapter", "version": 1, "config": _valid_config()}
    save_file(state, str(tmp_path / "a.safetensors"), metadata={"fidesr": json.dumps(header)})
    with pytest.raises(ModelFileError, match=r"a.safetensors: tensor 'lrrb.in_conv.weight' holds non-finite"):
        TrainedWeights.load(tmp_path / "a.safetensors")


def test_malformed_official_fields_are_one_line(tmp_path: Path) -> None:
    """The official .pkl's rank, module lists and tensors: type, bound and finiteness, naming the key."""
    good = {
        "unet_lora_encoder_modules": ["conv_in"],
        "unet_lora_decoder_modules": [],
        "unet_lora_others_modules": [],
        "lora_rank_unet": 4,
        "state_dict_unet": {"conv_in.lora_A.default_encoder.weight": torch.zeros(4, 4, 3, 3)},
    }
    nan = {"conv_in.lora_A.default_encoder.weight": torch.full((4, 4, 3, 3), float("nan"))}
    for edit, match in (
        (
            {"lora_rank_unet": "abc"},
            r"fidesr.pkl \(lora_rank_unet\): .*backbone.lora_rank = 'abc' is not an integer",
        ),
        ({"lora_rank_unet": 100_000}, r"backbone.lora_rank = 100000 is out of bounds"),
        ({"unet_lora_encoder_modules": "conv_in"}, r"unet_lora_encoder_modules = 'conv_in' is not a list"),
        ({"state_dict_unet": [1]}, r"state_dict_unet is a list"),
        (
            {"state_dict_unet": nan},
            r"fidesr.pkl: tensor 'conv_in.lora_A.default_encoder.weight' holds non-finite",
        ),
    ):
        torch.save({**good, **edit}, tmp_path / "fidesr.pkl")
        with pytest.raises(ModelFileError, match=match):
            TrainedWeights.load(tmp_path / "fidesr.pkl")
