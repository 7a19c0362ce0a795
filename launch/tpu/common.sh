# launch/tpu/common.sh: settings and helpers for the Cloud TPU scripts; sourced, never run.
#
# Required for every script: TPU_NAME, ZONE, PROJECT. create.sh also needs ACCELERATOR_TYPE
# (v5p-64, v6e-64, ...) and RUNTIME_VERSION (derived from ACCELERATOR_TYPE when unset).
# Optional:
#   DRY_RUN=1        print every gcloud command instead of running it
#   QUEUED=1         the slice is a queued resource named $QR_NAME (default); QUEUED=0: a plain TPU VM
#   QR_NAME          queued-resource id (default: $TPU_NAME-qr)
#   SPOT=1           spot capacity (create.sh)
#   REPO_URL/REPO_REF  setup.sh clones this repository at this ref; unset: copies the local checkout
#   REMOTE_DIR       checkout on each worker, relative to its home (default: cf_jax)
#   SSH_FLAGS        extra `gcloud ... tpu-vm ssh` flags, e.g. "--internal-ip" or "--tunnel-through-iap"
#   TPU_ENV          VAR=VALUE words set for the launched program, e.g. "LIBTPU_INIT_ARGS=..."
#   COMPILE_CACHE    JAX persistent compilation cache (gs://... works); saves compile time on restarts
# shellcheck shell=bash

# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

QUEUED=${QUEUED:-1}
SPOT=${SPOT:-0}
REMOTE_DIR=${REMOTE_DIR:-cf_jax}
QR_NAME=${QR_NAME:-${TPU_NAME:+$TPU_NAME-qr}}
read -r -a SSH_EXTRA <<< "${SSH_FLAGS:-}"
read -r -a TPU_ENV_WORDS <<< "${TPU_ENV:-}"

# The Cloud TPU software version for JAX on each generation (cloud.google.com/tpu/docs/runtimes).
default_runtime_version() {
  case "$1" in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v4-*|v3-*|v2-*) echo tpu-ubuntu2204-base ;;
    *) return 1 ;;
  esac
}

# tpu_ssh WORKER COMMAND: run the shell COMMAND on worker WORKER (0, 1, ... or all).
tpu_ssh() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
    --worker="$1" "${SSH_EXTRA[@]}" --command="$2"
}

# Same, but the output is captured by the caller and never printed as a dry run.
tpu_ssh_quiet() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
    --worker="$1" "${SSH_EXTRA[@]}" --command="$2" 2>/dev/null
}

# remote WORKER ARGS...: launch/tpu/remote.sh ARGS... inside the checkout on WORKER.
remote() {
  local worker=$1; shift
  tpu_ssh "$worker" "cd $(shquote "$REMOTE_DIR") && bash launch/tpu/remote.sh $(qargs "$@")"
}

# start_detached WORKER NAME CMD...: start CMD under nohup on WORKER (logs/NAME.log there).
start_detached() {
  local worker=$1 name=$2; shift 2
  local envs=("${TPU_ENV_WORDS[@]}")
  [[ -n "${COMPILE_CACHE:-}" ]] && envs+=("JAX_COMPILATION_CACHE_DIR=$COMPILE_CACHE")
  remote "$worker" start "$name" env "${envs[@]}" "$@"
}

# follow NAME: stream worker 0's log of run NAME (Ctrl-C stops the stream, not the run).
follow() {
  tpu_ssh 0 "tail -n +1 -F $(shquote "$REMOTE_DIR/logs/$1.log")"
}

# wait_for NAME: poll worker 0 until run NAME ends; fail unless it exited 0.
wait_for() {
  local name=$1 status misses=0 poll_cmd
  poll_cmd="cd $(shquote "$REMOTE_DIR") && bash launch/tpu/remote.sh status $(shquote "$name")"
  if is_dry; then
    echo "# then, every ${POLL_S:-60}s until it ends:"
    tpu_ssh 0 "$poll_cmd"
    return 0
  fi
  echo "waiting for $name on $TPU_NAME (worker 0; launch/tpu/logs.sh $name to watch)"
  while :; do
    if status=$(tpu_ssh_quiet 0 "$poll_cmd"); then
      misses=0
      status=${status//[$'\r\n ']/}
      case "$status" in
        running) ;;
        0) echo "$name finished"; return 0 ;;
        dead) die "$name died without an exit status on worker 0 (killed or preempted?); launch/tpu/logs.sh $name" ;;
        none) die "$name was never started on worker 0" ;;
        *) die "$name failed on worker 0 (exit $status); launch/tpu/logs.sh $name all" ;;
      esac
    else
      misses=$((misses + 1))
      (( misses < ${MAX_SSH_MISSES:-10} )) || die "cannot reach worker 0 of $TPU_NAME (deleted or preempted?)"
    fi
    sleep "${POLL_S:-60}"
  done
}

# after_start NAME: what run_stage.sh / run_host0.sh do once NAME is started (WAIT / FOLLOW).
after_start() {
  if [[ "${WAIT:-0}" == 1 ]]; then
    wait_for "$1"
  elif [[ "${FOLLOW:-1}" == 1 ]]; then
    echo "# following worker 0's log; Ctrl-C stops following, the run goes on (launch/tpu/logs.sh $1)" >&2
    follow "$1"
  fi
}
