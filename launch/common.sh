# Helpers shared by launch/tpu.sh and launch/gpu.sh (sourced, not run).
# shellcheck shell=bash

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
