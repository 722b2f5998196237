"""Commands about checkpoint files: ``inspect``, ``convert``, ``diff``, ``sign``, ``verify``."""

from __future__ import annotations

import json
from collections import Counter
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import TorchsmithError
from .app import app, err_console


INSPECT_ROWS = 40  # rows `torchsmith inspect` prints without --all
_LIMIT_HELP = (
    "Raise a bound for a file you trust, NAME=VALUE (repeatable): max_expansion, max_header_bytes, max_tensors, "
    "max_json_bytes, max_config_bytes, max_config_values, max_config_depth (see torchsmith.Limits)."
)


def _limits(values: Optional[list[str]]):
    """``--limit NAME=VALUE`` options as Limits (a bad one is a usage error: exit code 2)."""
    from ..checkpoint import Limits

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
    limit: Optional[list[str]] = typer.Option(None, "--limit", metavar="NAME=VALUE", help=_LIMIT_HELP),
) -> None:
    """Show a checkpoint's keys, shapes, dtypes, totals, prefixes, layout, metadata and checksum status."""
    from ..checkpoint import inspect_checkpoint
    from ..checkpoint.formats import RESERVED_PREFIX
    from ..units import format_bytes

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


def _shard_folder(dst: str) -> str:
    """Where a sharded convert writes: ``out/m.safetensors`` -> the folder ``out/m/`` holding the shards and
    ``m.safetensors.index.json`` (load the folder or the index)."""
    from pathlib import Path

    target = Path(dst)
    return str(target.with_name(target.name.removesuffix(target.suffix)) / target.name)


