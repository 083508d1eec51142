"""Fetching weight files against a real HTTP server on 127.0.0.1: success, mirror folder, 404, checksum
mismatch, dropped connection, a killed download, concurrent fetches, offline and no-route errors."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from _weights_server import WeightsServer, register, serve
from fidesr import weights as W
from fidesr.weights.fetch import FetchError, OfflineError

ALEX = "alexnet-imagenet"  # any registered torch-hub file; the tests register their own bytes for it


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WeightsServer:
    for name in (W.MIRROR_ENV, "FIDESR_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    with serve(tmp_path / "mirror") as srv:
        monkeypatch.setenv(W.MIRROR_ENV, srv.url)
        yield srv


def _leftovers(weights_dir: Path) -> list[str]:
    """Temporary files of a fetch (``.part``) anywhere in the weights directory."""
    return [p.name for p in weights_dir.rglob("*.part")]


def test_fetch_places_the_checked_file_where_the_loader_looks(
    server: WeightsServer, weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(300_000)
    server.put("alexnet-owt-7be5be79.pth", data)
    f = register(monkeypatch, ALEX, data)
    path = W.fetch_file(f, weights_dir)
    assert path == weights_dir / "hub/checkpoints/alexnet-owt-7be5be79.pth" and path.read_bytes() == data
    assert W.file_status(f, weights_dir).ok and not _leftovers(weights_dir)
    W.fetch_file(f, weights_dir)  # present and valid: nothing is fetched again
    assert server.gets == ["alexnet-owt-7be5be79.pth"]


def test_mirror_may_be_a_local_folder(
    tmp_path: Path, weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIDESR_OFFLINE", "1")  # a mirror is the offline path: the flags do not block it
    folder = tmp_path / "usb"
    folder.mkdir()
    data = b"weights copied from a networked machine"
    (folder / "alexnet-owt-7be5be79.pth").write_bytes(data)
    f = register(monkeypatch, ALEX, data)
    assert W.source_url(f, folder) == f"{folder.as_uri()}/alexnet-owt-7be5be79.pth"
    assert W.fetch_file(f, weights_dir, mirror=folder).read_bytes() == data
    with pytest.raises(FetchError, match="not in the mirror folder"):
        W.fetch_file(register(monkeypatch, "musiq-koniq", b"x"), weights_dir, mirror=folder)


def test_http_404_names_the_url(
    server: WeightsServer, weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = register(monkeypatch, ALEX, b"never served")
    with pytest.raises(FetchError, match=rf"{server.url}alexnet-owt-7be5be79.pth: HTTP 404"):
        W.fetch_file(f, weights_dir)
    assert not W.file_path(f, weights_dir).exists() and not _leftovers(weights_dir)


def test_checksum_mismatch_leaves_no_file(
    server: WeightsServer, weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = register(monkeypatch, ALEX, b"the real weights")
    server.put(f.filename, b"a corrupted copy on the mirror")
    with pytest.raises(FetchError, match="checksum mismatch.*not saved"):
        W.fetch_file(f, weights_dir)
    assert not W.file_path(f, weights_dir).exists() and not _leftovers(weights_dir)


def test_connection_dropped_mid_file_leaves_no_file(
    server: WeightsServer, weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(200_000)
    f = register(monkeypatch, ALEX, data)
    server.put(f.filename, data)
    server.drop.add(f.filename)
    with pytest.raises(FetchError, match="connection dropped"):
        W.fetch_file(f, weights_dir)
    assert not W.file_path(f, weights_dir).exists() and not _leftovers(weights_dir)
    server.drop.clear()  # the next attempt starts afresh and succeeds
    assert W.fetch_file(f, weights_dir).read_bytes() == data


@pytest.fixture
def quick_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deadlines of seconds, not minutes: at least 1 s, at least 1 kB/s."""
    monkeypatch.setenv(W.MIN_SECONDS_ENV, "1")
    monkeypatch.setenv(W.MIN_RATE_ENV, "1000")


def test_a_drip_feeding_server_is_stopped_at_the_deadline(
    server: WeightsServer, weights_dir: Path, monkeypatch: pytest.MonkeyPatch, quick_deadline: None
) -> None:
    """One byte every 0.2 s never trips a per-read timeout; the overall deadline (max(1 s, 2,000 B at
    1 kB/s) = 2 s here; 60 s and 100 kB/s by default) stops it, and nothing is left."""
    data = os.urandom(2000)
    f = register(monkeypatch, ALEX, data)
    server.put(f.filename, data)
    server.slow.add(f.filename)
    start = time.monotonic()
    with pytest.raises(FetchError, match=r"too slow, \d+ of 2,000 bytes after 2 s .*stopped, nothing saved"):
        W.fetch_file(f, weights_dir)
    assert time.monotonic() - start < 10
    assert not W.file_path(f, weights_dir).exists() and not _leftovers(weights_dir)


