"""The one exception type that means "the user asked for something wrong".

The CLI prints a ``UserError`` as one line on stderr and exits non-zero; anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's config, command line or files, with a message that says how to fix it."""


class Interrupted(UserError):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved; exits 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
