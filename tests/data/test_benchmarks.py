"""The standard test sets by name (``fidesr.data.benchmarks``, ``fidesr-data``): a small archive laid out as
StableSR's, fetched from a local mirror folder and from a Hub served on 127.0.0.1, checked and unpacked."""

from __future__ import annotations

import hashlib
import http.server
import io
import stat
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fidesr.data import benchmarks as B

COUNTS = {"realsr": 3, "drealsr": 2, "div2k_val": 2}


def _png(side: int, seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def stablesr_zip(extra: dict[str, bytes] | None = None, symlink: str | None = None) -> bytes:
    """StableSR's folder names (test_LR/test_HR for the real sets, lq/gt for DIV2K) under a top folder."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        layout = {
            "RealSRVal_crop128": ("test_LR", "test_HR", COUNTS["realsr"]),
            "DrealSRVal_crop128": ("test_LR", "test_HR", COUNTS["drealsr"]),
            "DIV2K_V2_val": ("lq", "gt", COUNTS["div2k_val"]),
        }
        for folder, (lq, gt, n) in layout.items():
            for i in range(n):
                zf.writestr(f"StableSR_testsets/{folder}/{lq}/{i:04d}.png", _png(8, i))
                zf.writestr(f"StableSR_testsets/{folder}/{gt}/{i:04d}.png", _png(32, 100 + i))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / B.HUB_FILE).write_bytes(stablesr_zip())
    return folder


def test_download_from_a_mirror_folder_unpacks_each_set_by_name(
    mirror: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    got = B.download(["realsr", "DIV2K-Val"], mirror=mirror, root=root, expected_pairs=COUNTS)
    assert set(got) == {"realsr", "div2k_val"}
    for name in got:
        folder = root / "benchmarks" / name
        assert sorted(p.name for p in (folder / "lq").iterdir()) == sorted(
            p.name for p in (folder / "gt").iterdir()
        )
        assert len(list((folder / "lq").iterdir())) == COUNTS[name]
        with Image.open(next((folder / "gt").iterdir())) as im:
            assert im.size == (32, 32)
    assert "S-Lab" in capsys.readouterr().out  # the licence is shown before anything is fetched
    assert B.resolve_set("realsr", root).lq == root / "benchmarks" / "realsr" / "lq"
    assert B.resolve_set("RealSRVal_crop128", root).name == "realsr"
    with pytest.raises(B.SetMissingError, match="fidesr-data download drealsr"):
        B.resolve_set("drealsr", root)
    from fidesr.cli.data import main

    assert main(["status", "--data-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "realsr     present, 3 pairs" in out and "fetch them: fidesr-data download drealsr" in out


def test_download_from_a_mirror_url(tmp_path: Path) -> None:
    """--mirror URL: the archive by its file name under that base URL (an HTTP server on 127.0.0.1)."""
    from _weights_server import serve

    with serve(tmp_path / "srv") as srv:
        srv.put(B.HUB_FILE, stablesr_zip())
        got = B.download(["div2k_val"], mirror=srv.url, root=tmp_path / "data", expected_pairs=COUNTS)
        assert srv.gets == [B.HUB_FILE]
    assert len(list(got["div2k_val"].lq.iterdir())) == COUNTS["div2k_val"]
    assert not list((tmp_path / "data" / "benchmarks" / ".downloads").glob("*.part"))


def test_a_mirror_url_streaming_forever_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test-set archive's download has the weights' bounds: past the cap (8 GiB; 1 MiB here) it stops,
    and the partial file is removed."""
    from _weights_server import serve

    monkeypatch.setattr(B, "ARCHIVE_MAX_BYTES", 1 << 20)
    with serve(tmp_path / "srv") as srv:
        srv.endless.add(B.HUB_FILE)
        with pytest.raises(
            B.BenchmarkDataError, match=r"more than 1,048,576 bytes sent; stopped, nothing saved"
        ):
            B.download(["div2k_val"], mirror=srv.url, root=tmp_path / "data", expected_pairs=COUNTS)
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]


