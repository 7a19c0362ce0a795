#!/usr/bin/env bash
# One node of a GPU run: one process driving all of this node's GPUs. Start it on every node by hand
# (or stage.sbatch starts it through srun), same arguments everywhere, NODE_RANK 0..NUM_NODES-1;
# COORDINATOR is HOST:PORT of node 0, reachable from every node.
#   NODE_RANK=0 NUM_NODES=2 COORDINATOR=10.0.0.1:12355 launch/gpu/run_node.sh \
#     ar_diffusion_chunkwise /shared/cf_jax/runs/ar_diffusion_chunkwise --config.data.path=/shared/cf_jax/data/latents
#   launch/gpu/run_node.sh toy /tmp/toy                       # one node: NUM_NODES defaults to 1
# Env: PYTHON_BIN (default .venv/bin/python, installed with `pip install -e . "jax[cuda13]"`),
# XLA_FLAGS (kept; the latency-hiding scheduler flag below is added unless XLA_FLAGS sets it).
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
(($# >= 2)) || die "usage: [NODE_RANK=i NUM_NODES=n COORDINATOR=host:port] launch/gpu/run_node.sh <config> <workdir> [--config.key=value ...]"
cd "$REPO_ROOT"
config=$(config_path "$1")
workdir=$2
shift 2
NUM_NODES=${NUM_NODES:-1}
[[ "$NUM_NODES" =~ ^[1-9][0-9]*$ ]] || die "NUM_NODES=$NUM_NODES is not a positive integer"
cmd=("${PYTHON_BIN:-.venv/bin/python}" -m "$(module_for "$config")" --config "$config" --workdir "$workdir")
if ((NUM_NODES > 1)); then
  require NODE_RANK COORDINATOR
  if ! [[ "$NODE_RANK" =~ ^[0-9]+$ ]] || ((NODE_RANK >= NUM_NODES)); then
    die "NODE_RANK=$NODE_RANK must be in 0..$((NUM_NODES - 1))"
  fi
  [[ "$COORDINATOR" == *:* ]] || die "COORDINATOR=$COORDINATOR must be HOST:PORT"
  cmd+=(--multihost --coordinator_address="$COORDINATOR" --num_processes="$NUM_NODES" --process_id="$NODE_RANK")
fi

# Overlap collectives with compute (JAX GPU performance tips; the NVIDIA JAX images set it too).
if [[ "${XLA_FLAGS:-}" != *xla_gpu_enable_latency_hiding_scheduler* ]]; then
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_latency_hiding_scheduler=true"
fi
is_dry && echo "# node ${NODE_RANK:-0}/$NUM_NODES on $(hostname), XLA_FLAGS=$XLA_FLAGS"
run "${cmd[@]}" "$@"
