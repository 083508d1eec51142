#!/usr/bin/env bash
# The GPU figures of issue 6 still to measure, as one device call (about 8 minutes on an H200; every script
# keeps to its --budget-s and writes its rows as they come, so a cut run still leaves what it measured):
#   training step: the memory presets (24gib / 16gib under their caps), the paper's precision with
#                  loss_chunk=1, and the paper configuration again as the same-machine baseline;
#   inference:     the diffusers baseline again, then FiDeSR compiled (reduce-overhead) at batch 1 and 8.
# Usage (repository root; diffusers + lpips carried as source where the device image lacks them, see
# README.md here):  OUT=/some/dir bash experiments/bench/gpu_check.sh
set -u
out=${OUT:-experiments/bench/results/gpu_check}
mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD/.cache/benchdeps${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
timeout 230 "$py" experiments/bench/train_step.py --configs 24gib 16gib paper_chunk1 paper --budget-s 210 \
    --out "$out/train.jsonl"
timeout 290 "$py" experiments/bench/inference.py --rows baseline,compiled --budget-s 270 --iters 15 \
    --out "$out/inference.jsonl"
echo "rows in $out"
