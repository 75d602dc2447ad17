#!/usr/bin/env bash
# Cloud TPU launcher: create a TPU VM (one host, a pod slice, or a multislice queued resource),
# install the package on every worker, start the same training command on all of them, follow
# the logs, copy results out, delete. Run it where gcloud is set up (a laptop, Cloud Shell).
#
#   export PROJECT=my-project ZONE=us-east5-a TPU_NAME=rar-xl ACCELERATOR_TYPE=v5p-64
#   bash launch/tpu.sh create --spot
#   bash launch/tpu.sh setup                   # REPO_URL=... to clone instead of copying this tree
#   WORKDIR=gs://bucket/rar_xl bash launch/tpu.sh train --config=configs/imagenet.py:XL \
#       -- --config.data.dir=gs://bucket/imagenet_tokens
#   bash launch/tpu.sh logs 0 --follow
#
# --dry-run (or DRY_RUN=1) prints every command, one per line, exactly as it would run them, and
# runs nothing. `bash launch/tpu.sh --help` lists the commands and settings.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=launch/common.sh
source "$root/launch/common.sh"

usage() {
  cat <<'EOF'
usage: bash launch/tpu.sh [options] COMMAND [args] [-- rar_jax.main flags]

commands
  create              create the TPU VM, or the queued resource with --queued / --node-count N
  setup               install the package on every worker: clone REPO_URL, or copy a tarball of
                      this checkout (TARBALL to send another), then pip install -e '.[tpu]'
  train [-- FLAGS]    start training on every worker, detached (nohup); FLAGS go to rar_jax.main;
                      logs in ~/rar_logs/worker-<hostname>.log on each worker
  stop                stop the training that train started, on every worker
  logs [N|all]        tail the log of worker N (default 0) or of every worker (--follow, --lines)
  copy WHAT [DEST]    copy WORKDIR/WHAT to DEST (default .); a number means checkpoints/<number>:
                      gcloud storage for gs:// workdirs, else scp from worker 0
  status              describe the TPU VM or the queued resource
  delete              delete the TPU VM, or the queued resource with its slices

settings (flag or environment variable; a flag wins)
  --project P         PROJECT            Google Cloud project (required)
  --zone Z            ZONE               zone (required)
  --name N            TPU_NAME           TPU VM name (required); slices of a multislice are N-0, N-1, ...
  --accelerator-type  ACCELERATOR_TYPE   e.g. v5p-8 (one host), v5p-64, v6e-256 (per slice)
  --version V         RUNTIME_VERSION    TPU VM image; default from the accelerator type
                                         (v4, v5e, v5p, v6e)
  --spot              SPOT=1             Spot VMs (default: on-demand)
  --preemptible       PREEMPTIBLE=1      preemptible VMs (not with --queued)
  --queued            QUEUED=1           create through `queued-resources create`
  --node-count N      NODE_COUNT         slices of a multislice (default 1; > 1 implies --queued
                                         and train adds --config.mesh.dcn_data=N)
  --queued-id ID      QUEUED_RESOURCE_ID queued resource name (default: TPU_NAME)
  --repo-url URL      REPO_URL           setup clones this repository on the workers ...
  --ref REF           REPO_REF           ... at this branch, tag or commit (default: its HEAD)
  --tarball FILE      TARBALL            setup copies this .tar.gz of the repository instead
  --workdir W         WORKDIR            checkpoints and logs: gs://bucket/path (a local path
                                         only works on a single host)
  --config C          CONFIG             default configs/imagenet.py:B
  --slice S           SLICE              the slice that logs and copy use (default 0)
  --lines N           LOG_LINES          lines that logs shows (default 100)
  --follow                               logs keeps following (tail -F)
  --dry-run           DRY_RUN=1          print the commands, run nothing
  LIBTPU_INIT_ARGS    replaces the script's libtpu flags ("" for none)
  WORKER_PYTHON       Python on the workers (default python3.11; apt-installed when missing)

On each worker: code in ~/rar_jax, virtual environment ~/rar_venv, logs and pid in ~/rar_logs.
EOF
}

