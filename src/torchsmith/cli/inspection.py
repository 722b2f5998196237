"""Commands that look inside a model: ``summary``, ``trace``, ``diagram``."""

from __future__ import annotations

import json
from typing import Optional

import typer

from .app import app
from .inputs import example_for, load_model_arg, spec_input


_INPUT_HELP = "Input shape, e.g. 1,3,224,224, or name=shape per keyword input (repeatable). Default: guessed from the first layer."
_MODEL_HELP = "A registered model name, a save_model directory, or a spec file (.yaml/.json)."
_BACKEND_HELP = "Where the forward runs: meta (no memory, no compute), fake (FakeTensorMode) or real."


@app.command("summary")
def summary_cmd(
    model: str = typer.Argument(..., help=_MODEL_HELP),
    input_size: Optional[list[str]] = typer.Option(None, "--input", "-i", metavar="SHAPE", help=_INPUT_HELP),
    dtype: str = typer.Option("float32", "--dtype", help="Input dtype (long for token ids)."),
    depth: int = typer.Option(3, "--depth", "-d", min=0, help="Deepest level printed."),
    mode: str = typer.Option("same", "--mode", help="same, train or eval (train: the activation memory of a training step)."),
    backend: str = typer.Option("meta", "--backend", help=_BACKEND_HELP),
    allow_real: bool = typer.Option(False, "--allow-real", help="Run for real when meta and fake tensors both fail."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table."),
) -> None:
    """Shapes, parameters, FLOPs and memory of a model, on the meta device (no memory, no compute).

    Exit code 1 when the forward cannot run (the rows it reached are still printed).
    """
    from ..inspect import summary

    net = load_model_arg(model, meta=backend == "meta" and not allow_real, command="summary")
    input_size = input_size or spec_input(model)
    s = summary(net, **example_for(net, input_size, dtype), depth=depth, mode=mode, backend=backend, allow_real=allow_real)
    if as_json:
        typer.echo(s.to_json())
    elif markdown:
        typer.echo(s.to_markdown())
    else:
        typer.echo(str(s), nl=False)
    if not s.complete:  # the rows it could compute are printed; the exit code says it is partial
        from ..errors import InspectError

        tried_real = allow_real or backend == "real"
        raise InspectError(f"incomplete summary: {s.error}" + ("" if tried_real else " (--allow-real runs the model for real)"))


@app.command("trace")
def trace_cmd(
    model: str = typer.Argument(..., help=_MODEL_HELP),
    input_size: Optional[list[str]] = typer.Option(None, "--input", "-i", metavar="SHAPE", help=_INPUT_HELP),
    dtype: str = typer.Option("float32", "--dtype", help="Input dtype (long: zeros, i.e. token id 0)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts: every call with its path, type, depth and shapes."),
) -> None:
    """Run a real forward on random inputs and print every module call with the shapes in and out."""
    import torch

    from ..inspect import trace

    net = load_model_arg(model, meta=False, command="trace").eval()
    input_size = input_size or spec_input(model)
    make = lambda shape, dt: torch.randn(*shape, dtype=dt) if dt.is_floating_point else torch.zeros(*shape, dtype=dt)  # noqa: E731
    with torch.no_grad():
        done = trace(net, **example_for(net, input_size, dtype, make), file=None if as_json else "stdout")
    if as_json:
        typer.echo(json.dumps({"model": model, **done.to_dict()}, indent=2))


@app.command("diagram")
def diagram_cmd(
    model: str = typer.Argument(..., help=_MODEL_HELP),
    output: str = typer.Option("model.html", "--output", "-o", help="The HTML file to write."),
    input_size: Optional[list[str]] = typer.Option(None, "--input", "-i", metavar="SHAPE", help=_INPUT_HELP),
    dtype: str = typer.Option("float32", "--dtype", help="Input dtype (long for token ids)."),
    backend: str = typer.Option("meta", "--backend", help=_BACKEND_HELP),
    allow_real: bool = typer.Option(False, "--allow-real", help="Run for real when meta and fake tensors both fail."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write an interactive architecture diagram: one offline HTML file (open it in a browser)."""
    from ..inspect import diagram

    net = load_model_arg(model, meta=backend == "meta" and not allow_real, command="diagram")
    input_size = input_size or spec_input(model)
    out = diagram(net, **example_for(net, input_size, dtype), path=output, backend=backend, allow_real=allow_real)
    if as_json:
        typer.echo(json.dumps({"model": model, "output": str(out), "bytes": out.stat().st_size}))
    else:
        typer.echo(f"wrote {out}")
