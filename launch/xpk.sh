#!/usr/bin/env bash
# Production training on GKE through XPK (AI-Hypercomputer/xpk): the image that launch/image.sh
# pushed runs as a JobSet workload on TPU slices; JobSet restarts it after a failure or a
# preemption (--max-restarts) and the job resumes from the newest checkpoint in its gs:// workdir.
# Run it where xpk, gcloud and kubectl are set up. docs/guides/tpu.md has the whole recipe.
#
#   export PROJECT=my-project ZONE=us-east5-a CLUSTER=my-cluster IMAGE=$(bash launch/image.sh name)
#   bash launch/xpk.sh mount --bucket my-bucket          # gcsfuse at /gcs/my-bucket in every pod
#   WORKLOAD=rar-xl WORKDIR=gs://my-bucket/rar_xl bash launch/xpk.sh create --tpu-type v5p-128 \
#       --config configs/imagenet.py:XL -- --config.data.dir=gs://my-bucket/in1k_tokens
#   bash launch/xpk.sh logs --follow --workload rar-xl
#   bash launch/xpk.sh sweep --config configs/imagenet.py:L --workdir gs://my-bucket/anneal \
#       --prefix anneal --tpu-type v5p-64 -- --config.data.dir=gs://my-bucket/in1k_cf
#
# --dry-run (or DRY_RUN=1) prints every command, one per line, exactly as it would run them, and
# runs nothing. `bash launch/xpk.sh --help` lists the commands and settings.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=launch/common.sh
source "$root/launch/common.sh"

APP_DIR=/app # the Dockerfile's WORKDIR: the code and configs/

usage() {
  cat <<'EOF_USAGE'
usage: bash launch/xpk.sh [options] COMMAND [args] [-- rar_jax.main flags]

commands
  create [-- FLAGS]   create the workload: IMAGE on NUM_SLICES slices of TPU_TYPE, running
                      python3 -m rar_jax.main --config=CONFIG --workdir=WORKDIR FLAGS
  sweep [-- FLAGS]    one workload per point of CONFIG's get_hyper (rar_jax/tools/sweeps.py),
                      named PREFIX-<point>, each in WORKDIR/<point name>
  list                the cluster's workloads (only WORKLOAD's when it is set)
  logs [N|all]        kubectl logs of worker N (default 0: process 0, which logs the progress)
                      of slice SLICE, or of every pod (--follow, --lines)
  delete              delete the workload
  mount               attach the gcsfuse bucket DATA_BUCKET to the cluster, read-only, mounted
                      at /gcs/DATA_BUCKET in every workload (data.dir=gs://... resolves there)

settings (flag or environment variable; a flag wins)
  --project P         PROJECT            Google Cloud project (required)
  --zone Z            ZONE               zone of the cluster's TPUs (required)
  --cluster C         CLUSTER            GKE cluster made by `xpk cluster create` (required)
  --workload W        WORKLOAD           workload name: a-z, 0-9, -, at most 40 characters
  --image I           IMAGE              container image (bash launch/image.sh name)
  --tpu-type T        TPU_TYPE           e.g. v5p-128, v6e-256 (per slice)
  --num-slices N      NUM_SLICES         slices (default 1; > 1 adds --config.mesh.dcn_data=N)
  --max-restarts K    MAX_RESTARTS       JobSet restarts after a failure or preemption, each
                                         resuming from the newest checkpoint (default 3)
  --priority P        PRIORITY           very-low, low, medium (default), high, very-high
  --spot              SPOT=1             Spot capacity
  --grace-seconds S   GRACE_SECONDS      time between SIGTERM and kill, for the checkpoint the
                                         job writes on SIGTERM (default 300)
  --workdir W         WORKDIR            gs://bucket/path (sweep: the base of the runs' workdirs)
  --config C          CONFIG             default configs/imagenet.py:B
  --prefix P          PREFIX             sweep: workload name prefix (default rar)
  --slice S           SLICE              logs: the slice (default 0)
  --lines N           LOG_LINES          logs: lines to show (default 100)
  --follow                               logs keeps following
  --bucket B          DATA_BUCKET        mount: the bucket of the ArrayRecord shards
  --dry-run           DRY_RUN=1          print the commands, run nothing
  LIBTPU_INIT_ARGS    replaces the libtpu flags of launch/common.sh ("" for none)
  XPK                 the xpk command (default xpk)
  RAR_PYTHON          Python with this package, for sweep (default python3)
EOF_USAGE
}

