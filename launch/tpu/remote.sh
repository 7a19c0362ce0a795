#!/usr/bin/env bash
# launch/tpu/remote.sh: runs ON a TPU worker, inside the checkout; the other launch/tpu scripts call
# it over `gcloud compute tpus tpu-vm ssh`. By hand on a worker:
#   cd ~/cf_jax && bash launch/tpu/remote.sh status ar_diffusion_chunkwise
# Commands:
#   setup               venv with Python 3.12 (uv fetches it if python3.12 is missing), pip install
#                       -e . plus $JAX_SPEC (default "jax[tpu]")
#   mount BUCKET        install gcsfuse if needed and mount gs://BUCKET at /gcs/BUCKET
#   start NAME CMD...   run CMD detached (setsid nohup): logs/NAME.log, logs/NAME.pid, logs/NAME.rc
#   status NAME         running | dead | none | the exit code
#   show NAME [LINES]   this host, the status and the last LINES lines of logs/NAME.log
#   stop [NAME]         stop NAME (default: every run started here), its whole process group
set -euo pipefail

die() { echo "error: $(hostname): $*" >&2; exit 1; }
# Running: started, no exit code recorded yet, and the process is still there.
alive() { [[ -f "logs/$1.pid" && ! -f "logs/$1.rc" ]] && kill -0 "$(<"logs/$1.pid")" 2>/dev/null; }

setup() {
  if [[ ! -x .venv/bin/python ]]; then
    if command -v python3.12 >/dev/null; then
      python3.12 -m venv .venv
    else
      echo "$(hostname): no python3.12 on this image; fetching it with uv"
      python3 -m pip install --user --quiet uv
      "$HOME/.local/bin/uv" venv --python 3.12 --seed .venv
    fi
  fi
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e . "${JAX_SPEC:-jax[tpu]}"
  echo "$(hostname): $(.venv/bin/python -c 'import sys, jax; print("python", sys.version.split()[0], "jax", jax.__version__)')"
}

mount_bucket() {
  local bucket=${1:?usage: remote.sh mount BUCKET} dir
  dir=/gcs/$bucket
  if ! command -v gcsfuse >/dev/null; then
    local apt=(sudo apt-get -o DPkg::Lock::Timeout=600 -qq)
    echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" \
      | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
    curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
    "${apt[@]}" update && "${apt[@]}" install -y gcsfuse
  fi
  if mountpoint -q "$dir"; then echo "$(hostname): $dir already mounted"; return; fi
  sudo mkdir -p "$dir" && sudo chown "$(id -u):$(id -g)" "$dir"
  # shellcheck disable=SC2086  # GCSFUSE_FLAGS is a list of flags
  gcsfuse --implicit-dirs ${GCSFUSE_FLAGS:-} "$bucket" "$dir"
  echo "$(hostname): gs://$bucket mounted at $dir"
}

start() {
  local name=${1:?usage: remote.sh start NAME CMD...} f other; shift
  (($# > 0)) || die "start $name: no command"
  mkdir -p logs
  for f in logs/*.pid; do
    [[ -e "$f" ]] || continue
    other=$(basename "$f" .pid)
    if alive "$other"; then
      die "$other is still running (pid $(<"$f")) and holds the TPU; launch/tpu/stop.sh $other first"
    fi
  done
  rm -f "logs/$name.rc"
  # The wrapper records the exit code; setsid makes it a process group that stop can end whole.
  # shellcheck disable=SC2016  # expanded by the inner bash
  setsid nohup bash -c '"$@"; echo $? > "$0"' "logs/$name.rc" "$@" > "logs/$name.log" 2>&1 < /dev/null &
  echo $! > "logs/$name.pid"
  ln -sfn "$name.log" logs/latest.log
  echo "$(hostname): started $name (pid $!), log $PWD/logs/$name.log"
}

status() {
  local name=${1:?usage: remote.sh status NAME}
  if alive "$name"; then echo running
  elif [[ -f "logs/$name.rc" ]]; then cat "logs/$name.rc"
  elif [[ -f "logs/$name.pid" ]]; then echo dead
  else echo none
  fi
}

latest() { local l; l=$(readlink logs/latest.log 2>/dev/null) || die "no run was started here"; echo "${l%.log}"; }

show() {
  local name=${1:-$(latest)}
  echo "== $(hostname): $name $(status "$name")"
  tail -n "${2:-20}" "logs/$name.log" 2>/dev/null || true
}

stop() {
  local names=() name pid f
  if (($# > 0)); then names=("$@"); else
    for f in logs/*.pid; do
      if [[ -e "$f" ]]; then names+=("$(basename "$f" .pid)"); fi
    done
  fi
  for name in "${names[@]}"; do
    alive "$name" || continue
    pid=$(<"logs/$name.pid")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 30); do alive "$name" || break; sleep 1; done
    if alive "$name"; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
    echo "$(hostname): stopped $name (pid $pid)"
  done
}

cmd=${1:-}
shift || true
case "$cmd" in
  setup) setup ;;
  mount) mount_bucket "$@" ;;
  start) start "$@" ;;
  status) status "$@" ;;
  show) show "$@" ;;
  stop) stop "$@" ;;
  *) die "usage: remote.sh setup | mount BUCKET | start NAME CMD... | status NAME | show [NAME [LINES]] | stop [NAME]" ;;
esac
