"""The Typer application, the global options and the error convention (exit 0 / 1 / 2)."""

from __future__ import annotations

import os
import sys
import traceback

import typer
from rich.text import Text

from alexrepro.errors import UserError, WorkFailed
from alexrepro.process.locking import set_command_line
from alexrepro.process.signals import Stopped, command_is_process, stop_on_signals, work_done
from alexrepro.progress import console
from alexrepro.version import __version__

app = typer.Typer(
    name="alexrepro",
    help="Reproduce AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) on ImageNet, end to end.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)

_state = {"debug": False}


def debug_enabled() -> bool:
    return _state["debug"] or os.environ.get("ALEXREPRO_DEBUG", "") not in ("", "0")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"alexrepro {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    _state["debug"] = debug


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning our errors into one line and an exit code.

    Usage errors (unknown option, missing argument) are Typer's own: message and exit 2. SIGINT and SIGTERM
    stop a command through alexrepro.process.signals: one line saying what was kept, exit 130 or 143.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["--"]:  # `torchrun ... -m alexrepro -- train ...`: the `--` ends torchrun's options (argparse
        args = args[1:]  # drops it, but keeps it on some Python versions); it means nothing to alexrepro
    if "--debug" in args:
        _state["debug"] = True
    if argv is None:  # the process is this one command (not main() called from Python)
        command_is_process()
    set_command_line(args)
    try:
        with stop_on_signals():
            try:
                app(args=args, prog_name="alexrepro")
            except SystemExit as e:
                if not e.code:  # done: a signal from here to the process's end leaves it as it is (exit 0)
                    work_done()
                raise
    except Stopped as e:
        if debug_enabled():  # where it stopped; the exit status still says which signal
            traceback.print_exc()
        if not e.quiet:
            said = e.message or "it did not finish"
            console.print(Text.assemble((f"stopped by {e.name}: ", "yellow"), said), soft_wrap=True)
        sys.exit(e.exit_code)
    except UserError as e:
        if debug_enabled():
            raise
        if not e.quiet:
            console.print(Text.assemble(("error: ", "red"), str(e)), soft_wrap=True)
        sys.exit(2)
    except WorkFailed as e:
        if debug_enabled():
            raise
        if not e.quiet:
            console.print(Text.assemble(("failed: ", "red"), str(e)), soft_wrap=True)
        sys.exit(1)
