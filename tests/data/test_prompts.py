"""Prompt providers (fidesr.data.prompts), their Hydra configs and the tag precompute script, on files the
tests write. RAM is exercised with a fake ``ram`` package (the real one and its weights are not here)."""

from __future__ import annotations

import importlib.util
import json
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch

from fidesr.data.prompts import (
    EmptyPrompt,
    FilePrompts,
    FixedPrompt,
    PromptsError,
    RAMPrompts,
    RAMUnavailableError,
    normalize_tags,
)

ROOT = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)


def test_empty_and_fixed() -> None:
    assert EmptyPrompt()(Path("/x/a.png")) == ""
    assert FixedPrompt("a photo")("b.jpg") == "a photo"


def test_normalize_tags() -> None:
    assert normalize_tags(["cat", " dog ", ""]) == "cat, dog"
    assert normalize_tags("cat | dog | grass") == "cat, dog, grass"  # RAM's separator
    assert normalize_tags(None) == ""


def test_file_prompts_json(tmp_path: Path) -> None:
    f = tmp_path / "tags.json"
    f.write_text(json.dumps({"0001.png": "cat, sofa", "0002": ["dog", "grass"]}))
    prompts = FilePrompts(f)
    assert len(prompts) == 2
    assert prompts(Path("/data/train/0001.png")) == "cat, sofa"  # looked up by stem
    assert prompts("0002.jpg") == "dog, grass"
    with pytest.raises(PromptsError, match=r"'0003'.*2 entries"):
        prompts("/data/train/0003.png")


def test_file_prompts_csv_with_and_without_header(tmp_path: Path) -> None:
    with_header = tmp_path / "a.csv"
    with_header.write_text('name,tags\n0001,"cat, sofa"\n0002,dog\n')
    assert FilePrompts(with_header)("x/0001.png") == "cat, sofa"
    bare = tmp_path / "b.csv"
    bare.write_text("0001.png,cat, sofa, lamp\n")  # unquoted commas in the tags are kept
    assert FilePrompts(bare)("0001.png") == "cat, sofa, lamp"


def test_file_prompts_missing_empty_mode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "t.json"
    f.write_text("{}")
    prompts = FilePrompts(f, missing="empty")
    assert prompts("a.png") == ""
    assert prompts("a.png") == ""
    assert sum("no tags for a" in r.message for r in caplog.records) == 1  # warned once


def test_file_prompts_errors(tmp_path: Path) -> None:
    missing = FilePrompts(tmp_path / "nope.json")  # built before the data exists (config checks) ...
    with pytest.raises(FileNotFoundError, match="does not exist"):
        missing("a.png")  # ... and fails on first use
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({"a.png": "x", "a.jpg": "y"}))
    with pytest.raises(PromptsError, match="two entries for the image stem 'a'"):
        len(FilePrompts(dup))
    bad = tmp_path / "t.txt"
    bad.write_text("a x")
    with pytest.raises(PromptsError, match="unsupported"):
        FilePrompts(bad)("a")
    one_col = tmp_path / "c.csv"
    one_col.write_text("a\n")
    with pytest.raises(PromptsError, match="one column"):
        FilePrompts(one_col)("a")
    arr = tmp_path / "arr.json"
    arr.write_text("[1, 2]")
    with pytest.raises(PromptsError, match="JSON object"):
        FilePrompts(arr)("a")


def test_ram_not_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ram", None)  # import ram -> ImportError
    with pytest.raises(RAMUnavailableError, match="needs the `ram` package.*recognize-anything"):
        RAMPrompts(tmp_path / "ram.pth")


