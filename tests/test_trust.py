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
from fidesr.model_files import TrainedWeights
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
