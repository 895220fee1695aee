"""Stopping on SIGTERM and SIGINT: one clean stop that says what was kept; a second signal ends at once.

The CLI runs every command inside `stop_on_signals()`: the first SIGINT (Ctrl-C) or SIGTERM (what a
scheduler sends before it pre-empts a job) raises `Stopped` in the main thread. A command that has
something to say about what it kept catches it and raises `Stopped(signum, message)` again; the CLI prints
that message on one line and exits 128 + the signal number (130 for SIGINT, 143 for SIGTERM), the shell's
convention for a process ended by a signal.

A loop that must reach a safe point first (finish a step, write a checkpoint) uses
`stop_on_signals(at_once=False)` instead: the signal only sets `StopRequest.signum`, the loop checks
`request.requested` at its safe points and calls `request.check()` to stop there. In both modes a second
signal while the first is being handled ends the process at once, by that signal (the user's second Ctrl-C),
except a repeat of a scheduler's signal (`same_stop`): SLURM signals every process of a job step and torchrun
passes the signal it gets on to its workers as well, so one stop reaches a rank twice.

Once a command's work is done (`work_done()`: its result is kept, its line printed or about to be), a first
stop signal changes nothing any more: the process ends as it would, with its done line and exit 0; a second
still ends it at once. So a signal that lands while a finished command prints or shuts down (torch,
multiprocessing) never turns a finished run into a silent exit by that signal.

`Stopped` derives from BaseException, like KeyboardInterrupt, so `except Exception` does not swallow it;
and it is not a KeyboardInterrupt, which Typer would turn into a silent exit 130.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DONE_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)  # what `work_done` takes over
# SIGUSR1 is what SLURM sends before a pre-emption (`sbatch --signal=USR1@120`): the job ends as the SIGTERM
# that would follow ends it, so it exits as that would, 143.
EXIT_CODES = {signal.SIGUSR1: 128 + signal.SIGTERM}
SAME_STOP_WINDOW = 2.0  # s: a SIGTERM this soon after the first is the same stop, delivered twice


def same_stop(first: int, since: float, signum: int, now: float) -> bool:
    """Whether `signum`, arriving at `now` while a stop by `first` (recorded at `since`) is under way, is
    that stop again rather than a request to end at once: a SIGUSR1 (a warning, never a hurry) always,
    a SIGTERM within SAME_STOP_WINDOW seconds of a first SIGTERM; a SIGINT (a person's Ctrl-C) never."""
    if signum == signal.SIGUSR1:
        return True
    return signum == first == signal.SIGTERM and now - since < SAME_STOP_WINDOW


def signal_name(signum: int) -> str:
    """'SIGTERM' for 15; the number itself for one Python does not name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Stopped(BaseException):
    """A stop asked for by a signal; `message` says what was kept and how to go on (one line).

    `quiet`: another process of the same job says it (a training rank other than 0), so the CLI only exits.
    """

    def __init__(self, signum: int, message: str = "", quiet: bool = False) -> None:
        super().__init__(signum, message)
        self.signum = int(signum)
        self.message = message
        self.quiet = quiet

    @property
    def exit_code(self) -> int:
        """128 + the signal number (130 for SIGINT, 143 for SIGTERM); 143 for SIGUSR1 (EXIT_CODES)."""
        return EXIT_CODES.get(self.signum, 128 + self.signum)

    @property
    def name(self) -> str:
        return signal_name(self.signum)

    def __str__(self) -> str:
        return f"stopped by {self.name}" + (f": {self.message}" if self.message else "")


class StopRequest:
    """The first stop signal seen inside a `stop_on_signals` block (None until one arrives)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.since = 0.0  # time.monotonic() when it arrived

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self, message: str = "") -> None:
        """Raise Stopped (with `message`) if a stop signal has arrived; else nothing."""
        if self.signum is not None:
            raise Stopped(self.signum, message)


# whole: this process lives for one command; done: work_done() was called; seen: stop signals since
_after: dict[str, int | bool] = {"whole": False, "done": False, "seen": 0}


def command_is_process() -> None:
    """Say that this process lives for one command (the CLI's entry point, a spawned training rank), so that
    work_done() may take over its stop signals until it exits. Used from Python, work_done() does nothing."""
    _after["whole"] = True


def work_done() -> None:
    """The command's work is done: from now on, for the rest of the process, the first SIGINT, SIGTERM or
    SIGUSR1 is let pass and a second ends the process at once (main thread of a `command_is_process` only)."""
    if not _after["whole"] or _after["done"] or threading.current_thread() is not threading.main_thread():
        return
    _after["done"] = True
    for s in DONE_SIGNALS:
        signal.signal(s, _after_done)


def _after_done(signum: int, frame: FrameType | None) -> None:
    _after["seen"] = int(_after["seen"]) + 1
    if _after["seen"] > 1:
        _end_now(signum)


def _end_now(signum: int) -> None:
    """End the process at once, by `signum` itself (so the exit status says which signal ended it)."""
    os.write(2, f"\n{signal_name(signum)} again: ending at once\n".encode())
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _as_before(signum: int, handler: Any, frame: FrameType | None) -> None:
    """Handle `signum` as the handler replaced by stop_on_signals would have (KeyboardInterrupt for SIGINT)."""
    if callable(handler):
        handler(signum, frame)
    elif handler != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


@contextlib.contextmanager
def stop_on_signals(signums: tuple[int, ...] = STOP_SIGNALS, at_once: bool = True) -> Iterator[StopRequest]:
    """Within the block, the first of `signums` raises Stopped (at_once) or only records itself in the
    yielded StopRequest; any second one ends the process at once. The previous handlers come back after.

    Signal handlers can only be set in the main thread; elsewhere the block runs with the handlers as they are.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    owner = os.getpid()
    previous: dict[int, Any] = {}

    def handle(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:  # a forked child (a DataLoader worker) inherited this: behave as it did before
            _as_before(signum, previous.get(signum), frame)
            return
        if request.signum is not None:
            if same_stop(request.signum, request.since, signum, time.monotonic()):
                return
            _end_now(signum)
        request.signum, request.since = signum, time.monotonic()
        if at_once:
            raise Stopped(signum)

    try:
        for s in signums:
            previous[s] = signal.signal(s, handle)
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, _after_done if _after["done"] else handler)  # a finished command keeps work_done's