@pytest.fixture
def fake_ram(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """A stand-in ``ram`` package with the API fidesr uses (models.ram, inference_ram, get_transform)."""
    calls = types.SimpleNamespace(built=0)

    class Model(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    def ram(pretrained: str, image_size: int, vit: str) -> Model:
        calls.built += 1
        return Model()

    pkg = types.ModuleType("ram")
    pkg.inference_ram = lambda x, model: ("bright | red" if float(x.mean()) > 0.5 else "dark | blue", "中文")
    pkg.get_transform = lambda image_size: (
        lambda img: torch.from_numpy(
            __import__("numpy").asarray(img.resize((image_size, image_size)), dtype="float32") / 255.0
        ).permute(2, 0, 1)
    )
    pkg.models = types.ModuleType("ram.models")
    pkg.models.ram = ram
    monkeypatch.setitem(sys.modules, "ram", pkg)
    monkeypatch.setitem(sys.modules, "ram.models", pkg.models)
    return calls


def _write_png(path: Path, value: float) -> Path:
    from fidesr.data.imageio import save_image

    save_image(torch.full((3, 16, 16), value), path)
    return path


def test_ram_prompts_with_fake_package(fake_ram: types.SimpleNamespace, tmp_path: Path) -> None:
    with pytest.raises(RAMUnavailableError, match="weights not found"):
        RAMPrompts(tmp_path / "missing.pth")
    weights = tmp_path / "ram.pth"
    weights.write_bytes(b"x")
    with pytest.raises(RAMUnavailableError, match="no model 'ram_tiny'"):
        RAMPrompts(weights, model="ram_tiny")  # type: ignore[arg-type]
    prompts = RAMPrompts(weights, image_size=8)
    assert fake_ram.built == 0  # loaded lazily, on first use
    assert prompts(_write_png(tmp_path / "w.png", 0.9)) == "bright, red"
    assert prompts(_write_png(tmp_path / "k.png", 0.1)) == "dark, blue"
    assert fake_ram.built == 1
    clone = pickle.loads(pickle.dumps(prompts))  # data-loader workers: no model inside
    assert clone._model is None and clone(tmp_path / "w.png") == "bright, red"


@pytest.mark.parametrize("name", ["empty", "fixed", "file", "ram"])
def test_hydra_configs(
    name: str, compose, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_ram: types.SimpleNamespace
) -> None:
    from hydra.utils import instantiate

    tags = tmp_path / "tags" / "train_ram.json"
    tags.parent.mkdir()
    tags.write_text(json.dumps({"a": "cat"}))
    (tmp_path / "ram_swin_large_14m.pth").write_bytes(b"x")
    cfg = compose([f"prompts={name}", f"paths.data_dir={tmp_path}", f"paths.weights_dir={tmp_path}"])
    prompts = instantiate(cfg.prompts)
    assert callable(prompts)
    assert cfg.data.prompts == cfg.prompts  # what the training data module receives
    expected = {"empty": "", "fixed": "", "file": "cat"}
    if name in expected:
        assert prompts(tmp_path / "a.png") == expected[name]
    else:
        assert isinstance(prompts, RAMPrompts)


def _load_script() -> types.ModuleType:
    path = ROOT / "experiments" / "prompts" / "precompute_tags.py"
    spec = importlib.util.spec_from_file_location("precompute_tags", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_precompute_tags_without_ram(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ram", None)
    code = _load_script().main(
        [str(tmp_path), "--out", str(tmp_path / "t.json"), "--weights", str(tmp_path / "w.pth")]
    )
    assert code == 2
    assert "not installed" in capsys.readouterr().err


def test_precompute_tags_writes_json_and_resumes(fake_ram: types.SimpleNamespace, tmp_path: Path) -> None:
    images = tmp_path / "hq"
    images.mkdir()
    _write_png(images / "0001.png", 0.9)
    _write_png(images / "0002.png", 0.1)
    weights = tmp_path / "ram.pth"
    weights.write_bytes(b"x")
    out = tmp_path / "tags.json"
    script = _load_script()
    assert script.main([str(images), "--out", str(out), "--weights", str(weights), "--image-size", "8"]) == 0
    assert json.loads(out.read_text()) == {"0001": "bright, red", "0002": "dark, blue"}
    assert FilePrompts(out)(images / "0002.png") == "dark, blue"  # what training reads
    _write_png(images / "0003.png", 0.8)
    built = fake_ram.built
    assert script.main([str(images), "--out", str(out), "--weights", str(weights), "--image-size", "8"]) == 0
    assert set(json.loads(out.read_text())) == {"0001", "0002", "0003"} and fake_ram.built == built + 1
