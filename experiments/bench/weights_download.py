"""Time ``fidesr-weights download --all`` against a local HTTP mirror (127.0.0.1).

Every registered file is served with the size of the real one (random bytes; the registry's checksums
are replaced by theirs for this process, as the tests do); NIQE is served as its real .mat, built from
the shared ``niqe_pris_params.npz``, so its value check is the real one. Each run starts from an empty
weights directory. Prints one line per run and the median.

    python experiments/bench/weights_download.py [--runs 3] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from _weights_server import serve  # noqa: E402
from fidesr.cli.weights import main  # noqa: E402
from fidesr.weights import registry as R  # noqa: E402
from fidesr.weights.install import niqe_mat_from_npz  # noqa: E402

# Sizes of the published files in bytes (rounded), what a real `download --all` transfers.
SIZES = {
    "alexnet-imagenet": 244_408_911,
    "vgg16-imagenet": 553_433_881,
    "lpips-alex-v0.1": 6_009,
    "dists-alpha-beta": 9_727,
    "musiq-koniq": 109_000_000,
    "maniqa-pipal": 541_000_000,
    "clip-rn50": 256_000_000,
    "fid-inception": 95_628_359,
}
NIQE_NPZ = REPO.parent / "shared" / "weights" / "niqe_pris_params.npz"


def main_bench() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="file sizes x this (1.0: the real sizes)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp) / "srv") as srv:
        total = 0
        for key, size in SIZES.items():
            data = os.urandom(max(1, int(size * args.scale)))
            f = R.FILES[key]
            R.FILES[key] = dataclasses.replace(f, sha256=hashlib.sha256(data).hexdigest())
            srv.put(f.filename, data)
            total += len(data)
        niqe = niqe_mat_from_npz(NIQE_NPZ, Path(tmp) / "niqe.mat").read_bytes()
        srv.put(R.FILES["niqe-params"].filename, niqe)
        total += len(niqe)
        os.environ["FIDESR_WEIGHTS_MIRROR"] = srv.url
        times = []
        for i in range(args.runs):
            wd = Path(tmp) / f"weights{i}"
            start = time.perf_counter()
            rc = main(["--weights-dir", str(wd), "download", "--all"])
            times.append(time.perf_counter() - start)
            assert rc == 0, "download --all failed"
            print(
                f"run {i + 1}: {times[-1]:.2f} s for {len(SIZES) + 1} files, {total / 1e6:.0f} MB", flush=True
            )
        print(f"median of {args.runs}: {statistics.median(times):.2f} s")


if __name__ == "__main__":
    main_bench()
