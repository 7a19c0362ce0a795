#!/usr/bin/env bash
# Runs a single-host tool (encode_prompts, encode_videos, sample, convert) on worker 0 only,
# restricted to that worker's own chips, detached with a log like run_stage.sh.
#   TPU_NAME=cf-v5p-64 ZONE=us-east5-a PROJECT=my-gcp-project launch/tpu/run_host0.sh sample \
#     --checkpoint gs://my-bucket/cf_jax/runs/dmd_chunkwise/export/generator_ema \
#     --prompts /gcs/my-bucket/cf_jax/prompts/eval.txt --embeddings /gcs/my-bucket/cf_jax/data/eval_prompt_embeds \
#     --frames_per_block 3 --vae_checkpoint /gcs/my-bucket/cf_jax/ckpt/Wan2.1_VAE.pth --out /gcs/my-bucket/cf_jax/samples/dmd_chunkwise
# <module>: a cf_jax module name (sample, encode_prompts, ...). Nothing else may hold worker 0's
# TPU meanwhile (a training run on the slice does). Env (besides common.sh): RUN_NAME (default:
# the module), FOLLOW / WAIT as run_stage.sh, HOST0_TPU_ENV: the TPU topology variables that make
# one process of a multi-host slice use only its 4 local chips (default below; "" on a
# single-host slice).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
(($# >= 1)) || die "usage: launch/tpu/run_host0.sh <module> [args ...]"
require TPU_NAME ZONE PROJECT
module=${1#cf_jax.}
shift
name=${RUN_NAME:-$module}
read -r -a host_env <<< "${HOST0_TPU_ENV-TPU_CHIPS_PER_PROCESS_BOUNDS=2,2,1 TPU_PROCESS_BOUNDS=1,1,1 TPU_VISIBLE_CHIPS=0,1,2,3}"

TPU_ENV_WORDS+=("${host_env[@]}")
start_detached 0 "$name" .venv/bin/python -m "cf_jax.$module" "$@"
after_start "$name"
