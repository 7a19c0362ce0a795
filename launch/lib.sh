# launch/lib.sh: helpers shared by launch/tpu/* and launch/gpu/*; sourced, never run.
# DRY_RUN=1 makes `run` print each command (shell-quoted, copy-pasteable) instead of running it.
# shellcheck shell=bash

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$LAUNCH_DIR/.." && pwd)
DRY_RUN=${DRY_RUN:-0}

if (( BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4) )); then
  echo "error: bash >= 4.4 is needed (this is $BASH_VERSION; on macOS: brew install bash)" >&2
  exit 1
fi

die() { echo "error: $*" >&2; exit 1; }
is_dry() { [[ "$DRY_RUN" == 1 ]]; }

# One argument, quoted for a POSIX shell only where it needs it.
shquote() {
  if [[ -n "$1" && "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# All arguments as one shell-quoted string (for a remote --command or for printing).
qargs() {
  local a out=()
  for a in "$@"; do out+=("$(shquote "$a")"); done
  printf '%s' "${out[*]}"
}

run() {
  if is_dry; then
    printf '+ %s\n' "$(qargs "$@")"
  else
    "$@"
  fi
}

# Example values for the "not set" message.
example_of() {
  case "$1" in
    TPU_NAME) echo cf-v5p-64 ;;
    ZONE) echo us-east5-a ;;
    PROJECT) echo my-gcp-project ;;
    ACCELERATOR_TYPE) echo v5p-64 ;;
    RUNTIME_VERSION) echo v2-alpha-tpuv5 ;;
    BUCKET) echo my-bucket ;;
    NODE_RANK) echo 0 ;;
    NUM_NODES) echo 2 ;;
    COORDINATOR) echo 10.0.0.1:12355 ;;
    *) echo ... ;;
  esac
}

require() {
  local v
  for v in "$@"; do
    [[ -n "${!v:-}" ]] || die "$v is not set (e.g. export $v=$(example_of "$v"))"
  done
}

# "ar_diffusion_chunkwise[:tiny]" or "configs/ar_diffusion_chunkwise.py[:tiny]" -> configs/<name>.py[:variant]
config_path() {
  local spec=$1 file variant=""
  if [[ "$spec" == *:* ]]; then variant=":${spec#*:}"; spec=${spec%%:*}; fi
  if [[ "$spec" == */* || "$spec" == *.py ]]; then file=$spec; else file="configs/$spec.py"; fi
  [[ -f "$REPO_ROOT/$file" ]] || echo "warning: $file is not in the local checkout ($REPO_ROOT)" >&2
  printf '%s%s' "$file" "$variant"
}

# configs/ar_diffusion_chunkwise.py:tiny -> ar_diffusion_chunkwise_tiny (log and job names)
config_name() {
  local spec=$1 name variant=""
  if [[ "$spec" == *:* ]]; then variant="_${spec#*:}"; spec=${spec%%:*}; fi
  name=$(basename "$spec" .py)
  printf '%s%s' "$name" "$variant"
}

# The entry point a config belongs to: ode_data_* -> generate_ode_data, everything else -> train.
module_for() {
  case "$(config_name "$1")" in
    ode_data_*) echo cf_jax.generate_ode_data ;;
    *) echo cf_jax.train ;;
  esac
}
