"""The one error type every converter raises for a bad checkpoint."""


class CheckpointError(ValueError):
  """A checkpoint is missing, unreadable, unsafe, or does not match the model.

  The message is one line that names the file or keys at fault and what to do; the CLIs print it
  and exit non-zero instead of showing a traceback.
  """