flag_of() {
  case "$1" in
    PROJECT) echo --project ;;
    ZONE) echo --zone ;;
    TPU_NAME) echo --name ;;
    ACCELERATOR_TYPE) echo --accelerator-type ;;
    RUNTIME_VERSION) echo --version ;;
    WORKDIR) echo --workdir ;;
    *) echo "--$(echo "$1" | tr '[:upper:]_' '[:lower:]-')" ;;
  esac
}

# Settings: environment first, flags below override.
PROJECT="${PROJECT:-}"
ZONE="${ZONE:-}"
TPU_NAME="${TPU_NAME:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-}"
RUNTIME_VERSION="${RUNTIME_VERSION:-}"
SPOT="${SPOT:-0}"
PREEMPTIBLE="${PREEMPTIBLE:-0}"
QUEUED="${QUEUED:-0}"
NODE_COUNT="${NODE_COUNT:-1}"
QUEUED_RESOURCE_ID="${QUEUED_RESOURCE_ID:-}"
REPO_URL="${REPO_URL:-}"
REPO_REF="${REPO_REF:-}"
TARBALL="${TARBALL:-}"
WORKDIR="${WORKDIR:-}"
CONFIG="${CONFIG:-configs/imagenet.py:B}"
SLICE="${SLICE:-0}"
LOG_LINES="${LOG_LINES:-100}"
WORKER_PYTHON="${WORKER_PYTHON:-python3.11}"
LIBTPU_INIT_ARGS="${LIBTPU_INIT_ARGS-$DEFAULT_LIBTPU_ARGS}"
DRY_RUN="${DRY_RUN:-0}"
follow=0

command=""
args=()
extra=() # flags for rar_jax.main, after --
while (($#)); do
  split_option "$@" # --opt VALUE and --opt=VALUE
  case "$opt" in
    --project | --zone | --name | --accelerator-type | --version | --node-count | --queued-id | \
      --repo-url | --ref | --tarball | --workdir | --config | --slice | --lines)
      if ((step == 2 && $# < 2)); then die "$opt needs a value"; fi
      case "$opt" in
        --project) PROJECT=$value ;;
        --zone) ZONE=$value ;;
        --name) TPU_NAME=$value ;;
        --accelerator-type) ACCELERATOR_TYPE=$value ;;
        --version) RUNTIME_VERSION=$value ;;
        --node-count) NODE_COUNT=$value ;;
        --queued-id) QUEUED_RESOURCE_ID=$value ;;
        --repo-url) REPO_URL=$value ;;
        --ref) REPO_REF=$value ;;
        --tarball) TARBALL=$value ;;
        --workdir) WORKDIR=$value ;;
        --config) CONFIG=$value ;;
        --slice) SLICE=$value ;;
        --lines) LOG_LINES=$value ;;
      esac
      shift "$step"
      ;;
    --spot) SPOT=1 && shift ;;
    --preemptible) PREEMPTIBLE=1 && shift ;;
    --queued) QUEUED=1 && shift ;;
    --follow) follow=1 && shift ;;
    --dry-run) DRY_RUN=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    --)
      shift
      extra=("$@")
      break
      ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      if [[ -z $command ]]; then command=$1; else args+=("$1"); fi
      shift
      ;;
  esac
done

if [[ -z $command ]]; then
  usage >&2
  die "no command given"
fi
[[ $NODE_COUNT =~ ^[1-9][0-9]*$ ]] || die "NODE_COUNT must be a positive integer, got '$NODE_COUNT'"
[[ $SLICE =~ ^[0-9]+$ && $SLICE -lt $NODE_COUNT ]] || die "SLICE must be in [0, $NODE_COUNT)"
[[ $LOG_LINES =~ ^[0-9]+$ ]] || die "LOG_LINES must be a number, got '$LOG_LINES'"
if ((NODE_COUNT > 1)); then QUEUED=1; fi # multislice exists only as a queued resource
QUEUED_RESOURCE_ID="${QUEUED_RESOURCE_ID:-$TPU_NAME}"
if [[ $SPOT == 1 && $PREEMPTIBLE == 1 ]]; then die "choose one of --spot and --preemptible"; fi

# The TPU VMs: TPU_NAME, or TPU_NAME-0 ... TPU_NAME-(N-1) for a multislice.
nodes=()
if ((NODE_COUNT > 1)); then
  for ((i = 0; i < NODE_COUNT; i++)); do nodes+=("$TPU_NAME-$i"); done
