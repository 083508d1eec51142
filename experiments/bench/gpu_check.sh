#!/usr/bin/env bash
# The GPU figures of issue 6 still to measure (about 9 minutes on an H200 in all; every script keeps to its
# --budget-s and writes its rows as they come, so a cut run still leaves what it measured):
#   train      training step: the memory presets under their caps (24gib, 16gib), the paper configuration
#              again as the same-machine baseline, and paper with the decoder + LPIPS compiled;
#   inference  the diffusers baseline again, then FiDeSR compiled (reduce-overhead) at batch 1 and 8.
# Usage (repository root; diffusers + lpips carried as source where the device image lacks them, see
# README.md here):  OUT=/some/dir bash experiments/bench/gpu_check.sh [train|inference|all]
set -u
part=${1:-all}
out=${OUT:-experiments/bench/results/gpu_check}
mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD/.cache/benchdeps${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
if [ "$part" = train ] || [ "$part" = all ]; then
    timeout 300 "$py" experiments/bench/train_step.py --configs 24gib 16gib paper paper_compiled --budget-s 280 \
        --out "$out/train.jsonl"
fi
if [ "$part" = inference ] || [ "$part" = all ]; then
    timeout 250 "$py" experiments/bench/inference.py --rows baseline,compiled --budget-s 230 --iters 15 \
        --out "$out/inference.jsonl"
fi
echo "rows in $out"
