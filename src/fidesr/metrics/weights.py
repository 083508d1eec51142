"""Metric weights: one directory, a registry of the files each metric needs, status, install, adopt.

Layout. The weights directory *is* the torch home of the metric code: ``configure()`` sets
``TORCH_HOME=<weights_dir>`` (and ``torch.hub.set_dir(<weights_dir>/hub)``) before pyiqa is imported,
so every file sits where its loader looks for it:

- ``hub/checkpoints/``  torchvision ImageNet backbones (AlexNet for LPIPS, VGG16 for DISTS),
- ``hub/pyiqa/``        pyiqa's cache (``pyiqa.utils.download_util.DEFAULT_CACHE_DIR``, computed at
                        pyiqa import time from ``torch.hub.get_dir()``),
- ``hub/clip/``         OpenAI CLIP checkpoints (pyiqa's ``clip_model.load`` uses ``get_dir()/clip``).

A directory that already is a torch home (``~/.cache/torch``) can be used as is.

Resolution order of the directory: explicit argument > ``$FIDESR_WEIGHTS_DIR`` > ``~/.cache/fidesr``.

Offline behaviour: metric code never downloads. ``check_weights()`` verifies every file (sha256) before a
metric is built and raises ``WeightsMissingError`` naming the missing files and where to get them; as a
second line of defence, ``no_downloads()`` makes any download attempt during model construction raise
the same error instead of touching the network (or hanging on it). No number is ever computed with
random weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fidesr.metrics.specs import PROTOCOL, STANDIN_SUFFIX, canonical_name, parse_metric_config

ENV_VAR = "FIDESR_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = "~/.cache/fidesr"
DEFAULT_INDEX_URL = "https://pypi.org/simple"

_HF = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"

# NIQE pristine-model parameters: PyPI's basicsr 1.4.2 source package ships them as an .npz
# (mu_pris_param 1x36, cov_pris_param 36x36); pyiqa reads a .mat with keys mu_prisparam/cov_prisparam.
BASICSR_SDIST = "basicsr-1.4.2.tar.gz"
BASICSR_SDIST_SHA256 = "b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87"
NIQE_NPZ_MEMBER = "basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz"
NIQE_NPZ_SHA256 = "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296"
# A .mat written by scipy carries a creation time in its header, so the file hash is not stable:
# NIQE's parameters are verified by the sha256 of their values (see _niqe_values_digest).
NIQE_VALUES_SHA256 = "f6284a2b53fd40bbc960472b76ec55b67a299a0270294b804c847e99b8cc1e30"


class WeightsMissingError(RuntimeError):
    """A metric needs weight files that are absent or fail their checksum."""


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WheelFile:
    """A weight file shipped inside an installed Python package (a wheel from PyPI)."""

    package: str
    relpath: str

    def describe(self) -> str:
        return f"installed package `{self.package}` ({self.package}/{self.relpath})"


@dataclass(frozen=True)
class BasicsrSdist:
    """The NIQE parameters inside PyPI's basicsr 1.4.2 source package, converted to pyiqa's .mat."""

    def describe(self) -> str:
        return f"PyPI sdist {BASICSR_SDIST} (basicsr/metrics/niqe_pris_params.npz, converted to .mat)"


Provider = WheelFile | BasicsrSdist


@dataclass(frozen=True)
class WeightFile:
    """One weight file a metric needs.

    Attributes:
        key: registry key (``MetricSpec.weights`` refers to it).
        filename: the name the loader expects.
        subdir: folder relative to the weights directory.
        sha256: full sha256 hex digest, or its first hex digits where only those are published (the
            torch-hub naming convention ``name-<sha256 prefix>.pth``, which is also what torch.hub checks).
        source: where a user gets the file.
        providers: how ``fidesr-weights install`` obtains it from a package registry (empty: user-supplied).
        aliases: other file names it is known under (``install --from``/``link`` recognise them).
        check: ``"bytes"`` (sha256 of the file) or ``"niqe-values"`` (sha256 of the parameter values).
    """

    key: str
    filename: str
    subdir: str
    sha256: str
    source: str
    providers: tuple[Provider, ...] = ()
    aliases: tuple[str, ...] = ()
    check: Literal["bytes", "niqe-values"] = "bytes"

    def path(self, weights_dir: str | os.PathLike | None = None) -> Path:
        """Where the loader looks for this file."""
        return resolve_weights_dir(weights_dir) / self.subdir / self.filename

    @property
    def full_hash(self) -> bool:
        return len(self.sha256) == 64

    @property
    def hash_label(self) -> str:
        """The digest for display: ``niqe-values:<hex>`` for NIQE, ``<prefix>…`` for prefixes."""
        label = self.sha256 if self.full_hash else f"{self.sha256}… (prefix)"
        return f"values:{label}" if self.check == "niqe-values" else label


FILES: dict[str, WeightFile] = {
    f.key: f
    for f in (
        WeightFile("alexnet-imagenet", "alexnet-owt-7be5be79.pth", "hub/checkpoints", "7be5be79",
                   "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth (torchvision AlexNet IMAGENET1K_V1)"),
        WeightFile("vgg16-imagenet", "vgg16-397923af.pth", "hub/checkpoints", "397923af",
                   "https://download.pytorch.org/models/vgg16-397923af.pth (torchvision VGG16 IMAGENET1K_V1)"),
        WeightFile("lpips-alex-v0.1", "LPIPS_v0.1_alex-df73285e.pth", "hub/pyiqa",
                   "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
                   _HF + "LPIPS_v0.1_alex-df73285e.pth",
                   (WheelFile("lpips", "weights/v0.1/alex.pth"),
                    WheelFile("torchmetrics", "functional/image/lpips_models/alex.pth")),
                   aliases=("alex.pth",)),
        WeightFile("dists-alpha-beta", "DISTS_weights-f5e65c96.pth", "hub/pyiqa",
                   "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
                   _HF + "DISTS_weights-f5e65c96.pth",
                   (WheelFile("torchmetrics", "functional/image/dists_models/weights.pt"),),
                   aliases=("weights.pt",)),
        WeightFile("niqe-params", "niqe_modelparameters.mat", "hub/pyiqa", NIQE_VALUES_SHA256,
                   _HF + "niqe_modelparameters.mat, or basicsr's niqe_pris_params.npz (`fidesr-weights install`)",
                   (BasicsrSdist(),), aliases=("niqe_pris_params.npz", BASICSR_SDIST), check="niqe-values"),
        WeightFile("musiq-koniq", "musiq_koniq_ckpt-e95806b9.pth", "hub/pyiqa", "e95806b9",
                   _HF + "musiq_koniq_ckpt-e95806b9.pth"),
        WeightFile("maniqa-pipal", "MANIQA_PIPAL-ae6d356b.pth", "hub/pyiqa", "ae6d356b",
                   _HF + "MANIQA_PIPAL-ae6d356b.pth"),
        WeightFile("clip-rn50", "RN50.pt", "hub/clip",
                   "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
                   "https://openaipublic.azureedge.net/clip/models/"
                   "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt"),
        WeightFile("fid-inception", "pt_inception-2015-12-05-6726825d.pth", "hub/pyiqa", "6726825d",
                   "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth (also " + _HF + "pt_inception-2015-12-05-6726825d.pth)"),
    )
}

# Every weight key a spec names must exist: a typo here would otherwise surface as a KeyError at run time.
assert all(k in FILES for s in PROTOCOL.values() for k in s.weights), "unknown weight key in PROTOCOL"


def metric_files(metric: str) -> list[WeightFile]:
    """The files a metric needs (empty for PSNR/SSIM)."""
    return [FILES[k] for k in PROTOCOL[canonical_name(metric)].weights]


# --------------------------------------------------------------------------------------------------
# Directory, environment
# --------------------------------------------------------------------------------------------------


def resolve_weights_dir(weights_dir: str | os.PathLike | None = None) -> Path:
    """Explicit argument > ``$FIDESR_WEIGHTS_DIR`` > ``~/.cache/fidesr``; absolute, user-expanded."""
    raw = weights_dir if weights_dir not in (None, "") else os.environ.get(ENV_VAR) or DEFAULT_WEIGHTS_DIR
    return Path(raw).expanduser().resolve()


def configure(weights_dir: str | os.PathLike | None = None) -> Path:
    """Point torch hub and pyiqa's cache at the weights directory; returns it.

    Call before importing pyiqa (``import_pyiqa()`` does): pyiqa computes its cache directory at import
    time. If pyiqa is already imported its module-level cache path is updated too, so calling this again
    with another directory (tests do) takes effect.
    """
    import torch.hub

    wd = resolve_weights_dir(weights_dir)
    os.environ["TORCH_HOME"] = str(wd)
    torch.hub.set_dir(str(wd / "hub"))
    dl = sys.modules.get("pyiqa.utils.download_util")
    if dl is not None:
        dl.DEFAULT_CACHE_DIR = str(wd / "hub" / "pyiqa")
    return wd


def import_pyiqa(weights_dir: str | os.PathLike | None = None) -> Any:
    """``configure(weights_dir)`` then ``import pyiqa`` (the order matters, see ``configure``)."""
    configure(weights_dir)
    import pyiqa

    return pyiqa


@contextmanager
def no_downloads(what: str) -> Iterator[None]:
    """Make every download path the metric code could take raise ``WeightsMissingError`` instead.

    Guards torch.hub (torchvision backbones), pyiqa's ``load_file_from_url`` and ``urllib`` (CLIP), for
    the duration of a model construction. ``check_weights`` should have failed earlier; this is the
    guarantee that a missing or unregistered file can never lead to a network call or a silent download.
    """
    import torch.hub

    def refuse(url: Any, *args: Any, **kwargs: Any) -> None:
        url = getattr(url, "full_url", url)
        raise WeightsMissingError(
            f"{what}: the metric code tried to download {url}; fidesr never downloads metric weights. "
            f"Place the file in the weights directory (see `fidesr-weights status`)."
        )

    targets: list[tuple[Any, str]] = [(torch.hub, "download_url_to_file"), (urllib.request, "urlopen")]
    dl = sys.modules.get("pyiqa.utils.download_util")
    if dl is not None:
        targets.append((dl, "download_url_to_file"))
    with _patched([(obj, name, refuse) for obj, name in targets]):
        yield


@contextmanager
def _patched(patches: Sequence[tuple[Any, str, Any]]) -> Iterator[None]:
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


# --------------------------------------------------------------------------------------------------
# Verification and status
# --------------------------------------------------------------------------------------------------

_VERIFIED_CACHE = ".fidesr-verified.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _niqe_values_digest(mu: np.ndarray, cov: np.ndarray) -> str:
    mu = np.ascontiguousarray(np.ravel(mu), dtype="<f8")
    cov = np.ascontiguousarray(cov, dtype="<f8")
    return hashlib.sha256(mu.tobytes() + cov.tobytes()).hexdigest()


def _digest(f: WeightFile, path: Path) -> str:
    if f.check == "niqe-values":
        import scipy.io

        try:
            params = scipy.io.loadmat(path)
            return _niqe_values_digest(params["mu_prisparam"], params["cov_prisparam"])
        except Exception as err:  # unreadable or wrong keys: report as a checksum failure
            return f"unreadable ({type(err).__name__}: {err})"
    return sha256_file(path)


def _matches(f: WeightFile, digest: str) -> bool:
    return digest.startswith(f.sha256)


@dataclass(frozen=True)
class FileStatus:
    """State of one registered file in one weights directory."""

    file: WeightFile
    path: Path
    state: Literal["ok", "missing", "bad checksum"]
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def file_status(f: WeightFile, weights_dir: str | os.PathLike | None = None) -> FileStatus:
    """Check presence and checksum of one file. Digests are cached per (size, mtime) in the weights
    directory, so the 0.5 GB checkpoints are hashed once, not at every start-up."""
    wd = resolve_weights_dir(weights_dir)
    path = f.path(wd)
    if not path.is_file():
        return FileStatus(f, path, "missing")
    st = path.stat()  # follows symlinks (``link`` mode)
    cache = _read_cache(wd)
    key = str(path.relative_to(wd))
    entry = cache.get(key)
    if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        digest = entry["digest"]
    else:
        digest = _digest(f, path)
        cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digest": digest}
        _write_cache(wd, cache)
    if _matches(f, digest):
        return FileStatus(f, path, "ok")
    return FileStatus(f, path, "bad checksum", f"expected {f.hash_label}, found {digest}")


def _read_cache(wd: Path) -> dict[str, Any]:
    try:
        return json.loads((wd / _VERIFIED_CACHE).read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(wd: Path, cache: dict[str, Any]) -> None:
    # Atomic replace: several DDP ranks may verify at once. A read-only weights dir is fine (no cache).
    try:
        wd.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=wd, prefix=".verified-")
        with os.fdopen(fd, "w") as fh:
            json.dump(cache, fh, indent=1, sort_keys=True)
        os.replace(tmp, wd / _VERIFIED_CACHE)
    except OSError:
        pass


def status(
    metrics: Iterable[str] | None = None, weights_dir: str | os.PathLike | None = None
) -> dict[str, list[FileStatus]]:
    """Per metric (default: the whole protocol), the status of each file it needs."""
    names = [canonical_name(m) for m in (metrics if metrics is not None else PROTOCOL)]
    return {m: [file_status(f, weights_dir) for f in metric_files(m)] for m in names}


def describe_missing(metric: str, files: Sequence[FileStatus]) -> str:
    """Human-readable lines: which file, where it must go, where to get it."""
    lines = [f"{metric}:"]
    for s in files:
        how = (" or run `fidesr-weights install`" if s.file.providers else "")
        extra = f" ({s.detail})" if s.detail else ""
        lines.append(f"  - {s.file.filename} [{s.state}{extra}] -> {s.path}\n    get it from: {s.file.source}{how}")
    return "\n".join(lines)


_warned: set[tuple[str, frozenset[str]]] = set()


def check_weights(
    metrics: Iterable[str] | Mapping[str, Mapping[str, Any] | None],
    required: Iterable[str] = (),
    weights_dir: str | os.PathLike | None = None,
    *,
    warn: bool = True,
) -> list[str]:
    """Verify the weights of ``metrics`` before anything runs; returns those that can run.

    Call this at start-up (the training CLI does, before any step). A *required* metric with a missing or
    corrupt file raises ``WeightsMissingError`` naming every such file, its expected path and its source.
    Optional metrics with missing files are dropped from the returned list, with a single warning per
    process listing them all; tables show them as "n/a (weights missing)".

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
    missing: dict[str, list[FileStatus]] = {}
    for m in names:
        if m.endswith(STANDIN_SUFFIX):
            continue
        bad = [s for s in (file_status(f, weights_dir) for f in metric_files(m)) if not s.ok]
        if bad:
            missing[m] = bad
    fatal = {m: v for m, v in missing.items() if m in req}
    if fatal:
        raise WeightsMissingError(
            f"required metric weights missing in {resolve_weights_dir(weights_dir)} "
            f"(set ${ENV_VAR} or weights_dir):\n"
            + "\n".join(describe_missing(m, v) for m, v in fatal.items())
            + "\nRun `fidesr-weights status` for the full list."
        )
    skipped = frozenset(missing)
    memo = (str(resolve_weights_dir(weights_dir)), skipped)
    if skipped and warn and memo not in _warned:
        _warned.add(memo)
        warnings.warn(
            f"metrics skipped, weights missing in {resolve_weights_dir(weights_dir)}: "
            f"{', '.join(sorted(skipped))} (reported as 'n/a (weights missing)'; "
            f"see `fidesr-weights status`)",
            stacklevel=2,
        )
    return [m for m in names if m not in skipped]


