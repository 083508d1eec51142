"""CSV and Markdown tables shared by ``fidesr-eval`` and the validation callback (one format everywhere).

Numbers are written with full precision in CSV and with 4 decimals in Markdown; a metric that could not
run is written as its reason (``n/a (weights missing)``) in both, never as a number.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fidesr.files import atomic_write_text
from fidesr.protocol import get_spec


def header(metric: str) -> str:
    """Column title with the direction: ``PSNR ↑``, ``LPIPS ↓``."""
    try:
        arrow = "↓" if get_spec(metric).lower_better else "↑"
    except KeyError:
        return metric
    return f"{metric.upper()} {arrow}"


def cell(value: Any, *, markdown: bool, published: bool = False) -> str:
    """One table cell. Floats: 4 decimals in Markdown (published values as printed), repr in CSV."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if not markdown:
            return repr(value)
        return f"{value:g}" if published else f"{value:.4f}"
    return str(value)


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` with ``columns`` (missing entries empty) atomically (readers never see half a file)."""
    path = Path(path)
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else cell(r.get(c), markdown=False) for c in columns])
    return atomic_write_text(path, text.getvalue())  # a full disk: DiskFullError naming the file


def read_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a CSV written by ``write_csv``; numeric cells come back as int or float."""

    def parse(v: str) -> Any:
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return v if v != "" else None

    with open(path, newline="") as fh:
        return [{k: parse(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    metrics: Sequence[str],
    *,
    published: Sequence[bool] | None = None,
) -> str:
    """A Markdown table: plain ``columns`` first, then ``metrics`` with direction arrows.

    Args:
        published: per row, whether its numbers are published ones (printed as given, not padded).
    """
    titles = [*columns, *(header(m) for m in metrics)]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for i, r in enumerate(rows):
        pub = bool(published and published[i])
        cells = [cell(r.get(c), markdown=True) for c in columns]
        cells += [cell(r.get(m), markdown=True, published=pub) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