def test_an_endless_stream_stops_at_the_cap(
    server: WeightsServer, weights_dir: Path, monkeypatch: pytest.MonkeyPatch, quick_deadline: None
) -> None:
    """No Content-Length and no end: the download stops past the file's cap instead of filling the disk."""
    f = register(monkeypatch, ALEX, b"never sent")
    f = dataclasses.replace(f, max_bytes=1 << 20)
    server.endless.add(f.filename)
    with pytest.raises(FetchError, match=r"more than 1,048,576 bytes sent; stopped, nothing saved"):
        W.fetch_file(f, weights_dir)
    assert not W.file_path(f, weights_dir).exists() and not _leftovers(weights_dir)
    server.slow.add(f.filename)  # endless and slow: below the minimum rate once the first second is over
    with pytest.raises(FetchError, match=r"too slow, \d+ of 1,048,576 bytes after 1 s"):
        W.fetch_file(f, weights_dir)
    assert not _leftovers(weights_dir)


def test_a_size_over_the_cap_is_refused_before_the_body(
    server: WeightsServer, weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(5000)
    f = dataclasses.replace(register(monkeypatch, ALEX, data), max_bytes=4096)
    server.put(f.filename, data)
    with pytest.raises(FetchError, match=r"announces 5,000 bytes, more than the 4,096 allowed; not fetched"):
        W.fetch_file(f, weights_dir)
    assert not _leftovers(weights_dir)


def test_deadline_settings_are_checked(
    server: WeightsServer, weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fidesr.errors import ConfigValueError

    f = register(monkeypatch, ALEX, b"x")
    server.put(f.filename, b"x")
    monkeypatch.setenv(W.MIN_RATE_ENV, "fast")
    with pytest.raises(
        ConfigValueError, match=r"^\$FIDESR_FETCH_MIN_RATE=fast: must be a finite number > 0$"
    ):
        W.fetch_file(f, weights_dir)


def _fetch_in_child(key: str, weights_dir: str) -> None:
    W.fetch_file(W.FILES[key], weights_dir, progress=False)


def test_killed_download_leaves_no_file_under_the_final_name(
    server: WeightsServer, weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(256 * 40)  # 40 pieces, 0.05 s apart: two seconds of download
    f = register(monkeypatch, ALEX, data)
    server.put(f.filename, data)
    server.drip.add(f.filename)
    child = multiprocessing.get_context("fork").Process(target=_fetch_in_child, args=(ALEX, str(weights_dir)))
    child.start()
    deadline = time.monotonic() + 20
    while not _leftovers(weights_dir) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _leftovers(weights_dir), "the download never started"
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert not W.file_path(f, weights_dir).exists()
    server.drip.clear()
    assert W.fetch_file(f, weights_dir).read_bytes() == data  # the lock died with the process
    assert not _leftovers(weights_dir)  # the killed fetch's partial file is cleaned up by the next one


def test_two_processes_fetching_the_same_file(
    server: WeightsServer, weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(500_000)
    f = register(monkeypatch, ALEX, data)
    server.put(f.filename, data)
    server.delay = 0.5  # both processes are inside fetch_file before the first byte arrives
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=_fetch_in_child, args=(ALEX, str(weights_dir))) for _ in range(2)]
    for c in children:
        c.start()
    for c in children:
        c.join(60)
    assert [c.exitcode for c in children] == [0, 0]
    assert W.file_path(f, weights_dir).read_bytes() == data and not _leftovers(weights_dir)
    assert server.gets == [f.filename]  # the second found it done once it held the lock


def test_offline_lists_every_missing_file_and_the_command(
    weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(W.MIRROR_ENV, raising=False)
    with pytest.raises(W.WeightsMissingError) as err:
        W.ensure_run_weights(
            {"psnr": None, "niqe": {"required": True}, "musiq": None},
            weights_dir,
            also=[W.LPIPS_VGG],
            log=lambda _: None,
        )
    msg = str(err.value)
    for name in ("niqe_modelparameters.mat", "vgg16-397923af.pth"):
        assert f"{name} [missing] -> {weights_dir}" in msg
    assert "musiq" not in msg.split("Fetch them")[0]  # optional: skipped with a warning, not fatal
    assert (
        f"Fetch them with: fidesr-weights --weights-dir {weights_dir} download --metrics niqe lpips_vgg"
        in msg
    )
    assert "offline ($HF_HUB_OFFLINE=1)" in msg


def test_no_route_gives_the_same_listing(weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(W.MIRROR_ENV, f"http://127.0.0.1:{port}/dir/")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("FIDESR_OFFLINE", raising=False)
    register(monkeypatch, "musiq-koniq", b"m")
    with pytest.raises(W.WeightsMissingError) as err:
        W.ensure_weights(["musiq", "maniqa"], weights_dir, log=lambda _: None)
    msg = str(err.value)
    assert "musiq_koniq_ckpt-e95806b9.pth [missing]" in msg and "MANIQA_PIPAL-ae6d356b.pth [missing]" in msg
    assert (
        f"Fetch them with: fidesr-weights --weights-dir {weights_dir} download --metrics musiq maniqa" in msg
    )
    assert "no route to the server" in msg


def test_fetch_stops_at_the_first_unreachable_server(
    weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIDESR_OFFLINE", "1")
    monkeypatch.delenv(W.MIRROR_ENV, raising=False)
    done, failed = W.fetch(["musiq", "maniqa", "psnr"], weights_dir, log=lambda _: None)
    assert done == {} and set(failed) == {"musiq-koniq", "maniqa-pipal"}
    assert all(isinstance(e, OfflineError) for e in failed.values())
