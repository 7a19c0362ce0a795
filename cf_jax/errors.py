"""The one exception type for bad user input.

Whatever a user can get wrong (a path, a flag, a config key, a file's contents) raises `UserError`
with a one-line message that names what is at fault and what to do. The CLIs (`cf_jax.cli.run`)
print it as `error: ...` and exit with status 1; every other exception is a bug and keeps its
traceback. It is a ValueError, so library callers that catch ValueError still do. `Stopped` is
not an error: a run that saved its progress and stopped when asked to.
"""


class UserError(ValueError):
  """Bad input: the message is one line naming the problem and what to do."""


class Stopped(Exception):
  """The work stopped on request (a preemption signal) after saving its progress; the CLIs print
  the message, which says how to resume, and exit with status 0."""
