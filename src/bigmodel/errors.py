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


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """``Type: first line of the message`` (its first ``limit`` characters): another library's error,
    quoted inside a one-line ``UserError``."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:limit]}" if text else type(exc).__name__
