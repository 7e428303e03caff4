"""The `ssl-guard` command line: a thin typer app over the library.

One module per command. Command modules import only typer and the standard library at import time;
torch and the detection code are imported inside the command bodies, so `ssl-guard --help` and the
light commands (`check --quarantine`, `verify`) stay instant.
"""

from __future__ import annotations

import sys

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
) -> None:
    """Find backdoor-poisoned images in self-supervised pre-training data and keep them out."""


def _register() -> None:
    from ssl_guard.cli import commands

    for name, function in commands.ALL.items():
        app.command(name)(function)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning every `GuardError` into one line and its exit code.

    Usage errors (a missing argument, an unknown option, a bad value) print click's one-line
    message and exit 2, like a `GuardError`.
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
        raise
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
