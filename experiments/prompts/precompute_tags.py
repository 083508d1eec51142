"""Precompute RAM tags for a folder of HQ images into a JSON file that ``prompts=file`` reads.

    python experiments/prompts/precompute_tags.py /data/DIV2K_train_HR [/data/ffhq_10k.txt ...] \
        --out /data/tags/train_ram.json --weights /models/ram_swin_large_14m.pth [--model ram] [--device cuda]

Sources are read as the training data reads them (``fidesr.data.datasets.read_file_list``: folders
recursively, or text files listing one image per line). Keys are file stems (what ``FilePrompts`` looks
up); an existing output is extended (images already tagged are skipped), so an interrupted run resumes.
Several sources share one file as long as their stems do not collide (the script stops on a collision).
Without the ``ram`` package or its weights it stops with a message saying how to get them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fidesr.data.datasets import read_file_list
from fidesr.data.imageio import ImageLoadError
from fidesr.data.prompts import RAMPrompts, RAMUnavailableError
from fidesr.files import atomic_write_text


def _write(path: Path, tags: dict[str, str]) -> None:
    atomic_write_text(path, json.dumps(dict(sorted(tags.items())), indent=1, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", type=Path, help="image folders (recursive) or file lists")
    parser.add_argument(
        "--out", type=Path, required=True, help="JSON file {stem: tags} (extended if it exists)"
    )
    parser.add_argument("--weights", type=Path, required=True, help="RAM checkpoint (.pth)")
    parser.add_argument("--model", default="ram", choices=["ram", "ram_plus"])
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save-every", type=int, default=200, help="write the file every N images")
    args = parser.parse_args(argv)

    try:
        ram = RAMPrompts(args.weights, model=args.model, image_size=args.image_size, device=args.device)
    except RAMUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tags: dict[str, str] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    owner: dict[str, Path] = {}
    todo: list[Path] = []
    for source in args.sources:
        for path in read_file_list(source):
            if path.stem in owner:
                print(
                    f"error: two images with the stem {path.stem!r}: {owner[path.stem]} and {path}; "
                    "FilePrompts looks tags up by stem, so use separate tag files",
                    file=sys.stderr,
                )
                return 2
            owner[path.stem] = path
            if path.stem not in tags:
                todo.append(path)
    print(f"{len(owner)} images, {len(owner) - len(todo)} already tagged, {len(todo)} to tag -> {args.out}")
    from tqdm.auto import tqdm

    for i, path in enumerate(tqdm(todo, unit="img")):
        try:
            tags[path.stem] = ram(path)
        except ImageLoadError as err:
            print(f"warning: skipped {err}", file=sys.stderr)
        if (i + 1) % args.save_every == 0:
            _write(args.out, tags)
    _write(args.out, tags)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
