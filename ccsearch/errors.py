"""The one exception type for mistakes a user can cause.

The CLI turns a ``UserError`` into one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: unknown name, bad value, missing or corrupt file."""
