"""The ``torchsmith`` command line: thin commands over the public API.

    $ torchsmith list 'resnet*'
    $ python -m torchsmith list --json

Exit codes: 0 success, 1 a torchsmith error (message on stderr), 2 bad usage.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import TorchsmithError

app = typer.Typer(
    name="torchsmith",
    help="Define, inspect, modify, save and load PyTorch models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_err = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Define, inspect, modify, save and load PyTorch models."""


def _fail(exc: TorchsmithError) -> None:
    _err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
    raise typer.Exit(1)


@app.command("list")
def list_cmd(
    pattern: str = typer.Argument("*", help="fnmatch pattern on model names, e.g. 'resnet*'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """List registered models with their parameter counts (built on the meta device: no memory, no compute)."""
    import torch

    from .registry import create_model, list_models

    rows = []
    for name in list_models(pattern):
        with torch.device("meta"):
            model = create_model(name)
        rows.append({"name": name, "params": sum(p.numel() for p in model.parameters())})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        _err.print(f"no registered model matches {pattern!r}; try 'torchsmith list'")
        raise typer.Exit(1)
    table = Table(title=f"torchsmith models matching {pattern!r}")
    table.add_column("name")
    table.add_column("params", justify="right")
    for row in rows:
        table.add_row(row["name"], f"{row['params']:,}")
    Console().print(table)


def main(argv: Optional[list[str]] = None) -> int:
    """Console-script entry point; returns the exit code."""
    try:
        app(args=argv, prog_name="torchsmith", standalone_mode=True)
    except SystemExit as exc:  # typer/click exit with the command's code
        return int(exc.code or 0)
    except TorchsmithError as exc:
        _err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
