"""The error every converter raises for a bad checkpoint."""
from cf_jax.errors import UserError


class CheckpointError(UserError):
  """A checkpoint is missing, unreadable, unsafe, or does not match the model.

  The message is one line that names the file or keys at fault and what to do.
  """
