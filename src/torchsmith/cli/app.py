"""The Typer app every command registers on, its error handling, and the console-script entry point."""

from __future__ import annotations

from typing import Optional

import typer
from typer.exceptions import TyperException
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from ..errors import TorchsmithError

err_console = Console(stderr=True)


class _Commands(TyperGroup):
    """Every command's TorchsmithError becomes its message on stderr and exit code 1; bad usage stays click's
    (exit code 2). Anything else is a bug of ours: one line naming it, a request to report it, exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TorchsmithError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False)  # [x] is text, not style
            raise typer.Exit(1) from exc
        except (TyperException, typer.Exit, typer.Abort):  # bad usage, an exit code a command chose, Ctrl-C
            raise
        except Exception as exc:  # the last resort: every refusal above is a TorchsmithError
            cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            err_console.print(
                f"[bold red]error:[/] {escape(cause)} (this is a bug in torchsmith: please report it, with the command you ran)",
                markup=True, highlight=False,
            )
            raise typer.Exit(1) from exc


app = typer.Typer(
    cls=_Commands,
    name="torchsmith",
    help="Define, inspect, modify, save and load PyTorch models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Define, inspect, modify, save and load PyTorch models."""


def main(argv: Optional[list[str]] = None) -> int:
    """Console-script entry point; returns the exit code."""
    try:
        app(args=argv, prog_name="torchsmith", standalone_mode=True)
    except SystemExit as exc:  # typer/click exit with the command's code
        return int(exc.code or 0)
    return 0

