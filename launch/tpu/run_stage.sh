#!/usr/bin/env bash
# Runs one stage on every worker of the slice (--multihost), detached with nohup and a log file on
# each worker (~/cf_jax/logs/<name>.log), then follows worker 0's log.
#   TPU_NAME=cf-v5p-64 ZONE=us-east5-a PROJECT=my-gcp-project launch/tpu/run_stage.sh \
#     ar_diffusion_chunkwise gs://my-bucket/cf_jax/runs/ar_diffusion_chunkwise \
#     --config.init.generator=gs://my-bucket/cf_jax/ckpt/wan_1_3b --config.data.path=/gcs/my-bucket/cf_jax/data/latents
# <config>: a name in configs/ (ar_diffusion_chunkwise, dmd_framewise:tiny, ode_data_chunkwise, ...) or
# a path; ode_data_* runs cf_jax.generate_ode_data, the others cf_jax.train, with splash attention. Restarting the same
# command on the same workdir resumes from its latest checkpoint.
# Env (besides common.sh): RUN_NAME (default: the config's name), FOLLOW=0 (return at once),
# WAIT=1 (wait for the end and exit with the stage's status; what full_recipe.sh uses), MULTIHOST=0.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
(($# >= 2)) || die "usage: launch/tpu/run_stage.sh <config> <workdir> [--config.key=value ...]"
require TPU_NAME ZONE PROJECT
config=$(config_path "$1")
workdir=$2
shift 2
name=${RUN_NAME:-$(config_name "$config")}
# The configs' attention_backend "auto" is splash on TPU; --config.attention_backend=... overrides.
cmd=(.venv/bin/python -m "$(module_for "$config")" --config "$config" --workdir "$workdir")
[[ "${MULTIHOST:-1}" == 1 ]] && cmd+=(--multihost)

start_detached all "$name" "${cmd[@]}" "$@"
after_start "$name"
