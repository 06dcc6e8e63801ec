"""One error type for every bad input the planner can see.

The CLI turns a `PlannerError` into one line on stderr and exit status 2, so the message must
name the flag (or key), the bad value and what would be valid.
"""


class PlannerError(ValueError):
    """Bad input: the message is shown to the user as is."""


def print_error(prog: str, exc: BaseException) -> int:
    """Print `prog: error: <message on one line>` to stderr; returns the usage exit status, 2."""
    import sys

    print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
    return 2
