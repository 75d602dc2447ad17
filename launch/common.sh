# Helpers shared by the launch scripts (tpu.sh, gpu.sh, xpk.sh, image.sh; sourced, not run).
# shellcheck shell=bash

# libtpu flags of the training job, for tpu.sh and xpk.sh (MaxText's collective-overlap set;
# every one is a flag of the libtpu that jax[tpu] pins). LIBTPU_INIT_ARGS replaces them.
# shellcheck disable=SC2034  # read by the sourcing scripts
DEFAULT_LIBTPU_ARGS="--xla_tpu_enable_data_parallel_all_reduce_opt=true \
--xla_tpu_data_parallel_opt_different_sized_ops=true \
--xla_tpu_enable_async_collective_fusion=true \
--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true \
--xla_tpu_enable_async_collective_fusion_multiple_steps=true \
--xla_tpu_overlap_compute_collective_tc=true \
--xla_enable_async_all_gather=true"

# die MESSAGE: the message, prefixed with the script's name, on stderr; exit 2.
die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

# q WORD...: the words as one shell-quoted line (single quotes only where needed).
q() {
  local out="" word rest esc
  for word in "$@"; do
    if [[ -n $word && $word =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      out="$out $word"
    else
      rest=$word esc=""
      while [[ $rest == *\'* ]]; do
        esc="$esc${rest%%\'*}'\\''"
        rest=${rest#*\'}
      done
      out="$out '$esc$rest'"
    fi
  done
  printf '%s\n' "${out# }"
}

# run CMD...: print it (dry run) or echo it to stderr and run it.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    q "$@"
  else
    echo "+ $(q "$@")" >&2
    "$@"
  fi
}

# need VAR...: exit with a message naming the first unset setting (each script defines
# flag_of VAR, the flag that sets it).
need() {
  local name
  for name in "$@"; do
    [[ -n ${!name:-} ]] || die "$name is not set (export $name=... or pass $(flag_of "$name"))"
  done
}

# split_option ARG [NEXT]: sets opt, value and step (how many arguments the option takes up) from
# "--opt=VALUE" (step 1) or "--opt VALUE" (step 2; value empty when there is no NEXT).
# shellcheck disable=SC2034  # opt, value and step are read by the sourcing script
split_option() {
  value=""
  if [[ $1 == --*=* ]]; then
    opt=${1%%=*} value=${1#*=} step=1
  else
    opt=$1 step=2
    if (($# >= 2)); then value=$2; fi
  fi
}
