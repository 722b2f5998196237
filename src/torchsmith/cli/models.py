"""Commands about models and specs: ``list``, ``build``, ``spec-schema``."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .app import app, err_console
from .inputs import example_for, parse_inputs, registry, spec_input


@app.command("list")
def list_cmd(
    pattern: str = typer.Argument("*", help="fnmatch pattern on model names, e.g. 'resnet*'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """List registered models with their parameter counts (built on the meta device: no memory, no compute)."""
    import torch

    models = registry()
    rows = []
    for name in models.list_models(pattern):
        with torch.device("meta"):
            model = models.create_model(name)
        rows.append({"name": name, "params": sum(p.numel() for p in model.parameters())})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        err_console.print(f"no registered model matches {pattern!r}; try 'torchsmith list'")
        raise typer.Exit(1)
    table = Table(title=f"torchsmith models matching {pattern!r}")
    table.add_column("name")
    table.add_column("params", justify="right")
    for row in rows:
        table.add_row(row["name"], f"{row['params']:,}")
    Console().print(table)


@app.command("build")
def build_cmd(
    spec: str = typer.Argument(..., help="A spec file (.yaml/.json)."),
    inputs: Optional[list[str]] = typer.Option(None, "--input", metavar="SHAPE", help="Input shape, e.g. 1,3,224,224 (or name=shape per graph input); overrides the spec's input."),
    save: Optional[str] = typer.Option(None, "--save", help="Save the built model here (config.json + model.safetensors)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Validate and build a model spec; print its summary, parameter count and output shape (and save it)."""
    from pathlib import Path

    from ..spec import build
    from ..spec.source import read_spec

    doc = read_spec(Path(spec))
    input_size = parse_inputs(inputs) if inputs else None
    model = build(doc, input_size=input_size, device=None if save else "meta")  # once; meta: no memory, no init
    report = None
    if input_size is not None or "input" in doc:  # the summary of the built model (meta: no memory, no compute)
        from ..inspect import summary

        report = summary(model, **example_for(model, inputs or spec_input(spec), "float32"), depth=1)
    leaves = report.outputs if report is not None else []  # the output as the summary found it: a shape, or by key
    row = {
        "spec": spec,
        "name": doc.get("name"),
        "input": input_size if input_size is not None else doc.get("input"),
        "output": leaves[0].shape if len(leaves) == 1 and not leaves[0].key else {o.key: o.shape for o in leaves} or None,
        "params": sum(p.numel() for p in model.parameters()),
        "summary": json.loads(report.to_json()) if report is not None else None,
    }
    if save:
        from ..models_io import save_model

        row["saved"] = str(save_model(model, save))
    if as_json:
        typer.echo(json.dumps(row, indent=2))
        return
    out = Console()
    if report is not None:
        out.print(report, highlight=False)
    out.print(f"parameters: {row['params']:,}", highlight=False)
    out.print(f"input: {row['input']}   output: {row['output'] or 'unknown (pass --input)'}", highlight=False)
    if save:
        out.print(f"saved to {row['saved']}", highlight=False)


@app.command("spec-schema")
def spec_schema_cmd(
    as_json: bool = typer.Option(False, "--json", help="Accepted as by every command: the schema is printed as JSON either way."),
) -> None:
    """Print the JSON Schema of model specs (for editors: check and complete spec files)."""
    from ..spec import spec_schema

    typer.echo(json.dumps(spec_schema(), indent=2))