else
  nodes=("$TPU_NAME")
fi
if ((NODE_COUNT > 1)); then node_of_slice="$TPU_NAME-$SLICE"; else node_of_slice=$TPU_NAME; fi

where=("--project=$PROJECT" "--zone=$ZONE")

# ssh_all NODE REMOTE_COMMAND: run it on every worker of one slice.
ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$1" "${where[@]}" --worker=all --command "$2"
}

runtime_version() {
  if [[ -n $RUNTIME_VERSION ]]; then
    echo "$RUNTIME_VERSION"
    return
  fi
  case "$ACCELERATOR_TYPE" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "RUNTIME_VERSION is not set and has no default for '$ACCELERATOR_TYPE' (pass --version)" ;;
  esac
}

cmd_create() {
  need PROJECT ZONE TPU_NAME ACCELERATOR_TYPE
  local version
  version=$(runtime_version)
  local provisioning=()
  if [[ $SPOT == 1 ]]; then provisioning=(--spot); fi
  if [[ $QUEUED == 1 ]]; then
    [[ $PREEMPTIBLE == 0 ]] || die "--preemptible does not apply to queued resources; use --spot"
    local nodes_spec=("--node-id=$TPU_NAME")
    if ((NODE_COUNT > 1)); then nodes_spec=("--node-count=$NODE_COUNT" "--node-prefix=$TPU_NAME"); fi
    run gcloud compute tpus queued-resources create "$QUEUED_RESOURCE_ID" "${where[@]}" \
      "--accelerator-type=$ACCELERATOR_TYPE" "--runtime-version=$version" "${nodes_spec[@]}" \
      ${provisioning[@]+"${provisioning[@]}"}
  else
    if [[ $PREEMPTIBLE == 1 ]]; then provisioning=(--preemptible); fi
    run gcloud compute tpus tpu-vm create "$TPU_NAME" "${where[@]}" \
      "--accelerator-type=$ACCELERATOR_TYPE" "--version=$version" \
      ${provisioning[@]+"${provisioning[@]}"}
  fi
}

cmd_setup() {
  need PROJECT ZONE TPU_NAME
  local fetch node
  if [[ -n $REPO_URL ]]; then
    # A clone on first use; later setups fetch the ref again and check it out.
    fetch="{ [ -d ~/rar_jax/.git ] || git clone --depth=1 $(q "$REPO_URL") ~/rar_jax; }"
    fetch="$fetch && git -C ~/rar_jax fetch --depth=1 origin $(q "${REPO_REF:-HEAD}")"
    fetch="$fetch && git -C ~/rar_jax checkout --force FETCH_HEAD"
  else
    local tarball=$TARBALL
    if [[ -z $tarball ]]; then
      tarball="${TMPDIR:-/tmp}/rar_jax-src.tar.gz"
      run tar -czf "$tarball" --exclude=.git --exclude=.venv --exclude=.ci-venv \
        --exclude=workdirs --exclude=__pycache__ --exclude='*.egg-info' \
        --exclude=.pytest_cache --exclude=.ruff_cache -C "$root" .
    elif [[ $DRY_RUN != 1 && ! -f $tarball ]]; then
      die "TARBALL $tarball does not exist"
    fi
    for node in "${nodes[@]}"; do
      run gcloud compute tpus tpu-vm scp "$tarball" "$node:rar_jax-src.tar.gz" "${where[@]}" --worker=all
    done
    fetch="mkdir -p ~/rar_jax && tar -xzf ~/rar_jax-src.tar.gz -C ~/rar_jax && rm ~/rar_jax-src.tar.gz"
  fi
  local py
  py=$(q "$WORKER_PYTHON")
  local install="$fetch"
  # Ubuntu's TPU VM images ship an older Python; the package needs 3.11 (and its venv module).
  install="$install && { $py -c 'import ensurepip' 2>/dev/null || { sudo apt-get update -q"
  install="$install && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q $py $py-venv; }; }"
  install="$install && { [ -x ~/rar_venv/bin/python ] || $py -m venv ~/rar_venv; }"
  install="$install && ~/rar_venv/bin/python -m pip install -q -U pip"
  install="$install && cd ~/rar_jax && ~/rar_venv/bin/python -m pip install -q -e '.[tpu]'"
  for node in "${nodes[@]}"; do ssh_all "$node" "$install"; done
}

