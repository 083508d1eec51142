"""Weight files are data only: a registry entry with a short sha256 prefix and a crafted pickle whose digest
starts with it (the attack a prefix allows) is refused at download, install, link, status and use, and its
payload (creating a marker file) never runs; a real state dict under a prefix entry still scores."""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from _weights_server import serve
from fidesr import weights as W
from fidesr.metrics.suite import build_pyiqa_metric
from fidesr.protocol import PROTOCOL
from fidesr.weights import registry as R
from fidesr.weights.fetch import FetchError

MUSIQ = "musiq-koniq"  # registered, as published, with the 8 hex digits of its file name only


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appears if, and only if, the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (builtins.open, (str(self.marker), "w"))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PAYLOAD_RAN"


@pytest.fixture
def crafted(tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[R.WeightFile, Path]:
    """A hostile ``musiq_koniq_ckpt-….pth`` and MUSIQ's registry entry with the first 8 hex digits of its
    sha256 (the brute force this stands for takes about a minute on one core)."""
    path = tmp_path / "hostile" / R.FILES[MUSIQ].filename
    path.parent.mkdir()
    torch.save({"params": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, path)
    f = dataclasses.replace(R.FILES[MUSIQ], sha256=hashlib.sha256(path.read_bytes()).hexdigest()[:8])
    monkeypatch.setitem(R.FILES, MUSIQ, f)
    assert not f.full_hash and W.sha256_file(path).startswith(f.sha256)
    return f, path


def test_inside_the_scope_every_torch_load_is_weights_only(
    crafted: tuple, marker: Path, tmp_path: Path
) -> None:
    """pyiqa's own loader (weights_only=False) and torch.hub's cached-file path get our data-only load."""
    from pyiqa.archs.arch_util import load_pretrained_network

    _, path = crafted
    original = torch.load
    with W.data_only_loads():
        with pytest.raises(
            W.WeightsNotDataError, match=r"not plain tensor data \(Unsupported global: GLOBAL io.open\)"
        ):
            torch.load(path, weights_only=False)
        with pytest.raises(W.WeightsNotDataError, match=str(path)):
            load_pretrained_network(torch.nn.Linear(1, 1), str(path))
        with pytest.raises(W.WeightsNotDataError):
            url = f"https://example.invalid/{path.name}"  # already in model_dir: no download is attempted
            torch.hub.load_state_dict_from_url(url, model_dir=str(path.parent), check_hash=False)
    assert torch.load is original and not marker.exists()
    good = tmp_path / "good.pth"
    torch.save({"module.w": torch.ones(3)}, good)
    assert W.prove_data(good) is None
    with W.data_only_loads():
        assert torch.load(good, map_location="cpu", weights_only=False)["module.w"].sum() == 3


def test_a_mirror_serving_the_crafted_file_gets_nothing_saved(
    crafted: tuple, marker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weights_dir: Path
) -> None:
    """Before: `fidesr-weights download --metrics musiq --mirror URL` showed it as ready."""
    f, path = crafted
    with serve(tmp_path / "srv") as srv:
        srv.put(f.filename, path.read_bytes())
        with pytest.raises(
            FetchError, match=r"Unsupported global: GLOBAL io.open\): its sha256 prefix matches"
        ):
            W.fetch_file(f, weights_dir, mirror=srv.url, progress=False)
    assert not W.file_path(f, weights_dir).exists() and not list(weights_dir.rglob("*.part"))
    assert not marker.exists()


def test_installed_or_linked_by_hand_it_is_refused(
    crafted: tuple, marker: Path, weights_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f, path = crafted
    logs: list[str] = []
    for mode in ("copy", "link"):
        assert W.adopt([path], weights_dir, mode=mode, log=logs.append) == {}
    assert len(logs) == 2 and all(line.startswith(f"refused  {path}: not plain data") for line in logs)
    assert not W.file_path(f, weights_dir).exists()
    dest = W.file_path(f, weights_dir)  # copied into place by hand: status and the run refuse it
    dest.parent.mkdir(parents=True)
    dest.write_bytes(path.read_bytes())
    s = W.file_status(f, weights_dir)
    assert s.state == "not plain data" and "a sha256 prefix alone proves nothing" in s.detail
    with pytest.raises(W.WeightsMissingError, match=r"musiq_koniq_ckpt-\w+\.pth \[not plain data"):
        W.check_weights(["musiq"], required=["musiq"], weights_dir=weights_dir)
    from fidesr.cli.weights import main

    assert main(["--weights-dir", str(weights_dir), "status", "--check", "--metrics", "musiq"]) == 1
    out = capsys.readouterr().out
    assert "not plain data" in out and f"sha256 {f.sha256}… (prefix sha256 + proven data)" in out
    assert not marker.exists()


def test_at_use_it_is_refused_even_when_the_status_cache_is_forged(
    crafted: tuple, marker: Path, weights_dir: Path
) -> None:
    """The use-time load is the guarantee: a forged verification cache makes status say ok, and building
    the metric still reads the file weights-only and refuses it before anything of it runs."""
    f, path = crafted
    dest = W.file_path(f, weights_dir)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(path.read_bytes())
    st = dest.stat()
    ident = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
    entry = {"id": ident, "digest": W.sha256_file(dest), "not_data": ""}
    (weights_dir / ".fidesr-verified.json").write_text(
        json.dumps({str(dest.relative_to(weights_dir)): entry})
    )
    assert W.file_status(f, weights_dir).ok
    with pytest.raises(W.WeightsNotDataError, match=f"{dest}: not plain tensor data"):
        build_pyiqa_metric(PROTOCOL["musiq"], {}, torch.device("cpu"), weights_dir)
    assert not marker.exists()


@pytest.mark.slow
def test_a_real_state_dict_under_a_prefix_entry_is_fetched_and_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weights_dir: Path
) -> None:
    """The data path changes nothing for honest files: MUSIQ's network (random weights, saved with the
    'module.' prefix pyiqa strips) is fetched under a prefix entry, proven, and handed to pyiqa."""
    from pyiqa.archs.musiq_arch import MUSIQ as MusiqNet

    torch.manual_seed(0)
    net = MusiqNet(pretrained=False)
    path = tmp_path / R.FILES[MUSIQ].filename
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    f = dataclasses.replace(R.FILES[MUSIQ], sha256=W.sha256_file(path)[:8])
    monkeypatch.setitem(R.FILES, MUSIQ, f)
    with serve(tmp_path / "srv") as srv:
        srv.put(f.filename, path.read_bytes())
        W.fetch_file(f, weights_dir, mirror=srv.url, progress=False)
    assert W.file_status(f, weights_dir).ok
    metric = build_pyiqa_metric(PROTOCOL["musiq"], {}, torch.device("cpu"), weights_dir)
    loaded = metric.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())
    score = metric(torch.rand(1, 3, 64, 64))
    assert torch.isfinite(score).all()


def test_prove_data_names_what_a_file_is(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(4096))
    assert W.prove_data(junk).startswith("not plain tensor data (")
    assert W.prove_data(tmp_path / "absent.pth").startswith("unreadable (FileNotFoundError")