flag_of() {
  case "$1" in
    LOG_LINES) echo --lines ;;
    DATA_BUCKET) echo --bucket ;;
    *) echo "--$(echo "$1" | tr '[:upper:]_' '[:lower:]-')" ;;
  esac
}

PROJECT="${PROJECT:-}"
ZONE="${ZONE:-}"
CLUSTER="${CLUSTER:-}"
WORKLOAD="${WORKLOAD:-}"
IMAGE="${IMAGE:-}"
TPU_TYPE="${TPU_TYPE:-}"
NUM_SLICES="${NUM_SLICES:-1}"
MAX_RESTARTS="${MAX_RESTARTS:-3}"
PRIORITY="${PRIORITY:-medium}"
SPOT="${SPOT:-0}"
GRACE_SECONDS="${GRACE_SECONDS:-300}"
WORKDIR="${WORKDIR:-}"
CONFIG="${CONFIG:-configs/imagenet.py:B}"
PREFIX="${PREFIX:-rar}"
SLICE="${SLICE:-0}"
LOG_LINES="${LOG_LINES:-100}"
DATA_BUCKET="${DATA_BUCKET:-}"
LIBTPU_INIT_ARGS="${LIBTPU_INIT_ARGS-$DEFAULT_LIBTPU_ARGS}"
XPK="${XPK:-xpk}"
RAR_PYTHON="${RAR_PYTHON:-python3}"
DRY_RUN="${DRY_RUN:-0}"
follow=0

command=""
args=()
extra=() # flags for rar_jax.main, after --
while (($#)); do
  split_option "$@"
  case "$opt" in
    --project | --zone | --cluster | --workload | --image | --tpu-type | --num-slices | \
      --max-restarts | --priority | --grace-seconds | --workdir | --config | --prefix | --slice | \
      --lines | --bucket)
      if ((step == 2 && $# < 2)); then die "$opt needs a value"; fi
      case "$opt" in
        --project) PROJECT=$value ;;
        --zone) ZONE=$value ;;
        --cluster) CLUSTER=$value ;;
        --workload) WORKLOAD=$value ;;
        --image) IMAGE=$value ;;
        --tpu-type) TPU_TYPE=$value ;;
        --num-slices) NUM_SLICES=$value ;;
        --max-restarts) MAX_RESTARTS=$value ;;
        --priority) PRIORITY=$value ;;
        --grace-seconds) GRACE_SECONDS=$value ;;
        --workdir) WORKDIR=$value ;;
        --config) CONFIG=$value ;;
        --prefix) PREFIX=$value ;;
        --slice) SLICE=$value ;;
        --lines) LOG_LINES=$value ;;
        --bucket) DATA_BUCKET=$value ;;
      esac
      shift "$step"
      ;;
    --spot) SPOT=1 && shift ;;
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
[[ $NUM_SLICES =~ ^[1-9][0-9]*$ ]] || die "NUM_SLICES must be a positive integer, got '$NUM_SLICES'"
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "MAX_RESTARTS must be a number, got '$MAX_RESTARTS'"
[[ $GRACE_SECONDS =~ ^[0-9]+$ ]] || die "GRACE_SECONDS must be a number, got '$GRACE_SECONDS'"
[[ $SLICE =~ ^[0-9]+$ && $SLICE -lt $NUM_SLICES ]] || die "SLICE must be in [0, $NUM_SLICES)"
[[ $LOG_LINES =~ ^[0-9]+$ ]] || die "LOG_LINES must be a number, got '$LOG_LINES'"
case "$PRIORITY" in
  very-low | low | medium | high | very-high) ;;
  *) die "PRIORITY must be very-low, low, medium, high or very-high, got '$PRIORITY'" ;;
esac

where=("--cluster=$CLUSTER" "--project=$PROJECT" "--zone=$ZONE")