cmd_train() {
  need PROJECT ZONE TPU_NAME WORKDIR CONFIG
  if [[ $WORKDIR != gs://* ]]; then
    echo "tpu.sh: WORKDIR=$WORKDIR is not gs://: only a single-host TPU VM can use a local one" >&2
  fi
  local main=(-m rar_jax.main "--config=$CONFIG" "--workdir=$WORKDIR")
  if ((NODE_COUNT > 1)); then main+=("--config.mesh.dcn_data=$NODE_COUNT"); fi
  main+=(${extra[@]+"${extra[@]}"})
  # On each worker: refuse to start twice, then start detached with the pid in ~/rar_logs.
  local start="cd ~/rar_jax || exit 1; mkdir -p ~/rar_logs"
  start="$start; if [ -f ~/rar_logs/train.pid ] && kill -0 \"\$(cat ~/rar_logs/train.pid)\" 2>/dev/null;"
  start="$start then echo \"rar_jax.main already runs on \$(hostname) (tpu.sh stop)\" >&2; exit 1; fi"
  # RAR_DISTRIBUTED=1: jax.distributed.initialize() detects the slice from the TPU metadata.
  start="$start; RAR_DISTRIBUTED=1 LIBTPU_INIT_ARGS=$(q "$LIBTPU_INIT_ARGS") nohup ~/rar_venv/bin/python $(q "${main[@]}")"
  start="$start >> ~/rar_logs/worker-\$(hostname).log 2>&1 < /dev/null & echo \$! > ~/rar_logs/train.pid"
  local node
  for node in "${nodes[@]}"; do ssh_all "$node" "$start"; done
}

cmd_stop() {
  need PROJECT ZONE TPU_NAME
  local stop="if [ -f ~/rar_logs/train.pid ]; then kill \"\$(cat ~/rar_logs/train.pid)\" 2>/dev/null || true;"
  stop="$stop rm -f ~/rar_logs/train.pid; fi"
  local node
  for node in "${nodes[@]}"; do ssh_all "$node" "$stop"; done
}

cmd_logs() {
  need PROJECT ZONE TPU_NAME
  local worker="${args[0]:-0}"
  [[ $worker == all || $worker =~ ^[0-9]+$ ]] || die "logs takes a worker number or 'all', got '$worker'"
  local tail="tail -n $LOG_LINES"
  if [[ $follow == 1 ]]; then tail="$tail -F"; fi
  run gcloud compute tpus tpu-vm ssh "$node_of_slice" "${where[@]}" "--worker=$worker" \
    --command "$tail ~/rar_logs/worker-*.log"
}

cmd_copy() {
  need WORKDIR
  local what="${args[0]:-}" dest="${args[1]:-.}"
  [[ -n $what ]] || die "copy needs what to copy: a step number, or a path under WORKDIR"
  if [[ $what =~ ^[0-9]+$ ]]; then what="checkpoints/$what"; fi
  if [[ $WORKDIR == gs://* ]]; then
    run gcloud storage cp -r "${WORKDIR%/}/$what" "$dest"
  else
    need PROJECT ZONE TPU_NAME
    # scp paths on the worker are relative to the home directory; train runs in ~/rar_jax.
    local path="${WORKDIR%/}/$what"
    case "$path" in
      /*) ;;
      \~/*) path=${path#\~/} ;;
      *) path="rar_jax/$path" ;;
    esac
    run gcloud compute tpus tpu-vm scp --recurse "$node_of_slice:$path" "$dest" "${where[@]}" --worker=0
  fi
}

cmd_status() {
  need PROJECT ZONE TPU_NAME
  if [[ $QUEUED == 1 ]]; then
    run gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE_ID" "${where[@]}"
  else
    run gcloud compute tpus tpu-vm describe "$TPU_NAME" "${where[@]}"
  fi
}

cmd_delete() {
  need PROJECT ZONE TPU_NAME
  if [[ $QUEUED == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE_ID" "${where[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${where[@]}" --quiet
  fi
}

case "$command" in
  create | setup | train | stop | logs | copy | status | delete) "cmd_$command" ;;
  *) die "unknown command '$command' (see --help)" ;;
esac
