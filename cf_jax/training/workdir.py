"""One run per workdir, with the config it was started with.

`claim(workdir, config)` refuses a workdir that another live trainer holds, or whose
`config.json` differs from `config` in a key that changes what is trained.

The lock is `lock.json` (host, pid, start time, heartbeat), written by process 0 and refreshed
every HEARTBEAT_S by a daemon thread. A lock is stale, and taken over, when its holder ran on this
host and its pid is gone, or when its heartbeat is older than STALE_AFTER_S (a holder on another
host): a crashed run never blocks the workdir for long. On local disk the lock is created with
O_EXCL, so two trainers starting together cannot both win; object stores (gs://) have no such
primitive, so there the lock catches a second run started later, not one started in the same
second. A process may claim a workdir it already holds (a resumed `Trainer` in the same process).
"""
import atexit
import datetime
import json
import os
import socket
import threading
import time
import uuid

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from etils import epath

from cf_jax.errors import UserError
from cf_jax.training import config as config_lib

LOCK = "lock.json"
HEARTBEAT_S = 30
STALE_AFTER_S = 600

# Top-level config keys that may change between the runs of one workdir: how long to run, how
# to log and checkpoint, and the mesh (the state restores onto any mesh).
MAY_CHANGE = ("num_steps", "log_every", "tensorboard", "wandb", "checkpoint_every", "keep_checkpoints", "mesh",
              "skip_nonfinite_updates", "allow_config_change")


def claim(workdir: epath.Path, config: ml_collections.ConfigDict) -> "Lock":
  """Locks `workdir` for this run and checks `config` against its config.json (UserError if not)."""
  lock = Lock(workdir)
  error = ""
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except UserError as e:
      error = str(e)
  if jax.process_count() > 1 and multihost_utils.broadcast_one_to_all(np.int32(bool(error))):
    error = error or f"{workdir} is held by another run (process 0 says why)"
  if error:
    raise UserError(error)
  try:
    check_config(workdir, config)
  except UserError:
    lock.release()
    raise
  return lock


def config_changes(old: dict, new: dict) -> list[str]:
  """Dotted keys whose values differ between two flat configs ({dotted key: value}), outside
  MAY_CHANGE."""
  return sorted(k for k in old.keys() | new.keys()
                if k.split(".")[0] not in MAY_CHANGE and old.get(k, "<unset>") != new.get(k, "<unset>"))


def check_config(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
  path = workdir / "config.json"
  if config.allow_config_change or not path.exists():
    return
  old, new = (config_lib.flat_keys(json.loads(text)) for text in (path.read_text(), config.to_json_best_effort()))
  changed = config_changes(old, new)
  if changed:
    show = lambda flat, k: repr(flat.get(k, "<unset>"))[:40]
    diffs = "; ".join(f"{k}: {show(old, k)} -> {show(new, k)}" for k in changed)
    raise UserError(f"{workdir} was started with another config ({diffs}); rerun with its config, use "
                     f"another --workdir, or pass --config.allow_config_change=true")


class Lock:
  def __init__(self, workdir: epath.Path):
    self.path = workdir / LOCK
    self._local = "://" not in str(workdir)
    self._me = {"host": socket.gethostname(), "pid": os.getpid(),
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "token": uuid.uuid4().hex}  # this Lock, among several of one process
    self._stop = threading.Event()
    self._thread = None
    self._held = False

  def _holder(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (ValueError, OSError):  # being written right now: a live holder
      return {"host": "?", "pid": -1, "started": "?", "heartbeat": time.time()}

  def _is_this_process(self, holder: dict) -> bool:
    return holder["host"] == self._me["host"] and holder["pid"] == self._me["pid"]

  def _is_mine(self) -> bool:
    holder = self._holder()
    return holder is not None and holder.get("token") == self._me["token"]

  @staticmethod
  def _is_stale(holder: dict) -> bool:
    if holder["host"] == socket.gethostname():
      try:
        os.kill(holder["pid"], 0)
      except ProcessLookupError:
        return True
      except PermissionError:  # alive, another user's
        return False
      return False
    return time.time() - holder["heartbeat"] > STALE_AFTER_S

  def _write(self, create: bool) -> None:
    text = json.dumps({**self._me, "heartbeat": time.time()})
    if not self._local:
      self.path.write_text(text)
    elif create:  # fails if another run created it first
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
      with os.fdopen(fd, "w") as f:
        f.write(text)
    else:  # readers never see a half-written heartbeat
      tmp = self.path.parent / f".{LOCK}.{self._me['pid']}.tmp"
      tmp.write_text(text)
      os.replace(tmp, self.path)

  def acquire(self) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
      holder = self._holder()
      if holder is not None:
        if not (self._is_this_process(holder) or self._is_stale(holder)):
          age = time.time() - holder["heartbeat"]
          raise UserError(
              f"{self.path.parent} is in use by pid {holder['pid']} on {holder['host']} (started {holder['started']}, "
              f"last heartbeat {age:.0f} s ago); stop that run or use another --workdir (a dead holder's lock is taken "
              f"over: at once on the same host, after {STALE_AFTER_S} s from another)")
        self.path.unlink(missing_ok=True)
      try:
        self._write(create=True)
      except FileExistsError:  # another run took it between our read and write: look again
        continue
      break
    else:
      raise UserError(f"{self.path} keeps changing: another run is starting on this workdir")
    self._held = True
    self._stop.clear()
    self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="workdir-lock")
    self._thread.start()
    atexit.register(self.release)

  def _heartbeat(self) -> None:
    # Stops when another Lock of this process took the workdir over.
    while not self._stop.wait(HEARTBEAT_S) and self._is_mine():
      self._write(create=False)

  def release(self) -> None:
    """Frees the lock if this process holds it (idempotent)."""
    if not self._held:
      return
    self._held = False
    self._stop.set()
    self._thread.join()
    if self._is_mine():
      self.path.unlink(missing_ok=True)
