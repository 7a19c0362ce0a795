#!/usr/bin/env bash
# Stops a run (default: every run started by these scripts) on every worker; the slice stays up.
#   TPU_NAME=cf-v5p-64 ZONE=us-east5-a PROJECT=my-gcp-project launch/tpu/stop.sh ar_diffusion_chunkwise
# A stopped training run resumes from its last checkpoint when run_stage.sh is run again.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
require TPU_NAME ZONE PROJECT
remote all stop "$@"
