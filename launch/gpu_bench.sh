#!/usr/bin/env bash
# The GPU benchmarks (docs/guides/gpu.md), in one call of at most 8 minutes (e.g. on a single H100/H200), as the A/B
# of every numerics switch (rar_jax/model/numerics.py; the GPU default is the library paths):
#   RAR-B training, bf16, at a batch that fills the chip (full remat): all library paths, then
#   each hand-written path in turn;
#   RAR-XL sampling with guidance at batch 256, bf16, VQGAN decoding included: attention xla
#   (the GPU default), custom and cudnn (jax.nn.dot_product_attention(implementation="cudnn"),
#   which has no dropout: a candidate only where none applies, as in sampling; in training with
#   the recipe's attention dropout it runs custom, so no training line is listed for it).
# Not candidates: the Pallas attention (attention_impl=pallas) is a TPU kernel (Mosaic TPU; off
# a TPU it runs in Pallas' interpret mode, for tests), and JAX's Pallas GPU attention has no
# dropout and needs power-of-two head dims (RAR-B: 48, XL: 80).
# Prints one JSON line per variant (rar_jax.tools.bench; the switches are fields of each line).
# --dry-run prints the commands only.
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
library="--attention_impl=xla --layer_norm_impl=flax --gelu_dropout_impl=autodiff --linear_impl=dot_general"
train="$py -m rar_jax.tools.bench train --variant=B --batch=$train_batch --dtype=bfloat16 --remat=full --steps=10 --warmup=2 $library"
sample="$py -m rar_jax.tools.bench sample --variant=XL --batch=256 --dtype=bfloat16 --guidance=6.9 --decode --steps=3 --warmup=1 $library"
commands=(
  "$train"
  "$train --attention_impl=custom"
  "$train --attention_impl=autodiff"
  "$train --layer_norm_impl=custom"
  "$train --gelu_dropout_impl=custom"
  "$train --linear_impl=flat"
  "$sample"
  "$sample --attention_impl=custom"
  "$sample --attention_impl=cudnn"
)
deadline=$((SECONDS + 480))
for cmd in "${commands[@]}"; do
  if [[ $dry_run == 1 ]]; then
    echo "$cmd"
  elif ((SECONDS < deadline)); then
    # shellcheck disable=SC2086  # each command is split into its words on purpose
    timeout $((deadline - SECONDS)) $cmd || echo "gpu_bench.sh: failed or out of time: $cmd" >&2
  fi
done
