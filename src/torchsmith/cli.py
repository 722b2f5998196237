"""The ``torchsmith`` command line: thin commands over the public API.

    $ torchsmith list 'resnet*'
    $ python -m torchsmith list --json

Exit codes: 0 success, 1 a torchsmith error (message on stderr), 2 bad usage.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from .errors import TorchsmithError

_err = Console(stderr=True)


class _Commands(TyperGroup):
    """Every command's TorchsmithError becomes its message on stderr and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TorchsmithError as exc:
            _err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
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


# checkpoints


INSPECT_ROWS = 40  # rows `torchsmith inspect` prints without --all
_LIMIT_HELP = (
    "Raise a bound for a file you trust, NAME=VALUE (repeatable): max_expansion, max_header_bytes, max_tensors, "
    "max_json_bytes, max_config_bytes, max_config_values, max_config_depth (see torchsmith.Limits)."
)


def _limits(values: Optional[list[str]]):
    """``--limit NAME=VALUE`` options as Limits (a bad one is a usage error: exit code 2)."""
    from .checkpoint import Limits

    try:
        return Limits.parse(values) if values else None
    except TorchsmithError as e:
        raise typer.BadParameter(str(e), param_hint="--limit") from e


@app.command("inspect")
def inspect_cmd(
    path: str = typer.Argument(..., help="A checkpoint file, a sharded index, or a directory."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Do not check checksums."),
    trusted: bool = typer.Option(False, "--trusted", help="Unpickle a torch file that needs code (only for files you trust)."),
    show_all: bool = typer.Option(False, "--all", help=f"List every tensor (by default the first {INSPECT_ROWS} and a count)."),
    limit: Optional[list[str]] = typer.Option(None, "--limit", help=_LIMIT_HELP),
) -> None:
    """Show a checkpoint's keys, shapes, dtypes, totals, prefixes, layout, metadata and checksum status."""
    from .checkpoint import inspect_checkpoint
    from .checkpoint.formats import RESERVED_PREFIX
    from .units import format_bytes

    info = inspect_checkpoint(path, verify=not no_verify, trusted=trusted, limits=_limits(limit))
    if as_json:
        typer.echo(json.dumps(info.to_dict(), indent=2))
        return
    table = Table(title=f"{info.path} ({info.format}, {info.layout})")
    table.add_column("key")
    table.add_column("shape")
    table.add_column("dtype")
    rows = info.entries if show_all else info.entries[:INSPECT_ROWS]
    for key, shape, dtype in rows:
        alias = f" = {info.aliases[key]}" if key in info.aliases else ""
        table.add_row(key + alias, "(" + ", ".join(map(str, shape)) + ")", dtype)
    out = Console()
    out.print(table)
    if len(rows) < len(info.entries):
        dtypes = ", ".join(f"{n:,} {d}" for d, n in Counter(d for _, _, d in info.entries).most_common())
        out.print(f"... and {len(info.entries) - len(rows):,} more tensors (--all lists them; --json gives all). dtypes: {dtypes}")
    out.print(f"tensors: {info.tensors}   values: {info.values:,} (parameters and buffers)   bytes: {info.nbytes:,} ({format_bytes(info.nbytes, large_decimals=1)})")
    out.print(f"checksums: {info.checksums}")
    if info.prefixes:
        out.print("prefixes: " + ", ".join(f"{p!r} on {n} keys" for p, n in info.prefixes.items()))
    if info.source_key:
        out.print(f"weights under {info.source_key!r}; other entries: {', '.join(info.other_keys) or 'none'}")
    for k, v in info.metadata.items():
        if not k.startswith(RESERVED_PREFIX):
            out.print(f"metadata {k}: {v}")


@app.command("convert")
def convert_cmd(
    src: str = typer.Argument(..., help="Input checkpoint (.pt/.pth/.bin/.safetensors, index, directory, or a distributed checkpoint directory)."),
    dst: str = typer.Argument(..., help="Output path; the suffix picks the format (.safetensors or .pt)."),
    strip_prefix: Optional[str] = typer.Option(None, "--strip-prefix", help="Remove this prefix from keys, e.g. 'module.'."),
    max_shard_size: Optional[str] = typer.Option(None, "--max-shard-size", help="Shard safetensors output, e.g. '2GB'."),
    trusted: bool = typer.Option(False, "--trusted", help="Unpickle a torch file that needs code (only for files you trust)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    limit: Optional[list[str]] = typer.Option(None, "--limit", help=_LIMIT_HELP),
) -> None:
    """Convert .pt <-> .safetensors (optionally sharded), verifying checksums, with a progress bar.

    A distributed checkpoint directory (torch.distributed.checkpoint) is consolidated into one file.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from .checkpoint import convert_checkpoint

    limits = _limits(limit)
    with Progress(TextColumn("converting"), BarColumn(), DownloadColumn(), console=_err, disable=as_json) as bar:
        task = bar.add_task("convert", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        out = convert_checkpoint(src, dst, strip_prefix=strip_prefix, max_shard_size=max_shard_size, trusted=trusted, progress=progress, limits=limits)
    if as_json:
        typer.echo(json.dumps({"input": src, "output": str(out)}))
    else:
        Console().print(f"wrote {out}")


def _diff_side(target: str) -> str | dict:
    """A checkpoint path as is; anything else is a registered model name, built on meta (keys, shapes, dtypes)."""
    from pathlib import Path

    import torch

    from .registry import create_model

    if Path(target).exists() or any(sep in target for sep in "/\\") or Path(target).suffix:
        return target
    with torch.device("meta"):
        return create_model(target).state_dict()  # an unknown name: UnknownModelError with the closest names


@app.command("diff")
def diff_cmd(
    a: str = typer.Argument(..., help="A checkpoint, or a registered model name."),
    b: str = typer.Argument(..., help="A checkpoint, or a registered model name (compared by keys, shapes and dtypes)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    trusted: bool = typer.Option(False, "--trusted", help="Unpickle torch files that need code (only for files you trust)."),
    limit: Optional[list[str]] = typer.Option(None, "--limit", help=_LIMIT_HELP),
) -> None:
    """Compare two checkpoints (or one and a model name): missing, extra, shape/dtype changes, max abs difference.

    A model name (``torchsmith diff ckpt.safetensors resnet50``) is built on the meta device: keys, shapes and
    dtypes are compared, not values. Exit code 0 when they are the same, 3 when they differ, 1 on error.
    """
    import dataclasses

    from .checkpoint import diff_checkpoints

    sides = [_diff_side(a), _diff_side(b)]
    d = diff_checkpoints(*sides, trusted=trusted, limits=_limits(limit))
    d = dataclasses.replace(d, a=a, b=b)
    if as_json:
        typer.echo(json.dumps(d.to_dict(), indent=2))
    else:
        out = Console()
        out.print(f"only in {d.a}: {len(d.only_in_a)}   only in {d.b}: {len(d.only_in_b)}")
        for k in d.only_in_a:
            out.print(f"  - {k}", highlight=False)
        for k in d.only_in_b:
            out.print(f"  + {k}", highlight=False)
        for k, (sa, sb) in d.shape.items():
            out.print(f"  shape {k}: {tuple(sa)} vs {tuple(sb)}", highlight=False)
        for k, (ta, tb) in d.dtype.items():
            out.print(f"  dtype {k}: {ta} vs {tb}", highlight=False)
        differing = {k: v for k, v in d.max_abs_diff.items() if v}
        table = Table(title=f"{len(differing)} of {len(d.max_abs_diff)} shared tensors differ")
        table.add_column("key")
        table.add_column("max abs diff", justify="right")
        for k, v in sorted(differing.items(), key=lambda kv: -kv[1]):
            table.add_row(k, f"{v:.3g}")
        if differing:
            out.print(table)
        out.print("same" if d.same else "different")
    if not d.same:
        raise typer.Exit(3)


@app.command("sign")
def sign_cmd(
    path: str = typer.Argument(..., help="A checkpoint file or a save_model directory."),
    key: str = typer.Option(..., "--key", help="Elliptic-curve private key (PEM)."),
    signature: Optional[str] = typer.Option(None, "--signature", help="Where to write it (default: DIR/model.sig or FILE.sig)."),
) -> None:
    """Sign a checkpoint with a private key (OpenSSF model-signing, offline)."""
    from .checkpoint import sign_checkpoint

    typer.echo(f"signed: {sign_checkpoint(path, private_key=key, signature=signature)}")


@app.command("verify")
def verify_cmd(
    path: str = typer.Argument(..., help="A checkpoint file or a save_model directory."),
    key: str = typer.Option(..., "--key", help="The signer's public key (PEM)."),
    signature: Optional[str] = typer.Option(None, "--signature", help="The signature (default: DIR/model.sig or FILE.sig)."),
) -> None:
    """Check a checkpoint's signature against a public key; exit 1 when it does not match."""
    from .checkpoint import verify_checkpoint

    verify_checkpoint(path, public_key=key, signature=signature)
    typer.echo(f"signature ok: {path}")


# inspection


def _dtype(name: str):
    import torch

    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise typer.BadParameter(f"{name!r} is not a torch dtype (float32, float16, bfloat16, long, int32, bool, ...)")
    return dtype


SPEC_SUFFIXES = (".yaml", ".yml", ".json")


def _load(model: str, *, meta: bool):
    """A registered model name or a spec file (built on the meta device when ``meta``), or a save_model directory."""
    import contextlib
    import os

    import torch

    from .registry import create_model

    if os.path.isdir(model):
        from .models_io import load_model

        return load_model(model)
    with torch.device("meta") if meta else contextlib.nullcontext():
        if model.lower().endswith(SPEC_SUFFIXES) and os.path.isfile(model):
            from pathlib import Path

            from .spec import build

            return build(Path(model))
        return create_model(model)


def _spec_input(model: str) -> Optional[list[str]]:
    """The ``input`` a spec file declares, in ``--input`` form (None for anything else)."""
    import os

    if not (model.lower().endswith(SPEC_SUFFIXES) and os.path.isfile(model)):
        return None
    from pathlib import Path

    from .spec.source import read_spec

    declared = read_spec(Path(model)).get("input")
    if isinstance(declared, dict):
        return [f"{name}={','.join(map(str, shape))}" for name, shape in declared.items()]
    return [",".join(map(str, declared))] if declared else None


def _example(model, values: Optional[list[str]], dtype: str, make=None) -> dict:
    """``{"example_inputs": ...}`` for ``summary`` / ``diagram`` / ``trace`` from ``--input`` (the spec
    commands' format, ``_parse_inputs``): one shape -> one tensor; ``name=shape`` (repeatable) -> keyword
    inputs; none -> guessed from the first layer. ``make(shape, dtype)`` builds the tensors (meta by default)."""
    import torch

    from .runner import example_input

    dt = _dtype(dtype)
    make = make or (lambda shape, dt: torch.empty(*shape, dtype=dt, device="meta"))
    parsed = _parse_inputs(values) if values else list(example_input(model).shape)
    if isinstance(parsed, dict):
        return {"example_inputs": {name: make(shape, dt) for name, shape in parsed.items()}}
    return {"example_inputs": make(parsed, dt)}


_INPUT_HELP = "Input shape, e.g. 1,3,224,224, or name=shape per keyword input (repeatable). Default: guessed from the first layer."
_MODEL_HELP = "A registered model name, a save_model directory, or a spec file (.yaml/.json)."
_BACKEND_HELP = "Where the forward runs: meta (no memory, no compute), fake (FakeTensorMode) or real."


@app.command("summary")
def summary_cmd(
    model: str = typer.Argument(..., help=_MODEL_HELP),
    input_size: Optional[list[str]] = typer.Option(None, "--input", "-i", help=_INPUT_HELP),
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
    from .inspect import summary

    net = _load(model, meta=backend == "meta" and not allow_real)
    input_size = input_size or _spec_input(model)
    s = summary(net, **_example(net, input_size, dtype), depth=depth, mode=mode, backend=backend, allow_real=allow_real)
    if as_json:
        typer.echo(s.to_json())
    elif markdown:
        typer.echo(s.to_markdown())
    else:
        typer.echo(str(s), nl=False)
    if not s.complete:  # the rows it could compute are printed; the exit code says it is partial
        from .errors import InspectError

        raise InspectError(f"incomplete summary: {s.error} (--allow-real runs the model for real)")


@app.command("trace")
def trace_cmd(
    model: str = typer.Argument(..., help=_MODEL_HELP),
    input_size: Optional[list[str]] = typer.Option(None, "--input", "-i", help=_INPUT_HELP),
    dtype: str = typer.Option("float32", "--dtype", help="Input dtype (long: zeros, i.e. token id 0)."),
) -> None:
    """Run a real forward on random inputs and print every module call with the shapes in and out."""
    import torch

    from .inspect import trace

    net = _load(model, meta=False).eval()
    input_size = input_size or _spec_input(model)
    make = lambda shape, dt: torch.randn(*shape, dtype=dt) if dt.is_floating_point else torch.zeros(*shape, dtype=dt)  # noqa: E731
    with torch.no_grad():
        trace(net, **_example(net, input_size, dtype, make))


@app.command("diagram")
def diagram_cmd(
    model: str = typer.Argument(..., help=_MODEL_HELP),
    output: str = typer.Option("model.html", "--output", "-o", help="The HTML file to write."),
    input_size: Optional[list[str]] = typer.Option(None, "--input", "-i", help=_INPUT_HELP),
    dtype: str = typer.Option("float32", "--dtype", help="Input dtype (long for token ids)."),
    backend: str = typer.Option("meta", "--backend", help=_BACKEND_HELP),
    allow_real: bool = typer.Option(False, "--allow-real", help="Run for real when meta and fake tensors both fail."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write an interactive architecture diagram: one offline HTML file (open it in a browser)."""
    from .inspect import diagram

    net = _load(model, meta=backend == "meta" and not allow_real)
    input_size = input_size or _spec_input(model)
    out = diagram(net, **_example(net, input_size, dtype), path=output, backend=backend, allow_real=allow_real)
    if as_json:
        typer.echo(json.dumps({"model": model, "output": str(out), "bytes": out.stat().st_size}))
    else:
        typer.echo(f"wrote {out}")


# specs


def _parse_inputs(values: list[str]) -> object:
    """``1,3,224,224`` -> a shape; ``image=1,3,64,64`` (repeatable) -> {name: shape}."""

    def shape(text: str) -> list[int]:
        try:
            dims = [int(d) for d in text.replace("x", ",").split(",") if d.strip()]
        except ValueError:
            dims = []
        if not dims or any(d < 1 for d in dims):
            raise typer.BadParameter(f"{text!r} is not a shape; write it as 1,3,224,224", param_hint="--input")
        return dims

    if len(values) == 1 and "=" not in values[0]:
        return shape(values[0])
    named = {}
    for v in values:
        name, sep, dims = v.partition("=")
        if not sep:
            raise typer.BadParameter(f"with several inputs, name each: --input image=1,3,64,64 (got {v!r})", param_hint="--input")
        named[name.strip()] = shape(dims)
    return named


@app.command("build")
def build_cmd(
    spec: str = typer.Argument(..., help="A spec file (.yaml/.json)."),
    inputs: Optional[list[str]] = typer.Option(None, "--input", help="Input shape, e.g. 1,3,224,224 (or name=shape per graph input); overrides the spec's input."),
    save: Optional[str] = typer.Option(None, "--save", help="Save the built model here (config.json + model.safetensors)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Validate and build a model spec; print its summary, parameter count and output shape (and save it)."""
    from pathlib import Path

    from .spec import build
    from .spec.source import read_spec

    doc = read_spec(Path(spec))
    input_size = _parse_inputs(inputs) if inputs else None
    model = build(doc, input_size=input_size, device=None if save else "meta")  # once; meta: no memory, no init
    report = None
    if input_size is not None or "input" in doc:  # the summary of the built model (meta: no memory, no compute)
        from .inspect import summary

        report = summary(model, **_example(model, inputs or _spec_input(spec), "float32"), depth=1)
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
        from .models_io import save_model

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
def spec_schema_cmd() -> None:
    """Print the JSON Schema of model specs (for editors: check and complete spec files)."""
    from .spec import spec_schema

    typer.echo(json.dumps(spec_schema(), indent=2))


def main(argv: Optional[list[str]] = None) -> int:
    """Console-script entry point; returns the exit code."""
    try:
        app(args=argv, prog_name="torchsmith", standalone_mode=True)
    except SystemExit as exc:  # typer/click exit with the command's code
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
