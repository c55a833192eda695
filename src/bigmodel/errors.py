"""The one exception type that means "the user asked for something wrong".

The CLI prints a ``UserError`` as one line on stderr and exits non-zero; anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's config, command line or files, with a message that says how to fix it."""
