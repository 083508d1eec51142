"""Writing a file atomically: the one place fidesr does temp-file-then-rename.

:func:`atomic_write` opens ``.<name>.<random>.part`` beside the final file, created exclusively
(``tempfile.mkstemp``: ``O_CREAT | O_EXCL``, so a name that already exists, a symlink included, is never
opened or followed), and renames it onto the final name (``os.replace``) only when the writer's block
finished; on any error (a full disk, Ctrl-C, a crash of the writer) the temporary file is removed and the
final name keeps what it held. Readers never see half a file.

The temporary names are what the stale-file cleanups look for: ``.<name>.ckpt.<random>.part`` for
checkpoints (:func:`fidesr.resume.remove_stale_parts`) and ``.<file>.<random>.part`` in an export folder
(:mod:`fidesr.modelio.write`). A full disk (or quota, or file-size limit) is a
:class:`~fidesr.errors.DiskFullError` naming the final file, not the temporary one.

Whole folders are swapped by their owners (:mod:`fidesr.modelio.write`, :mod:`fidesr.backbone.tiny`,
:mod:`fidesr.data.benchmarks`): each keeps its own rule for what happens to the folder it replaces.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from fidesr.errors import disk_full_error, is_disk_full

__all__ = ["atomic_symlink", "atomic_write", "atomic_write_bytes", "atomic_write_text"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for writing (binary); rename it into place only on success.

    The parent folders are created. An interrupted write never leaves a partial file under the final name
    and removes the temporary one. The file gets the usual permissions (0666 minus the umask), as
    ``open(path, "w")`` gives. ``fsync``: flush the data to disk before the rename (checkpoints: a power
    cut after the rename finds the new file whole). The file object's ``name`` is the temporary path, so
    the block may read back what it wrote (a download checks its digest before it is renamed in); an
    exception raised in the block (the check failing) leaves the final name as it was.

    Raises:
        DiskFullError: no space (or quota, or file-size limit) for the file; the message names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        # Opened through the descriptor mkstemp created (never by name again); `name` is the path.
        with open(tmp, "wb", opener=lambda _path, _flags: fd) as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(err):
            raise disk_full_error(err, path) from err
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` with :func:`atomic_write`; returns ``path``."""
    path = Path(path)
    with atomic_write(path, fsync=fsync) as fh:
        fh.write(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` with :func:`atomic_write`; returns ``path``."""
    return atomic_write_bytes(path, text.encode(), fsync=fsync)


def atomic_symlink(target: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Make ``path`` a symlink to ``target``, atomically: the link is made under a fresh temporary name
    beside ``path`` (``os.symlink`` never replaces an existing name) and renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.part")
        try:
            os.symlink(target, tmp)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(f"no free temporary name beside {path}")
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
