#!/usr/bin/env bash
# Container image: build it from the repository's Dockerfile and push it to Artifact Registry.
#
#   export IMAGE_REPO=us-docker.pkg.dev/my-project/rar      # an Artifact Registry repository
#   bash launch/image.sh build                               # ACCELERATOR=gpu for jax[cuda12]
#   bash launch/image.sh push
#   export IMAGE=$(bash launch/image.sh name)                # what launch/xpk.sh runs
#
# --dry-run (or DRY_RUN=1) prints every command, one per line, exactly as it would run them, and
# runs nothing. `bash launch/image.sh --help` lists the commands and settings.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=launch/common.sh
source "$root/launch/common.sh"

usage() {
  cat <<'EOF_USAGE'
usage: bash launch/image.sh [options] COMMAND

commands
  build               docker build the Dockerfile at the repository root (context: the root)
  push                let docker log in to the registry through gcloud, then docker push
  name                print the full image name (REPO/NAME:TAG)

settings (flag or environment variable; a flag wins)
  --repo R            IMAGE_REPO     registry path, e.g. us-docker.pkg.dev/my-project/rar (required)
  --name N            IMAGE_NAME     image name (default rar_jax)
  --tag T             IMAGE_TAG      default: ACCELERATOR-<git commit>, plus -dirty when the
                                     checkout has uncommitted changes
  --accelerator A     ACCELERATOR    tpu (jax[tpu]) or gpu (jax[cuda12]); default tpu
  --dry-run           DRY_RUN=1      print the commands, run nothing
EOF_USAGE
}

flag_of() {
  case "$1" in
    IMAGE_REPO) echo --repo ;;
    IMAGE_NAME) echo --name ;;
    IMAGE_TAG) echo --tag ;;
    *) echo "--$(echo "$1" | tr '[:upper:]_' '[:lower:]-')" ;;
  esac
}

IMAGE_REPO="${IMAGE_REPO:-}"
IMAGE_NAME="${IMAGE_NAME:-rar_jax}"
IMAGE_TAG="${IMAGE_TAG:-}"
ACCELERATOR="${ACCELERATOR:-tpu}"
DRY_RUN="${DRY_RUN:-0}"

command=""
while (($#)); do
  split_option "$@"
  case "$opt" in
    --repo | --name | --tag | --accelerator)
      if ((step == 2 && $# < 2)); then die "$opt needs a value"; fi
      case "$opt" in
        --repo) IMAGE_REPO=$value ;;
        --name) IMAGE_NAME=$value ;;
        --tag) IMAGE_TAG=$value ;;
        --accelerator) ACCELERATOR=$value ;;
      esac
      shift "$step"
      ;;
    --dry-run) DRY_RUN=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      [[ -z $command ]] || die "one command at a time (got '$command' and '$1')"
      command=$1
      shift
      ;;
  esac
done

if [[ -z $command ]]; then
  usage >&2
  die "no command given"
fi
[[ $ACCELERATOR == tpu || $ACCELERATOR == gpu ]] || die "ACCELERATOR must be tpu or gpu, got '$ACCELERATOR'"

# The default tag names the commit, so that a workload records exactly which code it ran.
default_tag() {
  local commit
  commit=$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null) ||
    die "IMAGE_TAG is not set and $root is not a git checkout (pass --tag)"
  if [[ -n $(git -C "$root" status --porcelain 2>/dev/null) ]]; then commit="$commit-dirty"; fi
  echo "$ACCELERATOR-$commit"
}

image() {
  need IMAGE_REPO
  echo "${IMAGE_REPO%/}/$IMAGE_NAME:${IMAGE_TAG:-$(default_tag)}"
}

case "$command" in
  name) image ;;
  build)
    ref=$(image)
    run docker build --build-arg "ACCELERATOR=$ACCELERATOR" --tag "$ref" --file "$root/Dockerfile" "$root"
    ;;
  push)
    ref=$(image)
    run gcloud auth configure-docker "${IMAGE_REPO%%/*}" --quiet
    run docker push "$ref"
    ;;
  *) die "unknown command '$command' (see --help)" ;;
esac
