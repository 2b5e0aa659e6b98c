"""The one exception type that means "the user asked for something wrong".

The CLI turns a UserError into a single line on stderr and exit status 2; anything else is a
bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the problem and how to fix it, in one line."""


def warn(message: str) -> None:
    """A warning the user should see, as one line on stderr (Python's warnings take two)."""
    import sys

    print(f"budgetlora: warning: {message}", file=sys.stderr)


def first_line(error: BaseException, limit: int | None = 200) -> str:
    """The first line of `error`'s message (its type's name if the message is empty), at most
    `limit` characters: what a one-line message can quote of a library's exception."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]


def listed(values, limit: int = 8) -> str:
    """A short comma-separated list for a one-line message."""
    values = list(values)
    more = f", ... ({len(values)} in all)" if len(values) > limit else ""
    return ", ".join(str(v) for v in values[:limit]) + more
