"""Running a command-line tool so that bad input ends in one line.

    if __name__ == "__main__":
      cli.run(main)                        # flags, then main
      cli.run(main, config_flag="config")  # also a config file `--config path[:variant]` with overrides

A `UserError` (bad flags, a bad config file or key, a bad input file) prints `error: <message>` on
stderr and exits with status 1; any other exception is a bug and keeps its traceback. The config
file and its `--config.key=value` overrides are checked before absl parses the flags, because
ml_collections reports a missing file, an error in `get_config` or a misspelt key as a page of
tracebacks. A `Stopped` run (a preemption signal) prints how to resume and exits with status 0.
Every tool returns the compiler's freed heap to the OS after each compile (`host_memory`).
"""
import difflib
import sys
from collections.abc import Callable, Sequence

from absl import app
from absl import flags
import jax
import ml_collections

from cf_jax import host_memory
from cf_jax.errors import Stopped
from cf_jax.errors import UserError
from cf_jax.training import config as config_lib


def fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def run(main: Callable[[list[str]], None], config_flag: str | None = None) -> None:
  def parse(argv: list[str]) -> list[str]:
    try:
      if config_flag:
        check_config_args(argv[1:], config_flag)
      return flags.FLAGS(argv)
    except (UserError, flags.Error) as e:
      fail(str(e).splitlines()[0])

  def guarded(argv: list[str]) -> None:
    host_memory.trim_after_compiles()
    try:
      main(argv)
    except UserError as e:
      fail(str(e))
    except Stopped as e:
      if jax.process_index() == 0:
        print(e)

  app.run(guarded, flags_parser=parse)


def _flag_values(args: Sequence[str], name: str) -> tuple[str | None, list[tuple[str, str]]]:
  """The value of `--name` and the `--name.path` overrides in `args` (as `--x=v` or `--x v`)."""
  value, overrides = None, []
  for i, arg in enumerate(args):
    flag, eq, rest = arg.partition("=")
    given = rest if eq else (args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else "")
    if flag == f"--{name}":
      value = given
    elif flag.startswith(f"--{name}."):
      overrides.append((flag, flag.removeprefix(f"--{name}.")))
  return value, overrides


def check_config_args(args: Sequence[str], name: str = "config") -> ml_collections.ConfigDict:
  """Loads `--name path[:variant]` and checks every `--name.key` override names a key of it;
  raises UserError otherwise (with the closest keys)."""
  spec, overrides = _flag_values(args, name)
  if not spec:
    raise UserError(f"--{name} is required: a file of configs/, e.g. --{name} configs/ar_diffusion_chunkwise.py")
  path, _, variant = spec.partition(":")
  config = config_lib.from_file(path, variant)
  for flag, key in overrides:
    node, walked = config, []
    for part in key.split("."):
      if not isinstance(node, ml_collections.ConfigDict):
        break  # an element of a tuple or a typed value: ml_collections checks the rest
      if part not in node:
        group = ".".join(walked) or "the top level"
        close = difflib.get_close_matches(part, list(node.keys()), n=3)
        hint = f"did you mean {' or '.join('.'.join([*walked, c]) for c in close)}?" if close else (
            f"{group} holds {', '.join(sorted(node.keys()))}")
        raise UserError(f"{flag}: {spec} has no key {'.'.join([*walked, part])}; {hint}")
      node, walked = node[part], [*walked, part]
  return config
