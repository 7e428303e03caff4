"""The `ssl-guard` command line: a thin typer app over the library.

One module per command. Command modules import only typer and the standard library at import time;
torch and the detection code are imported inside the command bodies, so `ssl-guard --help` and the
light commands (`check --quarantine`, `verify`) stay instant.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from ssl_guard import __version__
from ssl_guard.errors import GuardError

app = typer.Typer(
    name="ssl-guard",
    help="Find backdoor-poisoned images in self-supervised pre-training data and keep them out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ssl-guard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an unexpected error (also: SSL_GUARD_DEBUG=1)."),
) -> None:
    """Find backdoor-poisoned images in self-supervised pre-training data and keep them out."""
    if debug:
        os.environ["SSL_GUARD_DEBUG"] = "1"


# Exit code of an unexpected error (a bug, or an environment fault such as a full disk): the same
# as a usage or I/O error, and never 0 or 1, which are verdicts of `scan` and `check`.
CRASH_EXIT_CODE = 2


def _register() -> None:
    from ssl_guard.cli import commands

    for name, function in commands.ALL.items():
        app.command(name)(function)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning every `GuardError` into one line and its exit code.

    Usage errors (a missing argument, an unknown option, a bad value) print click's one-line
    message and exit 2, like a `GuardError`. Any other exception is a crash: one line naming it
    and how to see the traceback, and exit `CRASH_EXIT_CODE`, so that a crash never reads as a
    verdict (1 is "poison found").
    """
    try:
        result = app(args=argv, standalone_mode=False)
    except GuardError as error:
        typer.echo(error.one_line(), err=True)
        return error.exit_code
    except typer.Exit as done:
        return int(done.exit_code or 0)
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except Exception as error:
        # typer ships its own copy of click, so match click's usage errors by their interface
        if hasattr(error, "format_message") and hasattr(error, "exit_code"):
            typer.echo(f"error: {error.format_message()}", err=True)
            return 2
        if os.environ.get("SSL_GUARD_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        detail = " ".join(str(error).split())[:300]
        typer.echo(
            f"error: unexpected {type(error).__name__}{': ' + detail if detail else ''} "
            "(this is a bug or an environment fault; rerun with --debug or SSL_GUARD_DEBUG=1 for the traceback)",
            err=True,
        )
        return CRASH_EXIT_CODE
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
