#!/usr/bin/env bash
# Local entry point (CPU laptop or a single GPU/TPU host). Installs what it needs on first use.
#
#   bash launch/local.sh train [--config.x=y ...]   # the embedded default: digits, ~3.5 min on 2 CPUs
#   bash launch/local.sh test [pytest args ...]     # lint (ruff, shellcheck, hadolint) + all tests
#
# RAR_VENV picks the virtual environment (default .venv); it is created when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${RAR_VENV:-.venv}"
extras="test"
# The tests also compile for TPU slices with the real TPU compiler
# (tests/tools/test_tpu_compile.py): the [tpu] extra brings libtpu at setup.cfg's jax pin; it
# runs on a CPU-only machine too.
[[ "${1:-train}" == test ]] && extras="test,tpu"
stamp="$venv/.rar_jax-installed-$extras"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
if [[ ! -f "$stamp" || setup.cfg -nt "$stamp" ]]; then
  # torch (CPU) only serves the tests of the .bin reader/writer; the package itself never needs it.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]" torch==2.13.0
  touch "$stamp"
fi
py="$venv/bin/python"

cmd="${1:-train}"
shift || true
case "$cmd" in
  test)
    "$py" -m ruff format --check .
    "$py" -m ruff check .
    "$venv/bin/shellcheck" -x launch/*.sh .ci/run
    "$venv/bin/hadolint" Dockerfile
    # Two workers, a test file each (its module fixtures built once): the tests spend much of
    # their time in single-threaded XLA compiles and subprocesses, so two overlap well.
    "$py" -m pytest -q -n 2 --dist loadfile "$@"
    ;;
  train)
    # On a machine with neither a TPU nor an NVIDIA GPU, JAX is told to use the CPU: otherwise
    # libtpu (installed by the test extra) probes for a TPU at start-up and prints errors.
    if [[ -z "${JAX_PLATFORMS:-}" ]] && ! compgen -G "/dev/accel*" >/dev/null \
      && ! compgen -G "/dev/vfio/[0-9]*" >/dev/null && ! command -v nvidia-smi >/dev/null; then
      export JAX_PLATFORMS=cpu
    fi
    "$py" -m rar_jax.main --config=configs/digits.py --workdir="${RAR_WORKDIR:-workdirs/digits}" "$@"
    ;;
  *)
    echo "usage: $0 [train|test] [args...]" >&2
    exit 2
    ;;
esac
