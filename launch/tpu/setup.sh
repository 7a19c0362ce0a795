#!/usr/bin/env bash
# Puts the code on every worker and installs it: clone REPO_URL (at REPO_REF) or copy the local
# checkout, then a Python 3.12 venv with `pip install -e . "jax[tpu]"`; optionally mounts a bucket.
#   TPU_NAME=cf-v5p-64 ZONE=us-east5-a PROJECT=my-gcp-project GCSFUSE_BUCKET=my-bucket launch/tpu/setup.sh
#   REPO_URL=https://github.com/me/cf_jax.git REPO_REF=main TPU_NAME=... ZONE=... PROJECT=... launch/tpu/setup.sh
# Rerun it after editing code (CODE_ONLY=1 skips the install). Env (besides common.sh):
#   JAX_SPEC        what pip installs for JAX (default "jax[tpu]"; pin e.g. "jax[tpu]==0.12.0")
#   GCSFUSE_BUCKET  mount gs://BUCKET at /gcs/BUCKET on every worker (the datasets are read through
#                   it, see launch/README.md); GCSFUSE_FLAGS adds gcsfuse flags
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
require TPU_NAME ZONE PROJECT
dir=$(shquote "$REMOTE_DIR")

if [[ -n "${REPO_URL:-}" ]]; then
  ref=$(shquote "${REPO_REF:-main}")
  tpu_ssh all "set -e; [ -d $dir/.git ] || git clone --quiet $(shquote "$REPO_URL") $dir; cd $dir && git fetch --quiet origin $ref && git checkout --quiet --force FETCH_HEAD && echo \"\$(hostname): \$(git log -1 --oneline)\""
else
  # Tracked files plus untracked ones git does not ignore (no .venv, runs/, caches).
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  tarball=$tmp/cf_jax_src.tar.gz
  if is_dry; then
    echo "+ (cd $(shquote "$REPO_ROOT") && git ls-files -z --cached --others --exclude-standard | tar czf $tarball --null -T -)"
  else
    (cd "$REPO_ROOT" && git ls-files -z --cached --others --exclude-standard | tar czf "$tarball" --null -T -)
    mb=$(( $(wc -c < "$tarball") / 1000000 ))
    ((mb < ${MAX_SRC_MB:-200})) || die "the code archive is $mb MB: untracked weights or data in the checkout? .gitignore them (or MAX_SRC_MB=$((mb + 1)))"
  fi
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:cf_jax_src.tar.gz" --worker=all \
    --zone="$ZONE" --project="$PROJECT" "${SSH_EXTRA[@]}"
  tpu_ssh all "set -e; mkdir -p $dir && tar xzf cf_jax_src.tar.gz -C $dir && rm cf_jax_src.tar.gz && echo \"\$(hostname): code in ~/$REMOTE_DIR\""
fi

if [[ "${CODE_ONLY:-0}" != 1 ]]; then
  tpu_ssh all "cd $dir && JAX_SPEC=$(shquote "${JAX_SPEC:-jax[tpu]}") bash launch/tpu/remote.sh setup"
fi
if [[ -n "${GCSFUSE_BUCKET:-}" ]]; then
  tpu_ssh all "cd $dir && GCSFUSE_FLAGS=$(shquote "${GCSFUSE_FLAGS:-}") bash launch/tpu/remote.sh mount $(shquote "$GCSFUSE_BUCKET")"
fi
echo "setup done; next: launch/tpu/run_stage.sh <config> <workdir> [--config.key=value ...]"