valid_name() {
  [[ $1 =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ && ${#1} -le 40 ]] ||
    die "workload name '$1' must be a-z, 0-9 and -, start with a letter and have at most 40 characters"
}

# create_workload NAME MAIN_ARGS...: one workload running rar_jax.main with these arguments
# (--config=..., --workdir=..., then overrides).
create_workload() {
  local name=$1
  shift
  valid_name "$name"
  local main=(python3 -m rar_jax.main "$1" "$2")
  if ((NUM_SLICES > 1)); then main+=("--config.mesh.dcn_data=$NUM_SLICES"); fi
  main+=("${@:3}")
  # RAR_DISTRIBUTED=1: jax.distributed.initialize() finds the slice (and the other slices) from
  # the environment GKE gives each pod; every restart starts here and resumes the workdir.
  local job
  job="cd $APP_DIR && RAR_DISTRIBUTED=1 LIBTPU_INIT_ARGS=$(q "$LIBTPU_INIT_ARGS") $(q "${main[@]}")"
  local capacity=()
  if [[ $SPOT == 1 ]]; then capacity=(--spot); fi
  local restarts=("--max-restarts=$MAX_RESTARTS")
  if ((MAX_RESTARTS > 0)); then restarts+=(--restart-on-user-code-failure); fi
  run "$XPK" workload create "${where[@]}" "--workload=$name" "--docker-image=$IMAGE" \
    "--tpu-type=$TPU_TYPE" "--num-slices=$NUM_SLICES" "${restarts[@]}" "--priority=$PRIORITY" \
    "--termination-grace-period-seconds=$GRACE_SECONDS" ${capacity[@]+"${capacity[@]}"} \
    --command "$job"
}

check_workdir() {
  [[ $WORKDIR == gs://* ]] ||
    die "WORKDIR=$WORKDIR is not gs://: every pod and every restart must see the same checkpoints"
}

cmd_create() {
  need PROJECT ZONE CLUSTER WORKLOAD IMAGE TPU_TYPE WORKDIR CONFIG
  check_workdir
  create_workload "$WORKLOAD" "--config=$CONFIG" "--workdir=$WORKDIR" ${extra[@]+"${extra[@]}"}
}

cmd_sweep() {
  need PROJECT ZONE CLUSTER IMAGE TPU_TYPE WORKDIR CONFIG
  check_workdir
  # One line per point: the workload name, then the rar_jax.main arguments (shell-quoted).
  local lines line
  lines=$(cd "$root" && "$RAR_PYTHON" -m rar_jax.commands.xpk_sweep "--config=$CONFIG" \
    "--workdir=$WORKDIR" "--prefix=$PREFIX" -- ${extra[@]+"${extra[@]}"}) ||
    die "could not expand the sweep of $CONFIG (see above)"
  while IFS= read -r line; do
    local point=()
    eval "point=($line)" # the quoting of Python's shlex.join
    create_workload "${point[@]}"
  done <<<"$lines"
}

cmd_list() {
  need PROJECT ZONE CLUSTER
  local filter=()
  if [[ -n $WORKLOAD ]]; then filter=("--filter-by-job=$WORKLOAD"); fi
  run "$XPK" workload list "${where[@]}" ${filter[@]+"${filter[@]}"}
}

cmd_logs() {
  need PROJECT ZONE CLUSTER WORKLOAD
  local worker="${args[0]:-0}"
  [[ $worker == all || $worker =~ ^[0-9]+$ ]] || die "logs takes a worker number or 'all', got '$worker'"
  # The pods of a JobSet carry its name; job-index is the slice, completion index the worker.
  local selector="jobset.sigs.k8s.io/jobset-name=$WORKLOAD"
  if [[ $worker != all ]]; then
    selector="$selector,jobset.sigs.k8s.io/job-index=$SLICE,batch.kubernetes.io/job-completion-index=$worker"
  fi
  local options=("--selector=$selector" --container=jax-tpu "--tail=$LOG_LINES" --prefix)
  options+=(--max-log-requests=1000)
  if [[ $follow == 1 ]]; then options+=(--follow); fi
  run gcloud container clusters get-credentials "$CLUSTER" "--project=$PROJECT" "--location=${ZONE%-*}"
  run kubectl logs "${options[@]}"
}

cmd_delete() {
  need PROJECT ZONE CLUSTER WORKLOAD
  run "$XPK" workload delete "${where[@]}" "--workload=$WORKLOAD" --force
}

cmd_mount() {
  need PROJECT ZONE CLUSTER DATA_BUCKET
  local storage=${DATA_BUCKET//[^a-z0-9-]/-}
  run "$XPK" storage attach "$storage" --type=gcsfuse "--bucket=$DATA_BUCKET" "${where[@]}" \
    "--mount-point=/gcs/$DATA_BUCKET" --readonly=true --auto-mount=true
}

case "$command" in
  create | sweep | list | logs | delete | mount) "cmd_$command" ;;
  *) die "unknown command '$command' (see --help)" ;;
esac
