#!/usr/bin/env bash
# Deletes the slice (the queued resource and its TPU VMs, or the plain TPU VM). Workdirs and data in
# the bucket stay; a stage rerun on a new slice resumes from its workdir.
#   TPU_NAME=cf-v5p-64 ZONE=us-east5-a PROJECT=my-gcp-project launch/tpu/delete.sh
#   QUEUED=0 TPU_NAME=cf-v6e-64 ZONE=us-east1-d PROJECT=my-gcp-project launch/tpu/delete.sh
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
require TPU_NAME ZONE PROJECT
if [[ "$QUEUED" == 1 ]]; then
  # --force also deletes the TPU VMs the queued resource holds.
  run gcloud compute tpus queued-resources delete "$QR_NAME" --zone="$ZONE" --project="$PROJECT" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --quiet
fi
echo "# left in place: the bucket. List what is still billed with:"
echo "#   gcloud compute tpus queued-resources list --zone=$ZONE --project=$PROJECT"
echo "#   gcloud compute tpus tpu-vm list --zone=$ZONE --project=$PROJECT"
