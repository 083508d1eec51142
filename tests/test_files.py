"""files.py: the one atomic writer. Temporary names the stale-file cleanups know, never through an existing
name or symlink, nothing left behind on an error, the usual permissions, a full disk naming the final file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fidesr.errors import DiskFullError
from fidesr.files import atomic_write, atomic_write_bytes, atomic_write_text


def test_writes_only_on_success_and_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "table.md"  # parent folders created
    assert atomic_write_text(path, "old\n") == path
    seen = []
    with pytest.raises(KeyboardInterrupt), atomic_write(path) as fh:
        fh.write(b"half")
        seen = [p.name for p in path.parent.iterdir()]
        raise KeyboardInterrupt
    # While it was written: a hidden ".<name>.<random>.part" beside it (what resume/export clean up).
    temp = next(n for n in seen if n != "table.md")
    assert temp.startswith(".table.md.") and temp.endswith(".part") and len(temp) > len(".table.md..part")
    assert path.read_text() == "old\n" and [p.name for p in path.parent.iterdir()] == ["table.md"]
    atomic_write_bytes(path, b"new", fsync=True)
    assert path.read_bytes() == b"new"


def test_never_follows_a_planted_symlink(tmp_path: Path, monkeypatch) -> None:
    """The temporary file is created exclusively: a symlink planted at the name it picks is not written
    through (mkstemp tries the next name)."""
    import tempfile

    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    names = iter(["planted", "fresh"])
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    (tmp_path / ".out.json.planted.part").symlink_to(victim)
    atomic_write_text(tmp_path / "out.json", "{}")
    assert victim.read_text() == "keep" and (tmp_path / "out.json").read_text() == "{}"
    assert (tmp_path / ".out.json.planted.part").is_symlink()


def test_replacing_a_symlink_replaces_the_link_not_its_target(tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_text("keep")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert not link.is_symlink() and link.read_text() == "new" and target.read_text() == "keep"


def test_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o027)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o640


def test_a_full_disk_names_the_final_file(tmp_path: Path, full_disk) -> None:
    with full_disk(10), pytest.raises(DiskFullError) as info:
        atomic_write_text(tmp_path / "run_info.json", "x" * 100)
    assert str(info.value) == f"no space left writing {tmp_path / 'run_info.json'} (File too large)"
    assert list(tmp_path.iterdir()) == []


def test_imageio_uses_the_same_writer() -> None:
    import fidesr.data.imageio as imageio

    assert imageio.atomic_write is atomic_write


def test_the_block_can_check_what_it_wrote_before_it_is_renamed_in(tmp_path: Path) -> None:
    """The file object's name is the temporary path (a download hashes it there); a failed check keeps
    the old file."""
    path = atomic_write_text(tmp_path / "w.pth", "old")
    with pytest.raises(ValueError, match="bad digest"), atomic_write(path) as fh:
        fh.write(b"new")
        fh.flush()
        assert Path(fh.name).parent == tmp_path and Path(fh.name).read_bytes() == b"new"
        raise ValueError("bad digest")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["w.pth"]


def test_atomic_symlink_replaces_a_file_or_a_link_and_leaves_no_temporary(tmp_path: Path) -> None:
    from fidesr.files import atomic_symlink

    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("A")
    b.write_text("B")
    link = atomic_write_text(tmp_path / "link", "plain file")
    atomic_symlink(a, link)
    assert link.is_symlink() and link.read_text() == "A"
    atomic_symlink(b, link)
    assert link.read_text() == "B" and a.read_text() == "A"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "link"]
