"""Weight files from package registries (``fidesr-weights install``) and from the user's own downloads
(``fidesr-weights install --from`` / ``link``). Every file is verified before it counts as installed."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import re
import shutil
import tarfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import numpy as np

from fidesr.files import atomic_symlink, atomic_write
from fidesr.protocol import PROTOCOL
from fidesr.weights import registry as R
from fidesr.weights.registry import (
    FILES,
    Provider,
    WeightFile,
    WheelFile,
    canonical_target,
    files_for,
)
from fidesr.weights.store import (
    digest,
    file_path,
    file_status,
    inspect,
    matches,
    niqe_values_digest,
    resolve_weights_dir,
    sha256_file,
)

DEFAULT_INDEX_URL = "https://pypi.org/simple"


def niqe_mat_from_npz(npz: str | os.PathLike | bytes, dest: str | os.PathLike) -> Path:
    """Convert basicsr's ``niqe_pris_params.npz`` (``mu_pris_param`` 1x36, ``cov_pris_param`` 36x36) to
    the ``.mat`` pyiqa's NIQE reads (keys ``mu_prisparam``, ``cov_prisparam``). Verified by value."""
    import scipy.io

    data = np.load(io.BytesIO(npz) if isinstance(npz, bytes) else npz)
    mu, cov = data["mu_pris_param"], data["cov_pris_param"]
    if niqe_values_digest(mu, cov) != R.NIQE_VALUES_SHA256:
        raise ValueError("NIQE parameters do not match the published pristine model (value checksum)")
    dest = Path(dest)
    with atomic_write(dest) as fh:
        scipy.io.savemat(fh, {"mu_prisparam": mu, "cov_prisparam": cov})
    return dest


def niqe_npz_from_sdist(tar_bytes: bytes) -> bytes:
    """basicsr's ``niqe_pris_params.npz`` out of its pinned 1.4.2 sdist (both sha256-checked)."""
    found = hashlib.sha256(tar_bytes).hexdigest()
    if found != R.BASICSR_SDIST_SHA256:
        raise ValueError(f"{R.BASICSR_SDIST}: sha256 {found} != pinned {R.BASICSR_SDIST_SHA256}")
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:gz") as tar:
        member = tar.extractfile(R.NIQE_NPZ_MEMBER)
        if member is None:
            raise ValueError(f"{R.BASICSR_SDIST} has no {R.NIQE_NPZ_MEMBER}")
        npz = member.read()
    if hashlib.sha256(npz).hexdigest() != R.NIQE_NPZ_SHA256:
        raise ValueError(f"{R.NIQE_NPZ_MEMBER}: unexpected sha256")
    return npz


def fetch_basicsr_sdist(index_url: str, timeout: float = 60.0) -> bytes:
    """Find basicsr 1.4.2's sdist on a PEP 503 simple index and download it (checksum verified by the
    caller). ``pip download`` is not used: it would try to build basicsr's metadata."""
    page = f"{index_url.rstrip('/')}/basicsr/"
    if page.startswith("file:"):  # a local index (as pip accepts): folders hold an index.html
        page += "index.html"
    with urllib.request.urlopen(page, timeout=timeout) as resp:
        html = resp.read().decode("utf-8", "replace")
    for href in re.findall(r'href="([^"]+)"', html):
        url = urllib.parse.urljoin(page, href.split("#", 1)[0])
        if url.rsplit("/", 1)[-1] == R.BASICSR_SDIST:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.read()
    raise FileNotFoundError(f"{R.BASICSR_SDIST} not listed on {page}")


def wheel_path(p: WheelFile) -> Path | None:
    """The file inside the installed package, if that package is installed."""
    spec = importlib.util.find_spec(p.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / p.relpath
    return path if path.is_file() else None


def _place(f: WeightFile, src: Path, wd: Path, mode: Literal["copy", "link"]) -> Path:
    """Copy or symlink ``src`` to where the loader expects ``f``, atomically, then verify."""
    dest = file_path(f, wd)
    if dest.exists() and dest.resolve() == src.resolve():  # already in place (e.g. `link` of the weights dir)
        _verify_placed(f, wd)
        return dest
    if mode == "link":
        atomic_symlink(src.resolve(), dest)
    else:
        with atomic_write(dest) as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out)
    _verify_placed(f, wd)
    return dest


def _verify_placed(f: WeightFile, wd: Path) -> None:
    s = file_status(f, wd)
    if not s.ok:
        file_path(f, wd).unlink(missing_ok=True)
        raise ValueError(f"{f.filename}: {s.state} {s.detail}")


