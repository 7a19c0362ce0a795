#!/usr/bin/env bash
# The whole Causal Forcing pipeline on one TPU slice, in order, each step waiting for the one before:
#   1 encode prompts -> 2 stage 1 AR diffusion -> 3 ODE pairs -> 4 stage 2a causal ODE (or 2b causal CD)
#   -> 5 stage 3 DMD -> 6 sample videos
#   TPU_NAME=cf-v5p-64 ZONE=us-east5-a PROJECT=my-gcp-project BUCKET=my-bucket launch/full_recipe.sh
#   DISTILL=cd LAYOUT=framewise DMD_CONFIG=dmd_framewise_2step BUCKET=my-bucket ... launch/full_recipe.sh  # Causal Forcing++
# First: launch/tpu/create.sh, then GCSFUSE_BUCKET=$BUCKET launch/tpu/setup.sh. The bucket must hold
# (launch/README.md, "Bucket layout"), with P=gs://$BUCKET/$PREFIX:
#   $P/ckpt/wan_1_3b, $P/ckpt/wan_14b    Wan2.1-T2V 1.3B / 14B converted with `python -m cf_jax.convert`
#   $P/ckpt/Wan2.1-T2V-1.3B/             the original download (umT5 .pth, google/umt5-xxl tokenizer, VAE)
#   $P/prompts/train.txt, eval.txt        one prompt per line
#   $P/data/latents                       stage-1 videos as latents + prompt embeddings (cf_jax.encode_videos)
# Env: BUCKET (required), PREFIX (cf_jax), LAYOUT chunkwise|framewise (chunkwise), DISTILL ode|cd (ode),
# DMD_CONFIG (dmd_$LAYOUT; with cd e.g. dmd_framewise_2step or dmd_framewise_1step), FROM_STEP (1:
# after a preemption or a failure, restart from that step; a finished stage rerun only re-exports),
# CKPT_ROOT (where checkpoints are read from: gs://$BUCKET/$PREFIX, or /gcs/$BUCKET/$PREFIX to read
# through the mount), DRY_RUN=1 (print the commands). Everything else is as in launch/tpu/common.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=tpu/common.sh
source launch/tpu/common.sh
require TPU_NAME ZONE PROJECT BUCKET
PREFIX=${PREFIX:-cf_jax}
LAYOUT=${LAYOUT:-chunkwise}
DISTILL=${DISTILL:-ode}
FROM_STEP=${FROM_STEP:-1}
[[ "$LAYOUT" == chunkwise || "$LAYOUT" == framewise ]] || die "LAYOUT=$LAYOUT: use chunkwise or framewise"
[[ "$DISTILL" == ode || "$DISTILL" == cd ]] || die "DISTILL=$DISTILL: use ode or cd"

GS=gs://$BUCKET/$PREFIX         # workdirs: checkpoints, exports, metrics (orbax writes gs:// itself)
FS=/gcs/$BUCKET/$PREFIX         # the same bucket through gcsfuse (setup.sh): datasets, prompts, videos
CK=${CKPT_ROOT:-$GS}            # checkpoints and exports as the next stage reads them
WAN=$FS/ckpt/Wan2.1-T2V-1.3B
DATA=$FS/data
NEG=$DATA/negative_prompt
export WAIT=1 COMPILE_CACHE=${COMPILE_CACHE-$GS/jax_cache}

stage1=ar_diffusion_$LAYOUT
if [[ "$DISTILL" == ode ]]; then stage2=causal_ode_$LAYOUT; stage2_export=generator
else stage2=causal_cd_$LAYOUT; stage2_export=generator_ema; fi
stage3=${DMD_CONFIG:-dmd_$LAYOUT}

step() {  # step N TITLE: false (skip) when N < FROM_STEP
  if (($1 < FROM_STEP)); then echo "== step $1 ($2): skipped, FROM_STEP=$FROM_STEP"; return 1; fi
  echo "== step $1: $2"
}

