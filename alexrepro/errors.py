"""The one exception type for user mistakes, and the one for failed work."""


def _own_message(cls: type, message: object) -> object:
    """The message itself when a DataLoader worker re-raises it wrapped in its traceback.

    torch re-raises a worker's exception as ``cls("Caught X in DataLoader worker process N.\\nOriginal
    Traceback ...\\nalexrepro.errors.X: <message>")``; the CLI prints one line, so keep only <message>.
    """
    if not isinstance(message, str) or not message.startswith(f"Caught {cls.__name__} "):
        return message
    marker = f"{cls.__module__}.{cls.__qualname__}: "
    at = message.rfind(marker)
    return message[at + len(marker):].strip() if at >= 0 else message


class UserError(Exception):
    """Bad usage or bad input: the CLI prints the message on one line and exits 2.

    The message says what was wrong and what to do about it. `quiet`: another process of the same job
    says it (a rank other than 0 under torchrun), so the CLI only exits.
    """

    def __init__(self, message: object = "", quiet: bool = False) -> None:
        super().__init__(_own_message(type(self), message))
        self.quiet = quiet


class WorkFailed(Exception):
    """The work itself failed (a verification found problems, training diverged): exit 1. `quiet` as UserError's."""

    def __init__(self, message: object = "", quiet: bool = False) -> None:
        super().__init__(_own_message(type(self), message))
        self.quiet = quiet