# --------------------------------------------------------------------------------------------------
# Install from package registries, adopt user files
# --------------------------------------------------------------------------------------------------


def niqe_mat_from_npz(npz: str | os.PathLike | bytes, dest: str | os.PathLike) -> Path:
    """Convert basicsr's ``niqe_pris_params.npz`` (``mu_pris_param`` 1x36, ``cov_pris_param`` 36x36) to
    the ``.mat`` pyiqa's NIQE reads (keys ``mu_prisparam``, ``cov_prisparam``). Verified by value."""
    import scipy.io

    data = np.load(io.BytesIO(npz) if isinstance(npz, bytes) else npz)
    mu, cov = data["mu_pris_param"], data["cov_pris_param"]
    if _niqe_values_digest(mu, cov) != NIQE_VALUES_SHA256:
        raise ValueError("NIQE parameters do not match the published pristine model (value checksum)")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    scipy.io.savemat(tmp, {"mu_prisparam": mu, "cov_prisparam": cov})
    os.replace(tmp, dest)
    return dest


def _niqe_npz_from_sdist(tar_bytes: bytes) -> bytes:
    digest = hashlib.sha256(tar_bytes).hexdigest()
    if digest != BASICSR_SDIST_SHA256:
        raise ValueError(f"{BASICSR_SDIST}: sha256 {digest} != pinned {BASICSR_SDIST_SHA256}")
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:gz") as tar:
        member = tar.extractfile(NIQE_NPZ_MEMBER)
        if member is None:
            raise ValueError(f"{BASICSR_SDIST} has no {NIQE_NPZ_MEMBER}")
        npz = member.read()
    if hashlib.sha256(npz).hexdigest() != NIQE_NPZ_SHA256:
        raise ValueError(f"{NIQE_NPZ_MEMBER}: unexpected sha256")
    return npz


