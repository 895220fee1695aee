"""The one exception type for user mistakes, and the one for failed work."""


class UserError(Exception):
    """Bad usage or bad input: the CLI prints the message on one line and exits 2.

    The message says what was wrong and what to do about it.
    """


class WorkFailed(Exception):
    """The work itself failed (a verification found problems, training diverged): exit 1."""