@app.command("convert")
def convert_cmd(
    src: str = typer.Argument(..., help="Input checkpoint (.pt/.pth/.bin/.safetensors, index, directory, or a distributed checkpoint directory)."),
    dst: str = typer.Argument(..., help="Output path; the suffix picks the format (.safetensors or .pt)."),
    strip_prefix: Optional[str] = typer.Option(None, "--strip-prefix", help="Remove this prefix from keys, e.g. 'module.'."),
    max_shard_size: Optional[str] = typer.Option(None, "--max-shard-size", metavar="SIZE", help="Shard safetensors output, e.g. '2GB': the shards and their index go into a folder named after DST (out/m.safetensors -> out/m/)."),
    trusted: bool = typer.Option(False, "--trusted", help="Unpickle a torch file that needs code (only for files you trust)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (input, output, format, tensors, values, bytes, files)."),
    limit: Optional[list[str]] = typer.Option(None, "--limit", metavar="NAME=VALUE", help=_LIMIT_HELP),
) -> None:
    """Convert .pt <-> .safetensors (optionally sharded), verifying checksums, with a progress bar.

    A distributed checkpoint directory (torch.distributed.checkpoint) is consolidated into one file.
    """
    from pathlib import Path

    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from ..checkpoint import convert_checkpoint, inspect_checkpoint
    from ..units import format_bytes

    limits = _limits(limit)
    target = _shard_folder(dst) if max_shard_size and dst.endswith(".safetensors") else dst
    with Progress(TextColumn("converting"), BarColumn(), DownloadColumn(), console=err_console, disable=as_json) as bar:
        task = bar.add_task("convert", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        out = convert_checkpoint(src, target, strip_prefix=strip_prefix, max_shard_size=max_shard_size, trusted=trusted, progress=progress, limits=limits)
    info = inspect_checkpoint(out, verify=False)  # the header of what was written: no data read again
    folder = Path(target).parent if target != dst else None
    files = sorted(p.name for p in folder.iterdir()) if folder is not None else [out.name]
    row = {
        "input": src, "output": str(out), "folder": str(folder) if folder is not None else None, "format": info.format,
        "layout": info.layout, "tensors": info.tensors, "values": info.values, "bytes": info.nbytes, "files": files,
        "stripped_prefix": strip_prefix, "checksums": "written (xxh3-64)" if info.checksums == "present" else info.checksums,
    }  # fmt: skip
    if as_json:
        typer.echo(json.dumps(row, indent=2))
        return
    where = f"{len(files)} files in {folder}/ (load the folder or {out.name})" if folder is not None else str(out)
    typer.echo(f"wrote {where}: {info.tensors} tensors, {info.values:,} values, {format_bytes(info.nbytes, large_decimals=1)}, "
               f"{info.format}")


def _diff_side(target: str) -> str | dict:
    """A checkpoint path as is; anything else is a registered model name, built on meta (keys, shapes, dtypes)."""
    from pathlib import Path

    import torch

    from .inputs import registry

    if Path(target).exists() or any(sep in target for sep in "/\\") or Path(target).suffix:
        return target
    with torch.device("meta"):
        return registry().create_model(target).state_dict()  # an unknown name: UnknownModelError with the closest names


@app.command("diff")
def diff_cmd(
    a: str = typer.Argument(..., help="A checkpoint, or a registered model name."),
    b: str = typer.Argument(..., help="A checkpoint, or a registered model name (compared by keys, shapes and dtypes)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    show_all: bool = typer.Option(False, "--all", help="List every difference (by default the first 10 of each kind and a count)."),
    trusted: bool = typer.Option(False, "--trusted", help="Unpickle torch files that need code (only for files you trust)."),
    limit: Optional[list[str]] = typer.Option(None, "--limit", metavar="NAME=VALUE", help=_LIMIT_HELP),
) -> None:
    """Compare two checkpoints (or one and a model name): missing, extra, shape/dtype changes, max abs difference.

    Keys are matched as loading would match them (module. and _orig_mod. removed) and shown that way. A model
    name (torchsmith diff ckpt.safetensors resnet50) is built on the meta device: keys, shapes and dtypes are
    compared, not values. Exit code 0 when they are the same, 3 when they differ, 1 on error.
    """
    import dataclasses

    from ..checkpoint import diff_checkpoints
    from ..checkpoint.info import DIFF_ROWS

    sides = [_diff_side(a), _diff_side(b)]
    d = diff_checkpoints(*sides, trusted=trusted, limits=_limits(limit))
    d = dataclasses.replace(d, a=a, b=b)
    if as_json:
        typer.echo(json.dumps(d.to_dict(), indent=2))
    else:
        typer.echo(d.render(None if show_all else DIFF_ROWS, more_hint="--all lists them; --json gives all"))
    if not d.same:
        raise typer.Exit(3)


@app.command("sign")
def sign_cmd(
    path: str = typer.Argument(..., help="A checkpoint file or a save_model directory."),
    key: str = typer.Option(..., "--key", metavar="PEM", help="Elliptic-curve private key (PEM)."),
    signature: Optional[str] = typer.Option(None, "--signature", metavar="FILE", help="Where to write it (default: DIR/model.sig or FILE.sig)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Sign a checkpoint with a private key (OpenSSF model-signing, offline)."""
    from ..checkpoint import sign_checkpoint

    written = sign_checkpoint(path, private_key=key, signature=signature)
    typer.echo(json.dumps({"path": path, "signature": str(written)}) if as_json else f"signed: {written}")


@app.command("verify")
def verify_cmd(
    path: str = typer.Argument(..., help="A checkpoint file or a save_model directory."),
    key: str = typer.Option(..., "--key", metavar="PEM", help="The signer's public key (PEM)."),
    signature: Optional[str] = typer.Option(None, "--signature", metavar="FILE", help="The signature (default: DIR/model.sig or FILE.sig)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (a failed check is exit code 1 and its message on stderr)."),
) -> None:
    """Check a checkpoint's signature against a public key; exit 1 when it does not match."""
    from ..checkpoint import verify_checkpoint

    verify_checkpoint(path, public_key=key, signature=signature)
    typer.echo(json.dumps({"path": path, "signature_ok": True}) if as_json else f"signature ok: {path}")