# 1. umT5 embeddings: the training prompts (stage 3's only data, and the ODE pairs' prompts), the
#    negative prompt (CFG in ODE pairs, CD and DMD) and the evaluation prompts. Worker 0 only.
if step 1 "encode prompts"; then
  tpu_ssh 0 "cd $(shquote "$REMOTE_DIR") && .venv/bin/python -c 'from cf_jax.training.config import NEGATIVE_PROMPT; print(NEGATIVE_PROMPT)' > $(shquote "$FS/prompts/negative.txt")"
  t5=(--t5_checkpoint "$WAN/models_t5_umt5-xxl-enc-bf16.pth" --tokenizer "$WAN/google/umt5-xxl")
  RUN_NAME=encode_train launch/tpu/run_host0.sh encode_prompts --prompts "$FS/prompts/train.txt" --out "$DATA/prompt_embeds" "${t5[@]}"
  RUN_NAME=encode_negative launch/tpu/run_host0.sh encode_prompts --prompts "$FS/prompts/negative.txt" --out "$NEG" "${t5[@]}"
  RUN_NAME=encode_eval launch/tpu/run_host0.sh encode_prompts --prompts "$FS/prompts/eval.txt" --out "$DATA/eval_prompt_embeds" "${t5[@]}"
fi

# 2. Stage 1: teacher-forcing AR diffusion from the bidirectional Wan 1.3B -> export/generator.
if step 2 "stage 1, $stage1"; then
  launch/tpu/run_stage.sh "$stage1" "$GS/runs/$stage1" \
    --config.init.generator="$CK/ckpt/wan_1_3b" --config.data.path="$DATA/latents"
fi

# 3. ODE pairs: the stage-1 teacher's denoising trajectories for the training prompts (2a only).
if [[ "$DISTILL" == ode ]] && step 3 "ODE pairs, ode_data_$LAYOUT"; then
  launch/tpu/run_stage.sh "ode_data_$LAYOUT" "$DATA/ode_pairs_$LAYOUT" \
    --config.init.generator="$CK/runs/$stage1/export/generator" \
    --config.data.path="$DATA/latents" --config.data.negative_prompt_embeds="$NEG"
fi

# 4. Stage 2a: causal ODE regression on those pairs, or 2b: causal consistency distillation
#    against the stage-1 teacher (student, EMA target and teacher all start from it).
if step 4 "stage 2, $stage2"; then
  if [[ "$DISTILL" == ode ]]; then
    launch/tpu/run_stage.sh "$stage2" "$GS/runs/$stage2" \
      --config.init.generator="$CK/runs/$stage1/export/generator" --config.data.path="$DATA/ode_pairs_$LAYOUT"
  else
    launch/tpu/run_stage.sh "$stage2" "$GS/runs/$stage2" \
      --config.init.generator="$CK/runs/$stage1/export/generator" \
      --config.init.teacher="$CK/runs/$stage1/export/generator" \
      --config.data.path="$DATA/latents" --config.data.negative_prompt_embeds="$NEG"
  fi
fi

# 5. Stage 3: DMD with the self-forcing rollout; fake score from Wan 1.3B, real score Wan 14B.
if step 5 "stage 3, $stage3"; then
  launch/tpu/run_stage.sh "$stage3" "$GS/runs/$stage3" \
    --config.init.generator="$CK/runs/$stage2/export/$stage2_export" \
    --config.init.critic="$CK/ckpt/wan_1_3b" --config.init.real_score="$CK/ckpt/wan_14b" \
    --config.data.path="$DATA/prompt_embeds" --config.data.negative_prompt_embeds="$NEG"
fi

# 6. Videos from the final generator for the evaluation prompts (worker 0), as MP4 in the bucket.
if step 6 "sample"; then
  case "$stage3" in
    *_1step) steps=(--steps 1 --first_block_steps 4) ;;
    *_2step) steps=(--steps 2 --first_block_steps 4) ;;
    *) steps=(--steps 4) ;;
  esac
  fpb=3; [[ "$LAYOUT" == framewise ]] && fpb=1
  RUN_NAME=sample_$stage3 launch/tpu/run_host0.sh sample \
    --checkpoint "$CK/runs/$stage3/export/generator_ema" \
    --prompts "$FS/prompts/eval.txt" --embeddings "$DATA/eval_prompt_embeds" \
    --frames_per_block "$fpb" "${steps[@]}" --vae_checkpoint "$WAN/Wan2.1_VAE.pth" --out "$FS/samples/$stage3"
fi
echo "done: videos in $GS/samples/$stage3; delete the slice with launch/tpu/delete.sh"
