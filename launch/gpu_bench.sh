#!/usr/bin/env bash
# The GPU benchmarks (docs/gpu.md), in one call (e.g. on a single H100/H200):
#   RAR-B training, bf16, at a batch that fills the chip (full remat), and
#   RAR-XL sampling with guidance at batch 256, bf16, VQGAN decoding included.
# Prints one JSON line per measurement (rar_jax.tools.bench). --dry-run prints the commands only.
#
#   bash launch/gpu_bench.sh [--dry-run] [--train-batch N]
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run="${DRY_RUN:-0}"
train_batch=256
while (($#)); do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --train-batch) train_batch="$2"; shift ;;
    *) echo "gpu_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

py="${PYTHON:-python}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
commands=(
  "$py -m rar_jax.tools.bench train --variant=B --batch=$train_batch --dtype=bfloat16 --remat=full --steps=20 --warmup=3"
  "$py -m rar_jax.tools.bench sample --variant=XL --batch=256 --dtype=bfloat16 --guidance=6.9 --decode --steps=5 --warmup=1"
)
for cmd in "${commands[@]}"; do
  if [[ $dry_run == 1 ]]; then
    echo "$cmd"
  else
    $cmd
  fi
done
