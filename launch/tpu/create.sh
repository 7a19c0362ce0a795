#!/usr/bin/env bash
# Creates the TPU slice and waits until it is usable: a queued resource (default) or a plain TPU VM.
#   TPU_NAME=cf-v5p-64 ZONE=us-east5-a PROJECT=my-gcp-project ACCELERATOR_TYPE=v5p-64 SPOT=1 launch/tpu/create.sh
#   QUEUED=0 TPU_NAME=cf-v6e-64 ZONE=us-east1-d PROJECT=my-gcp-project ACCELERATOR_TYPE=v6e-64 launch/tpu/create.sh
# Env (besides common.sh): RUNTIME_VERSION (default from ACCELERATOR_TYPE), SPOT=1, RESERVED=1 (use
# the project's reservation), VALID_UNTIL (queued only: give up after this long, e.g. 6h),
# SERVICE_ACCOUNT, WAIT_ACTIVE=0 (return without waiting), POLL_S (default 30).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
require TPU_NAME ZONE PROJECT ACCELERATOR_TYPE
RUNTIME_VERSION=${RUNTIME_VERSION:-$(default_runtime_version "$ACCELERATOR_TYPE")} \
  || die "RUNTIME_VERSION is not set and $ACCELERATOR_TYPE has no default (e.g. export RUNTIME_VERSION=v2-alpha-tpuv5)"

flags=(--zone="$ZONE" --project="$PROJECT" --accelerator-type="$ACCELERATOR_TYPE")
[[ "$SPOT" == 1 ]] && flags+=(--spot)
[[ "${RESERVED:-0}" == 1 ]] && flags+=(--reserved)
[[ -n "${SERVICE_ACCOUNT:-}" ]] && flags+=(--service-account="$SERVICE_ACCOUNT")

# wait_state DESCRIBE_CMD... : poll until the state is $want; fail on a dead end.
wait_state() {
  local want=$1 state last=""; shift
  if is_dry; then echo "# then, every ${POLL_S:-30}s until it prints $want:"; run "$@"; return 0; fi
  while :; do
    state=$("$@" 2>/dev/null || echo UNKNOWN)
    [[ "$state" != "$last" ]] && echo "$(date +%T) $state"
    last=$state
    case "$state" in
      "$want") return 0 ;;
      FAILED|SUSPENDED|SUSPENDING|PREEMPTED|TERMINATED) die "the slice is $state; see launch/README.md (delete.sh, then create.sh again)" ;;
    esac
    sleep "${POLL_S:-30}"
  done
}

if [[ "$QUEUED" == 1 ]]; then
  [[ -n "${VALID_UNTIL:-}" ]] && flags+=(--valid-until-duration="$VALID_UNTIL")
  run gcloud compute tpus queued-resources create "$QR_NAME" --node-id="$TPU_NAME" \
    --runtime-version="$RUNTIME_VERSION" "${flags[@]}"
  [[ "${WAIT_ACTIVE:-1}" == 1 ]] || exit 0
  echo "queued $QR_NAME; waiting for ACTIVE (WAITING_FOR_RESOURCES can last hours; Ctrl-C is safe, the request stays queued)"
  wait_state ACTIVE gcloud compute tpus queued-resources describe "$QR_NAME" --zone="$ZONE" \
    --project="$PROJECT" --format='value(state.state)'
else
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --version="$RUNTIME_VERSION" "${flags[@]}"
  [[ "${WAIT_ACTIVE:-1}" == 1 ]] || exit 0
  wait_state READY gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" \
    --project="$PROJECT" --format='value(state)'
fi
echo "$TPU_NAME is up; next: launch/tpu/setup.sh"
