#!/usr/bin/env bash
# Streams a run's log from one worker, or shows status and last lines on every worker.
#   TPU_NAME=cf-v5p-64 ZONE=us-east5-a PROJECT=my-gcp-project launch/tpu/logs.sh                  # worker 0, latest run, follow
#   TPU_NAME=... launch/tpu/logs.sh ar_diffusion_chunkwise 3      # worker 3's log of that run, follow
#   TPU_NAME=... launch/tpu/logs.sh ar_diffusion_chunkwise all    # every worker: status + last LINES (20) lines
# Metrics also go to <workdir>/metrics.jsonl and <workdir>/tensorboard (tensorboard --logdir gs://...).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
require TPU_NAME ZONE PROJECT
name=${1:-latest}
worker=${2:-0}
if [[ "$worker" == all ]]; then
  args=(show)
  [[ "$name" != latest ]] && args+=("$name" "${LINES:-20}")
  remote all "${args[@]}"
else
  tpu_ssh "$worker" "tail -n +1 -F $(shquote "$REMOTE_DIR/logs/$name.log")"
fi