def install(
    metrics: Iterable[str] | None = None,
    weights_dir: str | os.PathLike | None = None,
    *,
    index_url: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Take what the package registries provide for ``metrics`` (default: all) into the weights dir.

    - LPIPS AlexNet head: from the installed ``lpips`` (or ``torchmetrics``) wheel,
    - DISTS alpha/beta: from the installed ``torchmetrics`` wheel,
    - NIQE parameters: from PyPI's basicsr 1.4.2 sdist (pinned sha256), converted to pyiqa's .mat.

    Files already present and verified are left alone. Returns {weight key: path} of what was installed.
    Files no registry provides are listed in ``log`` with the ``download`` command that fetches them.
    """
    wd = resolve_weights_dir(weights_dir)
    index_url = index_url or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX_URL
    names = [canonical_target(m) for m in (metrics if metrics is not None else PROTOCOL)]
    done: dict[str, Path] = {}
    for key, f in files_for(names).items():
        if file_status(f, wd).ok:
            log(f"ok       {f.filename}")
            continue
        if not f.providers:
            log(
                f"manual   {f.filename}: no package registry provides it; `fidesr-weights download` fetches "
                f"it from {f.url}"
            )
            continue
        errors = []
        for p in f.providers:
            try:
                done[key] = _install_from_provider(f, p, wd, index_url)
                log(f"installed {f.filename} <- {p.describe()}")
                break
            except Exception as err:  # try the next provider, report all if none works
                errors.append(f"{p.describe()}: {err}")
        else:
            log(f"FAILED   {f.filename}: " + "; ".join(errors))
    return done


def _install_from_provider(f: WeightFile, p: Provider, wd: Path, index_url: str) -> Path:
    if isinstance(p, WheelFile):
        src = wheel_path(p)
        if src is None:
            raise FileNotFoundError(f"{p.package}/{p.relpath} not installed (pip install {p.package})")
        return _place(f, src, wd, "copy")
    npz = niqe_npz_from_sdist(fetch_basicsr_sdist(index_url))
    dest = niqe_mat_from_npz(npz, file_path(f, wd))
    _verify_placed(f, wd)
    return dest


def adopt(
    paths: Iterable[str | os.PathLike],
    weights_dir: str | os.PathLike | None = None,
    *,
    mode: Literal["copy", "link"] = "copy",
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Take over user-supplied files (pre-downloaded elsewhere): each path is a file or a folder
    (searched recursively). Files are recognised by name (registry name or alias) and accepted only if
    their checksum matches; basicsr's ``niqe_pris_params.npz`` and the basicsr sdist are converted.
    ``mode="link"`` symlinks instead of copying (large files on a shared disk); converted files are
    always written. Returns {weight key: installed path}.
    """
    wd = resolve_weights_dir(weights_dir)
    by_name: dict[str, list[WeightFile]] = {}
    for f in FILES.values():
        for n in (f.filename, *f.aliases):
            by_name.setdefault(n, []).append(f)
    candidates: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            candidates += sorted(q for q in p.rglob("*") if q.is_file() and q.name in by_name)
        elif p.is_file():
            candidates.append(p)
        else:
            raise FileNotFoundError(p)
    done: dict[str, Path] = {}
    for src in candidates:
        matched, refusal = False, ""
        sha: dict[str, str] = {}  # hash each candidate once, however many entries it is tried against
        for f in by_name.get(src.name, list(FILES.values())):
            if f.key in done:
                matched = True
                continue
            try:
                done[f.key] = _adopt_one(f, src, wd, mode, sha)
            except NotPlainDataError as err:
                refusal = refusal or str(err)
                continue
            except ValueError:
                continue
            matched = True
            log(
                f"adopted  {src} -> {done[f.key]}"
                + (" (symlink)" if mode == "link" and f.check == "bytes" else "")
            )
            break
        if not matched:
            log(
                f"refused  {src}: {refusal}"
                if refusal
                else f"ignored  {src}: checksum matches no registered file"
            )
    return done


class NotPlainDataError(ValueError):
    """A candidate's sha256 prefix matches a prefix-only entry, but the file is not plain data."""


def _adopt_one(
    f: WeightFile, src: Path, wd: Path, mode: Literal["copy", "link"], sha: dict[str, str]
) -> Path:
    if f.check == "niqe-values":
        if src.suffix == ".npz":
            return niqe_mat_from_npz(src, file_path(f, wd))
        if src.name == R.BASICSR_SDIST:
            return niqe_mat_from_npz(niqe_npz_from_sdist(src.read_bytes()), file_path(f, wd))
        if digest(f, src) != f.sha256:  # a .mat (pyiqa's own download): check values before placing
            raise ValueError("values differ")
        return _place(f, src, wd, mode)
    if "bytes" not in sha:
        sha["bytes"] = sha256_file(src)
    if not matches(f, sha["bytes"]):
        raise ValueError("checksum")
    if why := inspect(f, src, sha["bytes"]).get("not_data"):  # before placing: a valid file there stays
        raise NotPlainDataError(
            f"not plain data, {why}; its sha256 prefix matches {f.filename}'s, which alone proves nothing"
        )
    return _place(f, src, wd, mode)
