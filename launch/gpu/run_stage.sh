#!/usr/bin/env bash
# Submits one stage to Slurm on NODES GPU nodes (launch/gpu/stage.sbatch); the log is logs/cf-<name>-<jobid>.out.
#   NODES=4 PARTITION=gpu launch/gpu/run_stage.sh ar_diffusion_chunkwise /shared/cf_jax/runs/ar_diffusion_chunkwise \
#     --config.init.generator=/shared/cf_jax/ckpt/wan_1_3b --config.data.path=/shared/cf_jax/data/latents
# Env: NODES (2), GPUS_PER_NODE (8; "" leaves it to the cluster's default), PARTITION, ACCOUNT,
# TIME (e.g. 48:00:00), QOS, SBATCH_FLAGS (more sbatch flags), WAIT=1 (sbatch --wait: return when the
# job ends, with its status), DRY_RUN=1. The workdir must be visible from every node (shared
# filesystem, or gs:// with credentials on the nodes); a resubmitted job resumes from it.
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
(($# >= 2)) || die "usage: launch/gpu/run_stage.sh <config> <workdir> [--config.key=value ...]"
cd "$REPO_ROOT"
config=$(config_path "$1")
name=$(config_name "$config")
flags=(--nodes="${NODES:-2}" --job-name="cf-$name" --output="logs/%x-%j.out" --chdir="$REPO_ROOT")
[[ -n "${GPUS_PER_NODE-8}" ]] && flags+=(--gpus-per-node="${GPUS_PER_NODE-8}")
[[ -n "${PARTITION:-}" ]] && flags+=(--partition="$PARTITION")
[[ -n "${ACCOUNT:-}" ]] && flags+=(--account="$ACCOUNT")
[[ -n "${TIME:-}" ]] && flags+=(--time="$TIME")
[[ -n "${QOS:-}" ]] && flags+=(--qos="$QOS")
[[ "${WAIT:-0}" == 1 ]] && flags+=(--wait)
read -r -a extra <<< "${SBATCH_FLAGS:-}"
run mkdir -p logs
run sbatch "${flags[@]}" "${extra[@]}" launch/gpu/stage.sbatch "$config" "${@:2}"
