"""The registry of weight files: what each metric (and the LPIPS-VGG training loss) needs, where each file
comes from, and how it is verified. Data only: no file-system or network access here.

A *target* is what ``fidesr-weights download --metrics`` accepts: a protocol metric name (aliases allowed)
or ``lpips_vgg`` (alias ``vgg16``), the torchvision VGG16 backbone of the LPIPS-VGG training loss.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from fidesr.protocol import PROTOCOL, STANDIN_SUFFIX, canonical_name

_HF = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"
_TORCHVISION = "https://download.pytorch.org/models/"

# NIQE pristine-model parameters: PyPI's basicsr 1.4.2 source package ships them as an .npz
# (mu_pris_param 1x36, cov_pris_param 36x36); pyiqa reads a .mat with keys mu_prisparam/cov_prisparam.
BASICSR_SDIST = "basicsr-1.4.2.tar.gz"
BASICSR_SDIST_SHA256 = "b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87"
NIQE_NPZ_MEMBER = "basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz"
NIQE_NPZ_SHA256 = "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296"
# A .mat written by scipy carries a creation time in its header, so the file hash is not stable:
# NIQE's parameters are verified by the sha256 of their values (float64 little-endian, mu then cov).
NIQE_VALUES_SHA256 = "f6284a2b53fd40bbc960472b76ec55b67a299a0270294b804c847e99b8cc1e30"

#: The training loss's pseudo-metric: LPIPS-VGG needs torchvision's VGG16 ImageNet backbone.
LPIPS_VGG = "lpips_vgg"
_TARGET_ALIASES = ("vgg16", "lpips-vgg")


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
    """One weight file.

    Attributes:
        key: registry key (``MetricSpec.weights`` refers to it).
        filename: the name the loader expects (also its name on a mirror).
        subdir: folder relative to the weights directory (a torch home).
        sha256: full sha256 hex digest, or its first hex digits where only those are published (the
            torch-hub naming convention ``name-<sha256 prefix>.pth``, which is also what torch.hub checks);
            a prefix-only file must also load as plain data (``fidesr.weights.data``).
        max_bytes: a download stops with an error beyond this size (the server's Content-Length, when
            it gives one, is the limit below it).
        url: where ``fidesr-weights download`` fetches it (a mirror replaces everything but the file name).
        note: what the file is, for listings.
        providers: how ``fidesr-weights install`` obtains it from a package registry (empty: none).
        aliases: other file names it is known under (``install --from``/``link`` recognise them).
        check: ``"bytes"`` (sha256 of the file) or ``"niqe-values"`` (sha256 of the parameter values).
    """

    key: str
    filename: str
    subdir: str
    sha256: str
    url: str
    note: str = ""
    providers: tuple[Provider, ...] = ()
    aliases: tuple[str, ...] = ()
    check: Literal["bytes", "niqe-values"] = "bytes"
    max_bytes: int = 2 << 30  # every registered file is under 600 MB

    @property
    def source(self) -> str:
        """The URL and, where useful, what it is."""
        return f"{self.url} ({self.note})" if self.note else self.url

    @property
    def full_hash(self) -> bool:
        return len(self.sha256) == 64

    @property
    def hash_label(self) -> str:
        """The check for display: ``values:<hex>`` for NIQE; for a prefix, that it must also be proven data."""
        label = self.sha256 if self.full_hash else f"{self.sha256}… (prefix sha256 + proven data)"
        return f"values:{label}" if self.check == "niqe-values" else label


FILES: dict[str, WeightFile] = {
    f.key: f
    for f in (
        WeightFile(
            "alexnet-imagenet",
            "alexnet-owt-7be5be79.pth",
            "hub/checkpoints",
            "7be5be79",
            _TORCHVISION + "alexnet-owt-7be5be79.pth",
            "torchvision AlexNet IMAGENET1K_V1",
        ),
        WeightFile(
            "vgg16-imagenet",
            "vgg16-397923af.pth",
            "hub/checkpoints",
            "397923af",
            _TORCHVISION + "vgg16-397923af.pth",
            "torchvision VGG16 IMAGENET1K_V1",
        ),
        WeightFile(
            "lpips-alex-v0.1",
            "LPIPS_v0.1_alex-df73285e.pth",
            "hub/pyiqa",
            "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
            _HF + "LPIPS_v0.1_alex-df73285e.pth",
            "",
            (
                WheelFile("lpips", "weights/v0.1/alex.pth"),
                WheelFile("torchmetrics", "functional/image/lpips_models/alex.pth"),
            ),
            aliases=("alex.pth",),
        ),
        WeightFile(
            "dists-alpha-beta",
            "DISTS_weights-f5e65c96.pth",
            "hub/pyiqa",
            "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
            _HF + "DISTS_weights-f5e65c96.pth",
            "",
            (WheelFile("torchmetrics", "functional/image/dists_models/weights.pt"),),
            aliases=("weights.pt",),
        ),
        WeightFile(
            "niqe-params",
            "niqe_modelparameters.mat",
            "hub/pyiqa",
            NIQE_VALUES_SHA256,
            _HF + "niqe_modelparameters.mat",
            "checked by the sha256 of its values; or basicsr's niqe_pris_params.npz",
            (BasicsrSdist(),),
            aliases=("niqe_pris_params.npz", BASICSR_SDIST),
            check="niqe-values",
        ),
        WeightFile(
            "musiq-koniq",
            "musiq_koniq_ckpt-e95806b9.pth",
            "hub/pyiqa",
            "e95806b9",
            _HF + "musiq_koniq_ckpt-e95806b9.pth",
        ),
        WeightFile(
            "maniqa-pipal",
            "MANIQA_PIPAL-ae6d356b.pth",
            "hub/pyiqa",
            "ae6d356b",
            _HF + "MANIQA_PIPAL-ae6d356b.pth",
        ),
        WeightFile(
            "clip-rn50",
            "RN50.pt",
            "hub/clip",
            "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
            "https://openaipublic.azureedge.net/clip/models/"
            "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
        ),
        WeightFile(
            "fid-inception",
            "pt_inception-2015-12-05-6726825d.pth",
            "hub/pyiqa",
            "6726825d",
            "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
            "pt_inception-2015-12-05-6726825d.pth",
            "also " + _HF + "pt_inception-2015-12-05-6726825d.pth",
        ),
    )
}


def canonical_target(name: str) -> str:
    """A protocol metric's canonical name, or ``lpips_vgg`` for the training loss (``vgg16`` accepted)."""
    key = name.strip().lower()
    if key == LPIPS_VGG or key in _TARGET_ALIASES:
        return LPIPS_VGG
    return canonical_name(name)


def all_targets() -> list[str]:
    """Every target ``--all`` covers: the protocol metrics, then the training loss."""
    return [*PROTOCOL, LPIPS_VGG]


def metric_files(metric: str) -> list[WeightFile]:
    """The files a metric (or ``lpips_vgg``) needs; empty for PSNR/SSIM and stand-ins."""
    if metric.endswith(STANDIN_SUFFIX):
        return []
    target = canonical_target(metric)
    keys = ("vgg16-imagenet",) if target == LPIPS_VGG else PROTOCOL[target].weights
    return [FILES[k] for k in keys]


def files_for(targets: Iterable[str]) -> dict[str, WeightFile]:
    """{key: file} needed by ``targets``, each file once, in first-needed order."""
    return {f.key: f for t in targets for f in metric_files(t)}
