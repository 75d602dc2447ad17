#!/usr/bin/env bash
# GPU launcher: one host with all its GPUs, a SLURM job (jax.distributed detects it), or hosts
# joined through an explicit coordinator. One process per host drives all of its GPUs.
#
#   bash launch/gpu.sh setup                                   # .venv with pip install -e '.[gpu]'
#   WORKDIR=/shared/rar_l bash launch/gpu.sh single --config=configs/imagenet.py:L
#   bash launch/gpu.sh slurm --nodes 4 --gpus-per-node 8 --workdir /shared/rar_xl \
#       --config configs/imagenet.py:XL [--sbatch] -- --config.train.global_batch=1024
#   bash launch/gpu.sh multi --coordinator 10.0.0.1:12345 --num-processes 2 --process-id 0 ...
#
# --dry-run (or DRY_RUN=1) prints every command, one per line, exactly as it would run them, and
# runs nothing. `bash launch/gpu.sh --help` lists the commands and settings.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/common.sh
source launch/common.sh
root=$(pwd)

# XLA flags of the training job (JAX's and NVIDIA's GPU performance guides: overlap and combine
# collectives, pipeline them over the scanned layers). Every one is a flag of the pinned jaxlib
# (tests/launch/test_launch.py checks). Set XLA_FLAGS to replace them, or to "" for none.
default_xla_flags="--xla_gpu_enable_latency_hiding_scheduler=true \
--xla_gpu_all_reduce_combine_threshold_bytes=134217728 \
--xla_gpu_all_gather_combine_threshold_bytes=134217728 \
--xla_gpu_reduce_scatter_combine_threshold_bytes=134217728 \
--xla_gpu_enable_pipelined_all_gather=true \
--xla_gpu_enable_pipelined_reduce_scatter=true \
--xla_gpu_enable_pipelined_all_reduce=true \
--xla_gpu_enable_while_loop_double_buffering=true"

usage() {
  cat <<'EOF'
usage: bash launch/gpu.sh [options] COMMAND [-- rar_jax.main flags]

commands
  setup               create the virtual environment (RAR_VENV, default .venv) when missing and
                      pip install -e '.[gpu]' into it
  single [-- FLAGS]   train on this host with all its GPUs
  slurm [-- FLAGS]    srun one task per node, each with all of the node's GPUs (inside an
                      allocation, or srun allocates); --sbatch submits the same srun as a batch job
  multi [-- FLAGS]    train as process PROCESS_ID of NUM_PROCESSES (run it on every host) with an
                      explicit coordinator

settings (flag or environment variable; a flag wins)
  --workdir W         WORKDIR                checkpoints and logs (required; shared between hosts)
  --config C          CONFIG                 default configs/imagenet.py:B
  --nodes N           NODES                  slurm: nodes (required)
  --gpus-per-node G   GPUS_PER_NODE          slurm: GPUs per node (default 8)
  --cpus-per-task C   CPUS_PER_TASK          slurm: CPUs for each (per-node) task (data loading)
  --partition P       PARTITION              slurm: partition
  --account A         ACCOUNT                slurm: account
  --time T            TIME_LIMIT             slurm: time limit, e.g. 48:00:00
  --job-name J        JOB_NAME               slurm: job name (default rar_jax)
  --sbatch                                   slurm: submit a batch job (log slurm-<name>-<id>.out)
  --coordinator A     JAX_COORDINATOR_ADDRESS  multi: host:port of process 0
  --num-processes N   JAX_NUM_PROCESSES        multi: number of hosts
  --process-id I      JAX_PROCESS_ID           multi: this host, 0 ... N-1
  --dry-run           DRY_RUN=1              print the commands, run nothing
  XLA_FLAGS           replaces the script's XLA flags ("" for none)
  RAR_VENV            virtual environment (default .venv); RAR_PYTHON overrides its python
EOF
}

flag_of() {
  case "$1" in
    JAX_COORDINATOR_ADDRESS) echo --coordinator ;;
    JAX_NUM_PROCESSES) echo --num-processes ;;
    JAX_PROCESS_ID) echo --process-id ;;
    *) echo "--$(echo "$1" | tr '[:upper:]_' '[:lower:]-')" ;;
  esac
}

# Settings: environment first, flags below override.
WORKDIR="${WORKDIR:-}"
CONFIG="${CONFIG:-configs/imagenet.py:B}"
NODES="${NODES:-}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
CPUS_PER_TASK="${CPUS_PER_TASK:-}"
PARTITION="${PARTITION:-}"
ACCOUNT="${ACCOUNT:-}"
TIME_LIMIT="${TIME_LIMIT:-}"
JOB_NAME="${JOB_NAME:-rar_jax}"
JAX_COORDINATOR_ADDRESS="${JAX_COORDINATOR_ADDRESS:-}"
JAX_NUM_PROCESSES="${JAX_NUM_PROCESSES:-}"
JAX_PROCESS_ID="${JAX_PROCESS_ID:-}"
XLA_FLAGS="${XLA_FLAGS-$default_xla_flags}"
DRY_RUN="${DRY_RUN:-0}"
sbatch=0

