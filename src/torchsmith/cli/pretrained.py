"""Commands about pretrained weights: ``pretrained`` (the table) and ``fetch`` (a file into the torch hub cache)."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .app import app, err_console


@app.command("pretrained")
def pretrained_cmd(
    pattern: str = typer.Argument("*", help="fnmatch pattern on model names or model.tag, e.g. 'resnet5*'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """List the registered pretrained weights: tag, default, classes, accuracy, file, and whether it is cached."""
    from ..pretrained import all_weights, cache_path, list_pretrained

    names = set(list_pretrained(pattern))
    rows = [dict(w.to_dict(), cached=cache_path(w).is_file(), path=str(cache_path(w))) for w in all_weights() if w.name in names]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        err_console.print(f"no pretrained weights match {pattern!r}; try 'torchsmith pretrained'")
        raise typer.Exit(1)
    table = Table(title=f"pretrained weights matching {pattern!r}")
    table.add_column("weights (* default)", no_wrap=True)
    table.add_column("classes", justify="right")
    table.add_column("acc@1", justify="right")
    table.add_column("eval input", no_wrap=True)
    table.add_column("cached")
    for r in rows:
        acc = r["meta"].get("acc@1")
        resize = r["meta"].get("resize_size") or round(r["input_size"][-1] / r["crop_pct"])
        table.add_row(
            r["name"] + (" *" if r["default"] else ""), str(r["num_classes"] or "-"),
            f"{acc:.2f}" if isinstance(acc, (int, float)) else "-",
            f"{resize}->{r['input_size'][-1]} {r['interpolation']}", "yes" if r["cached"] else "no",
        )  # fmt: skip
    out = Console()
    out.print(table)
    out.print(f"cache: {rows[0]['path'].rsplit('/', 1)[0]}", highlight=False)
    out.print("create_model(MODEL, weights=TAG) loads them; torchsmith fetch MODEL [--weights TAG] downloads them.", highlight=False)


@app.command("fetch")
def fetch_cmd(
    model: str = typer.Argument(..., help="A model with pretrained weights, e.g. resnet50."),
    weights: Optional[str] = typer.Option(None, "--weights", help="The tag (default: the model's default weights)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Put a model's pretrained weights into the torch hub cache (downloaded and hash-checked unless already there)."""
    from ..pretrained import fetch_weights, get_weights

    entry = get_weights(model, weights)
    path = fetch_weights(model, weights, progress=not as_json)
    if as_json:
        typer.echo(json.dumps({"weights": entry.name, "path": str(path), "sha256": entry.sha256}))
    else:
        Console().print(f"{entry.name}: {path}", highlight=False)
