"""The Typer app every command registers on, its error handling, and the console-script entry point.

Nothing here imports torch: ``torchsmith --help`` and ``--version`` answer at once; each command imports
what it needs when it runs.
"""

from __future__ import annotations

import re
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from .._version import __version__
from ..errors import TorchsmithError

err_console = Console(stderr=True)

# the library's hints name Python calls; on the command line, the same advice as options and commands
_CLI_HINTS = (
    (re.compile(r"See torchsmith\.list_models\(\) for all (\d+) names\."), r"Run 'torchsmith list' for all \1 names."),
    (re.compile(r"limits=Limits\(([^)]*)\) \(command line: (--limit [^)]*)\)"), r"\2"),
    (re.compile(r" \(in Python: [^)]*\)"), ""),
    (re.compile(r"pass trusted=True( \(CLI: --trusted\))?"), "pass --trusted"),
    (re.compile(r"\(allow_real=True runs it for real\)"), "(--allow-real runs it for real)"),
    (re.compile(r", or pass weights_path='FILE'"), ""),  # create_model's; no command takes a weights path
)


def cli_message(message: str) -> str:
    """An error message with its Python-call hints said as command-line options (``trusted=True`` -> ``--trusted``)."""
    for pattern, replacement in _CLI_HINTS:
        message = pattern.sub(replacement, message)
    return message


def _metavar(param) -> str:
    """What help shows for a value: an argument's name, an option's long name (``--dtype DTYPE``), in capitals."""
    if param.param_type_name == "argument":
        return (param.name or "value").upper()
    longest = max(param.opts, key=len).lstrip("-")
    return longest.replace("-", "_").upper()


class _Commands(TyperGroup):
    """Every command's TorchsmithError becomes its message on stderr and exit code 1; help shows each value by
    name (``MODEL``, ``--dtype DTYPE``), flags alone."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TorchsmithError as exc:
            err_console.print("[bold red]error:[/] " + escape(cli_message(str(exc))), markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from exc

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        for param in getattr(command, "params", ()):
            if param.metavar is None and not getattr(param, "is_flag", False):
                param.metavar = _metavar(param)
        return command


app = typer.Typer(
    cls=_Commands,
    name="torchsmith",
    help="Define, inspect, modify, save and load PyTorch models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags as flags (no "<bool>"), values by name
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"torchsmith {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Define, inspect, modify, save and load PyTorch models.

    torchsmith COMMAND -h shows a command's options; every command takes --json for scripts.
    """


def main(argv: Optional[list[str]] = None) -> int:
    """Console-script entry point; returns the exit code."""
    try:
        app(args=argv, prog_name="torchsmith", standalone_mode=True)
    except SystemExit as exc:  # typer/click exit with the command's code
        return int(exc.code or 0)
    return 0