def _fetch_basicsr_sdist(index_url: str, timeout: float = 60.0) -> bytes:
    """Find basicsr 1.4.2's sdist on a PEP 503 simple index and download it (checksum verified by the
    caller). ``pip download`` is not used: it would try to build basicsr's metadata."""
    page = f"{index_url.rstrip('/')}/basicsr/"
    if page.startswith("file:"):  # a local index (as pip accepts): folders hold an index.html
        page += "index.html"
    with urllib.request.urlopen(page, timeout=timeout) as resp:
        html = resp.read().decode("utf-8", "replace")
    for href in re.findall(r'href="([^"]+)"', html):
        url = urllib.parse.urljoin(page, href.split("#", 1)[0])
        if url.rsplit("/", 1)[-1] == BASICSR_SDIST:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.read()
    raise FileNotFoundError(f"{BASICSR_SDIST} not listed on {page}")


def _wheel_path(p: WheelFile) -> Path | None:
    spec = importlib.util.find_spec(p.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / p.relpath
    return path if path.is_file() else None


def _place(f: WeightFile, src: Path, wd: Path, mode: Literal["copy", "link"]) -> Path:
    """Copy or symlink ``src`` to where the loader expects ``f``, atomically, then verify."""
    dest = f.path(wd)
    if dest.exists() and dest.resolve() == src.resolve():  # already in place (e.g. `link` of the weights dir)
        _verify_placed(f, wd)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    if mode == "link":
        tmp.symlink_to(src.resolve())
    else:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    _verify_placed(f, wd)
    return dest


def _verify_placed(f: WeightFile, wd: Path) -> None:
    s = file_status(f, wd)
    if not s.ok:
        f.path(wd).unlink(missing_ok=True)
        raise ValueError(f"{f.filename}: {s.state} {s.detail}")


def install(
    metrics: Iterable[str] | None = None,
    weights_dir: str | os.PathLike | None = None,
    *,
    index_url: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Fetch what the package registries provide for ``metrics`` (default: all) into the weights dir.

    - LPIPS AlexNet head: from the installed ``lpips`` (or ``torchmetrics``) wheel,
    - DISTS alpha/beta: from the installed ``torchmetrics`` wheel,
    - NIQE parameters: from PyPI's basicsr 1.4.2 sdist (pinned sha256), converted to pyiqa's .mat.

    Files already present and verified are left alone. Returns {weight key: path} of what was installed.
    Files no registry provides (ImageNet backbones, Inception, CLIP, MUSIQ, MANIQA) are listed in ``log``.
    """
    wd = configure(weights_dir)
    index_url = index_url or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX_URL
    names = [canonical_name(m) for m in (metrics if metrics is not None else PROTOCOL)]
    wanted = {k: FILES[k] for m in names for k in PROTOCOL[m].weights}
    done: dict[str, Path] = {}
    for key, f in wanted.items():
        if file_status(f, wd).ok:
            log(f"ok       {f.filename}")
            continue
        if not f.providers:
            log(f"manual   {f.filename}: no package registry provides it; get it from {f.source}")
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
        src = _wheel_path(p)
        if src is None:
            raise FileNotFoundError(f"{p.package}/{p.relpath} not installed (pip install {p.package})")
        return _place(f, src, wd, "copy")
    npz = _niqe_npz_from_sdist(_fetch_basicsr_sdist(index_url))
    dest = niqe_mat_from_npz(npz, f.path(wd))
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
    wd = configure(weights_dir)
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
        matched = False
        sha: dict[str, str] = {}  # hash each candidate once, however many entries it is tried against
        for f in by_name.get(src.name, list(FILES.values())):
            if f.key in done:
                matched = True
                continue
            try:
                done[f.key] = _adopt_one(f, src, wd, mode, sha)
            except ValueError:
                continue
            matched = True
            log(f"adopted  {src} -> {done[f.key]}" + (" (symlink)" if mode == "link" and f.check == "bytes" else ""))
            break
        if not matched:
            log(f"ignored  {src}: checksum matches no registered file")
    return done


def _adopt_one(
    f: WeightFile, src: Path, wd: Path, mode: Literal["copy", "link"], sha: dict[str, str]
) -> Path:
    if f.check == "niqe-values":
        if src.suffix == ".npz":
            return niqe_mat_from_npz(src, f.path(wd))
        if src.name == BASICSR_SDIST:
            return niqe_mat_from_npz(_niqe_npz_from_sdist(src.read_bytes()), f.path(wd))
        if _digest(f, src) != f.sha256:  # a .mat (pyiqa's own download): check values before placing
            raise ValueError("values differ")
        return _place(f, src, wd, mode)
    if "bytes" not in sha:
        sha["bytes"] = sha256_file(src)
    if not _matches(f, sha["bytes"]):
        raise ValueError("checksum")
    return _place(f, src, wd, mode)
