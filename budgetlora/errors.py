"""The one exception type that means "the user asked for something wrong".

The CLI turns a UserError into a single line on stderr and exit status 2; anything else is a
bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the problem and how to fix it, in one line."""
