"""``fidesr-weights``: where the metric weights are, what is missing, and getting what can be got.

    fidesr-weights status [--metrics lpips niqe] [--weights-dir DIR] [--check]
    fidesr-weights install [--metrics ...] [--index-url URL]     # from PyPI wheels / basicsr sdist
    fidesr-weights install --from FILE_OR_DIR [...]              # adopt pre-downloaded files (copy)
    fidesr-weights link DIR [...]                                # adopt by symlink (large files)

The directory is ``--weights-dir`` > ``$FIDESR_WEIGHTS_DIR`` > ``~/.cache/fidesr``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fidesr.metrics import weights as W
from fidesr.metrics.specs import PROTOCOL


def format_status(metrics: Sequence[str] | None = None, weights_dir: str | None = None) -> tuple[str, bool]:
    """The status report as text, and whether every listed metric is ready."""
    wd = W.resolve_weights_dir(weights_dir)
    origin = "argument" if weights_dir else (f"${W.ENV_VAR}" if os.environ.get(W.ENV_VAR) else "default")
    lines = [f"weights dir: {wd}  ({origin})", ""]
    ready, missing = [], []
    for metric, files in W.status(metrics, wd).items():
        spec = PROTOCOL[metric]
        bad = [s for s in files if not s.ok]
        (missing if bad else ready).append(metric)
        state = "ready" if not bad else f"n/a (weights missing: {len(bad)}/{len(files)} files)"
        lines.append(f"{metric:<8} {state:<40} {spec.description}")
        if not files:
            lines.append("    (no weights needed)")
        for s in files:
            lines.append(f"    {s.file.filename}  sha256 {s.file.hash_label}")
            if s.ok:
                lines.append(f"        found:   {s.path}")
            else:
                lines.append(f"        {s.state}: {s.path}" + (f"  [{s.detail}]" if s.detail else ""))
                how = "  (or: fidesr-weights install)" if s.file.providers else ""
                lines.append(f"        source:  {s.file.source}{how}")
    lines += ["", f"ready: {', '.join(ready) or '-'}; weights missing: {', '.join(missing) or '-'}"]
    return "\n".join(lines), not missing


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fidesr-weights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights-dir", default=None, help=f"default: ${W.ENV_VAR} or {W.DEFAULT_WEIGHTS_DIR}")
    sub = p.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="list, per metric, the files with sha256, found/missing and source")
    st.add_argument("--metrics", nargs="+", default=None, help="default: all protocol metrics")
    st.add_argument("--check", action="store_true", help="exit with status 1 if any file is missing")
    ins = sub.add_parser("install", help="fetch from package registries, or adopt files with --from")
    ins.add_argument("--metrics", nargs="+", default=None)
    ins.add_argument("--from", dest="sources", nargs="+", default=None, metavar="PATH",
                     help="files or folders of pre-downloaded weights to copy in (checksums verified)")
    ins.add_argument("--index-url", default=None, help=f"simple index for the basicsr sdist (default "
                     f"$PIP_INDEX_URL or {W.DEFAULT_INDEX_URL})")
    ln = sub.add_parser("link", help="adopt pre-downloaded files by symlinking them (checksums verified)")
    ln.add_argument("sources", nargs="+", metavar="DIR")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    wd = args.weights_dir
    if args.command == "status":
        text, ok = format_status(args.metrics, wd)
        print(text)
        return 1 if (args.check and not ok) else 0
    if args.command == "install" and args.sources is None:
        W.install(args.metrics, wd, index_url=args.index_url)
    else:
        W.adopt(args.sources, wd, mode="link" if args.command == "link" else "copy")
    print()
    print(format_status(args.metrics if args.command == "install" else None, wd)[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
