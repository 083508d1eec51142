"""``fidesr-data``: the standard test sets by name (logic in :mod:`fidesr.data.benchmarks`).

    fidesr-data download realsr drealsr div2k_val [--mirror URL_OR_DIR] [--data-dir DIR] [--force]
    fidesr-data status [--data-dir DIR]

``download`` shows the licence, fetches StableSR's ``StableSR_testsets.zip`` (Hub dataset
``Iceclear/StableSR-TestSets``, about 3 GB, into the Hugging Face cache) unless a mirror is given (a folder
holding the zip, or a base URL), checks it and unpacks each set into ``<data dir>/benchmarks/<set>/{lq,gt}``.
The data directory is ``--data-dir`` > ``$FIDESR_DATA_DIR`` > ``$FIDESR_ROOT/data`` > ``./data``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fidesr.data import benchmarks as B
from fidesr.errors import report_errors


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fidesr-data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="fetch and unpack test sets")
    d.add_argument("sets", nargs="+", metavar="SET", help=f"one or more of: {', '.join(B.SETS)}")
    d.add_argument("--mirror", help=f"a folder holding {B.HUB_FILE}, or a base URL serving it")
    d.add_argument("--force", action="store_true", help="unpack again even if a set is present")
    s = sub.add_parser("status", help="which sets are present")
    for q in (d, s):
        q.add_argument("--data-dir", help="data directory (default $FIDESR_DATA_DIR, else ./data)")
        q.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def format_status(data_dir: str | None = None) -> str:
    lines = [f"benchmarks: {B.benchmarks_dir(data_dir)}"]
    missing = []
    for r in B.status(data_dir):
        state = f"present, {r['pairs']} pairs" if r["present"] else "missing"
        lines.append(f"  {r['name']:<10} {state:<22} (expected {r['expected']})  {r['path']}")
        if not r["present"]:
            missing.append(str(r["name"]))
    if missing:
        lines.append(f"fetch them: {B.download_command(missing)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def run() -> int:
        if args.command == "download":
            B.download(args.sets, mirror=args.mirror, root=args.data_dir, force=args.force)
        print(format_status(args.data_dir))
        return 0

    return report_errors("fidesr-data", run, debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