def test_download_from_a_hub_on_localhost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub fetches the dataset file from $HF_ENDPOINT into the HF cache, then it is unpacked."""
    import huggingface_hub.constants as C

    data = stablesr_zip()
    with _hub(data) as (endpoint, requests):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("FIDESR_OFFLINE", raising=False)
        monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hub"))
        got = B.download(["drealsr"], root=tmp_path / "data", expected_pairs=COUNTS)
    assert any(r.endswith(f"/datasets/{B.HUB_REPO}/resolve/main/{B.HUB_FILE}") for r in requests)
    assert len(list(got["drealsr"].gt.iterdir())) == COUNTS["drealsr"]
    assert B.cached_archive() is not None  # in the HF cache: a second set needs no network
    monkeypatch.setenv("FIDESR_OFFLINE", "1")
    assert set(B.download(["realsr"], root=tmp_path / "data", expected_pairs=COUNTS)) == {"realsr"}


def test_offline_without_the_archive_names_the_hub_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("FIDESR_OFFLINE", "1")
    with pytest.raises(B.SetMissingError, match="Iceclear/StableSR-TestSets.*FIDESR_OFFLINE"):
        B.download(["realsr"], root=tmp_path / "data")
    assert not (tmp_path / "data" / "benchmarks" / "realsr").exists()


@pytest.mark.parametrize(
    ("extra", "symlink", "why"),
    [
        ({"../evil.png": b"x"}, None, "outside the target"),
        ({"/abs/evil.png": b"x"}, None, "outside the target"),
        ({"StableSR_testsets/a/../../../evil.png": b"x"}, None, "outside the target"),
        (None, "StableSR_testsets/RealSRVal_crop128/test_LR/link.png", "symbolic link"),
    ],
)
def test_unsafe_archives_are_refused_whole(
    tmp_path: Path, extra: dict | None, symlink: str | None, why: str
) -> None:
    archive = tmp_path / B.HUB_FILE
    archive.write_bytes(stablesr_zip(extra, symlink))
    with pytest.raises(B.BenchmarkDataError, match=why):
        B.unpack(archive, ["realsr"], tmp_path / "data", expected_pairs=COUNTS)
    assert not (tmp_path / "data" / "benchmarks" / "realsr").exists()
    assert not (tmp_path / "evil.png").exists() and not Path("/abs/evil.png").exists()


def test_a_wrong_pair_count_or_a_corrupt_archive_leaves_nothing(tmp_path: Path) -> None:
    archive = tmp_path / B.HUB_FILE
    archive.write_bytes(stablesr_zip())
    with pytest.raises(B.BenchmarkDataError, match="3 pairs in the archive, expected 100"):
        B.unpack(archive, ["realsr"], tmp_path / "data")
    bench = tmp_path / "data" / "benchmarks"
    assert [p.name for p in bench.iterdir()] == []  # no set, no temporary folder
    data = bytearray(stablesr_zip())
    data[200:260] = b"\0" * 60  # inside the first member's data: its CRC no longer matches
    archive.write_bytes(bytes(data))
    with pytest.raises(B.BenchmarkDataError, match="CRC|corrupt"):
        B.unpack(archive, ["realsr"], tmp_path / "data", expected_pairs=COUNTS)


def test_folders_and_names_as_test_sets(
    mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder with StableSR's test_LR/test_HR is a set; data.test_sets takes names as well as folders."""
    from fidesr.data.datamodule import SRDataModule

    root = tmp_path / "data"
    B.download(["realsr"], mirror=mirror, root=root, expected_pairs=COUNTS, log=lambda s: None)
    own = tmp_path / "mine"
    for sub, side in (("test_LR", 8), ("test_HR", 32)):
        (own / sub).mkdir(parents=True)
        (own / sub / "a.png").write_bytes(_png(side, 0))
    assert B.resolve_set(own).gt == own / "test_HR"
    with pytest.raises(B.MissingInputError, match="expected sub-folders lq/ and gt/"):
        B.resolve_set(tmp_path)
    monkeypatch.setenv(B.DATA_ENV, str(root))
    dm = SRDataModule(test_sets=["realsr", str(own)], num_workers=0)
    dm.setup("test")
    assert {n: len(d) for n, d in dm.test_datasets.items()} == {"realsr": 3, "mine": 1}


class _Hub(http.server.BaseHTTPRequestHandler):
    """The two calls huggingface_hub makes for one file: HEAD (commit, ETag, size), then GET."""

    data = b""
    requests: list[str] = []

    def _head(self) -> bool:
        self.requests.append(self.path)
        if not self.path.endswith(f"/datasets/{B.HUB_REPO}/resolve/main/{B.HUB_FILE}"):
            self.send_error(404)
            return False
        self.send_response(200)
        self.send_header("X-Repo-Commit", "b" * 40)
        self.send_header("ETag", f'"{hashlib.sha256(self.data).hexdigest()}"')
        self.send_header("Content-Length", str(len(self.data)))
        self.end_headers()
        return True

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self._head()

    def do_GET(self) -> None:  # noqa: N802
        if self._head():
            self.wfile.write(self.data)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _hub(data: bytes) -> Iterator[tuple[str, list[str]]]:
    handler = type("Hub", (_Hub,), {"data": data, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_fidesr_eval_takes_a_set_by_name(
    mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``test_set=realsr`` gives the GT folder and the published rows of that set."""
    from hydra import compose, initialize_config_module

    from fidesr.cli.eval import run

    root = tmp_path / "data"
    B.download(["realsr"], mirror=mirror, root=root, expected_pairs=COUNTS, log=lambda s: None)
    monkeypatch.setenv(B.DATA_ENV, str(root))
    monkeypatch.setenv("FIDESR_WEIGHTS_DIR", str(tmp_path / "weights"))
    sr = tmp_path / "sr"
    sr.mkdir()
    for i in range(COUNTS["realsr"]):
        (sr / f"{i:04d}.png").write_bytes(_png(32, 7 + i))
    overrides = ["progress=false", "num_workers=0", "device=cpu", "metrics=[psnr]", "test_set=realsr"]
    with initialize_config_module(config_module="fidesr.conf", version_base="1.3"):
        cfg = compose("eval", overrides=[*overrides, f"sr_dir={sr}", f"output_dir={tmp_path / 'out'}"])
    result = run(cfg)
    assert len(result.per_image) == COUNTS["realsr"] and 0 < result.summary["psnr"] < 20
    assert "FiDeSR (paper)" in result.files["summary_md"].read_text()
