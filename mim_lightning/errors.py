"""The one exception type the CLI turns into a one-line message."""


class MimError(Exception):
    """A user-facing error: its message names the culprit and what is allowed."""


class RunFailed(MimError):
    """A run whose training failed on its own terms (weights diverged or vanished): training it
    again with the same config would fail the same way."""
