"""Published numbers to put beside ours (``fidesr-eval paper_rows=<set>``), all in one place.

Sources: FiDeSR (CVPR 2026, arXiv 2603.02692) main table and DIV2K ablation, as transcribed in
DESIGN.md section 3; OSEDiff's own per-image log of its released RealSR outputs (the file
``../shared/datasets/realsr/osediff_metrics.log``, pyiqa 0.1.10), whose averages our parity test
reproduces. All numbers were computed with the protocol of ``fidesr.protocol``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PublishedRow:
    """One published row: a label, where it comes from, and the metric values it reports."""

    label: str
    source: str
    values: dict[str, float] = field(default_factory=dict)


_FIDESR = "FiDeSR paper, Table 1 (1 step)"
_ABL = "FiDeSR paper, ablation on DIV2K-Val"

PUBLISHED: dict[str, tuple[PublishedRow, ...]] = {
    "realsr": (
        PublishedRow(
            "FiDeSR (paper)",
            _FIDESR,
            {"psnr": 26.02, "ssim": 0.7457, "lpips": 0.2626, "fid": 109.68, "musiq": 69.82, "maniqa": 0.6681},
        ),
        PublishedRow(
            "OSEDiff (released outputs, its log)",
            "osediff_metrics.log (pyiqa 0.1.10)",
            {
                "psnr": 25.1511,
                "ssim": 0.7341,
                "lpips": 0.2921,
                "dists": 0.2128,
                "fid": 123.493817,
                "niqe": 5.6476,
                "musiq": 69.0896,
                "maniqa": 0.6331,
                "clipiqa": 0.6693,
            },
        ),
    ),
    "drealsr": (
        PublishedRow(
            "FiDeSR (paper)",
            _FIDESR,
            {"psnr": 28.90, "ssim": 0.7907, "lpips": 0.2836, "fid": 127.97, "musiq": 65.78, "maniqa": 0.6239},
        ),
    ),
    "div2k_val": (
        PublishedRow(
            "FiDeSR (paper)",
            _FIDESR,
            {
                "psnr": 24.33,
                "ssim": 0.6250,
                "lpips": 0.2678,
                "dists": 0.1845,
                "fid": 23.30,
                "musiq": 68.87,
                "maniqa": 0.6384,
            },
        ),
        PublishedRow(
            "FiDeSR ablation: base",
            _ABL,
            {"clipiqa": 0.6611, "niqe": 4.7381, "musiq": 67.60, "maniqa": 0.6237},
        ),
        PublishedRow(
            "FiDeSR ablation: +DAW",
            _ABL,
            {"clipiqa": 0.6641, "niqe": 4.7129, "musiq": 67.63, "maniqa": 0.6236},
        ),
        PublishedRow(
            "FiDeSR ablation: +LRRB",
            _ABL,
            {"clipiqa": 0.6626, "niqe": 4.7340, "musiq": 67.95, "maniqa": 0.6278},
        ),
        PublishedRow(
            "FiDeSR ablation: +DAW +LRRB",
            _ABL,
            {"clipiqa": 0.6699, "niqe": 4.6300, "musiq": 68.29, "maniqa": 0.6285},
        ),
    ),
}


def published_rows(test_set: str) -> tuple[PublishedRow, ...]:
    """The published rows of ``realsr``, ``drealsr`` or ``div2k_val`` (case and ``-`` insensitive)."""
    key = test_set.lower().replace("-", "_")
    if key not in PUBLISHED:
        raise KeyError(f"no published rows for {test_set!r}; known: {', '.join(PUBLISHED)}")
    return PUBLISHED[key]


def _published(test_set: str, label: str) -> PublishedRow:
    return next(r for r in PUBLISHED[test_set] if r.label == label)


#: The paper's DIV2K-Val ablation rows keyed by (DAW on, LRRB on): ``fidesr-report --paper-rows`` puts each
#: beside the matching configuration of an ablation sweep.
ABLATION_DAW_LRRB: dict[tuple[bool, bool], PublishedRow] = {
    (False, False): _published("div2k_val", "FiDeSR ablation: base"),
    (True, False): _published("div2k_val", "FiDeSR ablation: +DAW"),
    (False, True): _published("div2k_val", "FiDeSR ablation: +LRRB"),
    (True, True): _published("div2k_val", "FiDeSR ablation: +DAW +LRRB"),
}

#: "LRRB lowers the high-frequency noise-prediction error by 1.62 %" (FiDeSR paper; DESIGN section 3).
LRRB_HF_REDUCTION_PCT: float = 1.62
