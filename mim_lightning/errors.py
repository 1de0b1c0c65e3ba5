"""The one exception type the CLI turns into a one-line message."""


class MimError(Exception):
    """A user-facing error: its message names the culprit and what is allowed."""