venv="${RAR_VENV:-.venv}"
if [[ $venv != /* ]]; then venv="$root/$venv"; fi
python="${RAR_PYTHON:-$venv/bin/python}"

command=""
extra=() # flags for rar_jax.main, after --
while (($#)); do
  split_option "$@" # --opt VALUE and --opt=VALUE
  case "$opt" in
    --workdir | --config | --nodes | --gpus-per-node | --cpus-per-task | --partition | --account | \
      --time | --job-name | --coordinator | --num-processes | --process-id)
      if ((step == 2 && $# < 2)); then die "$opt needs a value"; fi
      case "$opt" in
        --workdir) WORKDIR=$value ;;
        --config) CONFIG=$value ;;
        --nodes) NODES=$value ;;
        --gpus-per-node) GPUS_PER_NODE=$value ;;
        --cpus-per-task) CPUS_PER_TASK=$value ;;
        --partition) PARTITION=$value ;;
        --account) ACCOUNT=$value ;;
        --time) TIME_LIMIT=$value ;;
        --job-name) JOB_NAME=$value ;;
        --coordinator) JAX_COORDINATOR_ADDRESS=$value ;;
        --num-processes) JAX_NUM_PROCESSES=$value ;;
        --process-id) JAX_PROCESS_ID=$value ;;
      esac
      shift "$step"
      ;;
    --sbatch) sbatch=1 && shift ;;
    --dry-run) DRY_RUN=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    --)
      shift
      extra=("$@")
      break
      ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      [[ -z $command ]] || die "unexpected argument '$1' (flags for rar_jax.main go after --)"
      command=$1
      shift
      ;;
  esac
done
if [[ -z $command ]]; then
  usage >&2
  die "no command given"
fi

# main: the training command, with the XLA flags in its environment (env VAR=... python ...).
main() {
  need WORKDIR CONFIG
  local cmd=(env "$@")
  if [[ -n $XLA_FLAGS ]]; then cmd+=("XLA_FLAGS=$XLA_FLAGS"); fi
  cmd+=("$python" -m rar_jax.main "--config=$CONFIG" "--workdir=$WORKDIR")
  cmd+=(${extra[@]+"${extra[@]}"})
  main_cmd=("${cmd[@]}")
}

cmd_setup() {
  if [[ ! -x $venv/bin/python ]]; then run python3 -m venv "$venv"; fi
  run "$venv/bin/python" -m pip install -e '.[gpu]'
}

cmd_single() {
  main
  run "${main_cmd[@]}"
}

cmd_slurm() {
  need NODES GPUS_PER_NODE
  [[ $NODES =~ ^[1-9][0-9]*$ ]] || die "NODES must be a positive integer, got '$NODES'"
  [[ $GPUS_PER_NODE =~ ^[1-9][0-9]*$ ]] || die "GPUS_PER_NODE must be a positive integer"
  # One task per node owning all of the node's GPUs: JAX's SLURM detection would otherwise give
  # each process only the GPU numbered by its local task id.
  local ids="0" i
  for ((i = 1; i < GPUS_PER_NODE; i++)); do ids="$ids,$i"; done
  main "JAX_LOCAL_DEVICE_IDS=$ids"
  local layout=("--nodes=$NODES" --ntasks-per-node=1 "--gpus-per-node=$GPUS_PER_NODE")
  if [[ -n $CPUS_PER_TASK ]]; then layout+=("--cpus-per-task=$CPUS_PER_TASK"); fi
  local alloc=("--job-name=$JOB_NAME")
  if [[ -n $PARTITION ]]; then alloc+=("--partition=$PARTITION"); fi
  if [[ -n $ACCOUNT ]]; then alloc+=("--account=$ACCOUNT"); fi
  if [[ -n $TIME_LIMIT ]]; then alloc+=("--time=$TIME_LIMIT"); fi
  # A task that fails ends the others instead of leaving them blocked in a collective.
  local srun=(srun "${layout[@]}" --kill-on-bad-exit=1)
  if [[ $sbatch == 1 ]]; then
    run sbatch "${alloc[@]}" "${layout[@]}" "--chdir=$root" "--output=slurm-%x-%j.out" \
      --wrap="$(q "${srun[@]}" "${main_cmd[@]}")"
  else
    run "${srun[@]}" "${alloc[@]}" "${main_cmd[@]}"
  fi
}

cmd_multi() {
  need JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES JAX_PROCESS_ID
  [[ $JAX_COORDINATOR_ADDRESS == *:* ]] || die "JAX_COORDINATOR_ADDRESS must be host:port"
  [[ $JAX_NUM_PROCESSES =~ ^[1-9][0-9]*$ ]] || die "JAX_NUM_PROCESSES must be a positive integer"
  [[ $JAX_PROCESS_ID =~ ^[0-9]+$ && $JAX_PROCESS_ID -lt $JAX_NUM_PROCESSES ]] ||
    die "JAX_PROCESS_ID must be in [0, $JAX_NUM_PROCESSES), got '$JAX_PROCESS_ID'"
  main "JAX_COORDINATOR_ADDRESS=$JAX_COORDINATOR_ADDRESS" \
    "JAX_NUM_PROCESSES=$JAX_NUM_PROCESSES" "JAX_PROCESS_ID=$JAX_PROCESS_ID"
  run "${main_cmd[@]}"
}

case "$command" in
  setup | single | slurm | multi) "cmd_$command" ;;
  *) die "unknown command '$command' (see --help)" ;;
esac
