"""Formatting a summary: a rich table (``str()``), Markdown, and the footer lines shared by both."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ..display import REPR_ROWS, capped, html_table, more
from .records import LayerRecord, format_shape
from .totals import format_bytes, format_flops

if TYPE_CHECKING:
    from .summary import Summary

__all__ = ["rich_table", "render_text", "render_short", "render_html", "render_markdown", "footer_lines"]

COLUMNS = ("Module", "Type", "Output shape", "Params", "Train", "FLOPs", "Output bytes")
RIGHT = ("Params", "FLOPs", "Output bytes")


def _outputs(rec: LayerRecord) -> str:
    if rec.status in ("not run", "not reached"):
        return f"({rec.status})"
    if rec.status in ("failed", "unfinished"):
        return f"? ({rec.status})"
    if not rec.outputs:  # no tensor output, or a container that is never called itself
        return "--"
    if len(rec.outputs) == 1 and not rec.outputs[0].key:
        return format_shape(rec.outputs[0].shape)
    return "\n".join(f"{leaf.key}: {format_shape(leaf.shape)}" for leaf in rec.outputs)


def _names(records: list[LayerRecord]) -> list[tuple[int, str]]:
    """(indent, label) per row: the path relative to the nearest ancestor printed above it, so rows of
    interleaved containers (a U-Net's ``downs`` and ``encoder``) still read as a tree."""
    stack: list[str] = []
    out = []
    for rec in records:
        if not rec.path:
            stack = [""]
            out.append((0, rec.type))
            continue
        while stack and stack[-1] and not rec.path.startswith(stack[-1] + "."):
            stack.pop()
        parent = stack[-1] if stack else ""
        out.append((len(stack), rec.path[len(parent) + 1:] if parent else rec.path))
        stack.append(rec.path)
    return out


def _cells(rec: LayerRecord, indent: int, label: str) -> list[str]:
    name = "  " * indent + label + (f" (call {rec.call})" if rec.call > 1 else "")
    if rec.call > 1:
        params = "(shared)" if rec.params else "--"
    else:
        params = f"{rec.params:,}" if rec.params else "--"
        if rec.tied:
            params += " (tied: " + ", ".join(rec.tied) + ")"
    computed = rec.status in ("ok", "container")
    flops = format_flops(rec.flops, "") if computed and rec.flops else ("--" if computed else "?")
    nbytes = format_bytes(rec.output_bytes) if computed and rec.outputs else ("--" if computed else "?")
    return [name, rec.type, _outputs(rec), params, rec.trainable if rec.params else "--", flops.strip(), nbytes]


def footer_lines(s: Summary) -> list[str]:
    t = s.totals
    dtypes = ", ".join(f"{dt} {format_bytes(n)}" for dt, n in sorted(t.param_bytes.items())) or "none"
    lines = [
        f"Parameters: {t.total_params:,} ({t.trainable_params:,} trainable, "
        f"{t.total_params - t.trainable_params:,} frozen; a tied or shared parameter counted once)",
        f"Parameter bytes: {dtypes}; buffers {format_bytes(t.buffer_bytes)}",
        f"FLOPs: {format_flops(t.total_flops)} (1 FLOP = one multiply or add, so 2 x MACs) for input {s.input_desc}",
        f"Saved for backward ({s.mode} mode): {format_bytes(t.saved_bytes)}",
        f"Training step with Adam (weights + grads + 2 states + saved activations): {format_bytes(t.training_bytes)}",
    ]
    if s.uncounted_ops:
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(s.uncounted_ops.items()))
        lines.append(f"Not counted (element-wise / reductions, no FLOP formula): {ops}")
    lines.append(f"Computed on: {s.backend}" + (" (fallback: " + "; ".join(s.attempts) + ")" if s.attempts else ""))
    if s.error:
        lines.append(f"Incomplete: {s.error}")
    return lines


DROP_ORDER = ("Train", "Output bytes", "Type", "FLOPs")  # left out, in this order, to fit a narrow terminal


def _table(s: Summary, depth: int | None, columns: tuple[str, ...]) -> Table:
    table = Table(title=f"{s.model_type} summary", box=box.SIMPLE_HEAD, title_justify="left")
    for col in columns:
        table.add_column(col, justify="right" if col in RIGHT else "left", overflow="fold")
    rows = s.rows(depth)
    keep = [COLUMNS.index(c) for c in columns]
    for rec, (indent, label) in zip(rows, _names(rows)):
        cells = _cells(rec, indent, label)
        table.add_row(*(cells[i] for i in keep))
    return table


def rich_table(s: Summary, depth: int | None = None, width: int | None = None) -> Group:
    """The table and its footer; with ``width``, the columns of DROP_ORDER are left out one by one (and named)
    until every row fits on one line of ``width`` characters."""
    columns = COLUMNS
    table = _table(s, depth, columns)
    dropped: list[str] = []
    if width is not None:
        measure = Console(width=10_000, color_system=None, legacy_windows=False)
        for col in DROP_ORDER:
            if Measurement.get(measure, measure.options, table).maximum <= width:
                break
            columns = tuple(c for c in columns if c != col)
            dropped.append(col)
            table = _table(s, depth, columns)
    footer = footer_lines(s)
    if dropped:
        footer.append(f"Columns left out to fit {width} characters: {', '.join(dropped)} (a wider terminal shows them)")
    return Group(table, Text("\n".join(footer)))


def render_text(s: Summary, width: int = 140, depth: int | None = None) -> str:
    """The table as plain text (no colour), ``width`` characters wide, rows down to ``depth`` (the summary's)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False,
                      legacy_windows=False, highlight=False)
    console.print(rich_table(s, depth))
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines()) + "\n"


def short_depth(s: Summary, rows: int = REPR_ROWS) -> int:
    """The deepest level, at most the summary's, whose table has at most ``rows`` rows (at least 1)."""
    depth = s.depth
    while depth > 1 and len(s.rows(depth)) > rows:
        depth -= 1
    return depth


def render_short(s: Summary) -> str:
    """``repr(summary)``: the table down to :func:`short_depth`, and how to see the rest."""
    depth = short_depth(s)
    text = render_text(s, depth=depth)
    if depth < s.depth:
        text += f"(depth {depth} of {s.depth} shown: print(summary) lists all {len(s.rows()):,} rows)\n"
    return text


def render_html(s: Summary) -> str:
    """The notebook table (``_repr_html_``): rows down to :func:`short_depth`, every name escaped."""
    depth = short_depth(s)
    rows = s.rows(depth)
    cells = []
    for rec, (indent, label) in zip(rows, _names(rows)):
        row = _cells(rec, indent, label)
        row[0] = "\u00a0" * (2 * indent) + row[0].strip()
        cells.append(row)
    notes = footer_lines(s)
    shown, left = capped(cells, REPR_ROWS)
    if depth < s.depth:
        notes.append(f"depth {depth} of {s.depth} shown: print(summary) lists all {len(s.rows()):,} rows")
    notes.append(more(left, "rows", "print(summary) lists them"))
    return html_table(f"{s.model_type} summary", COLUMNS, shown, notes=notes,
                      right={i for i, c in enumerate(COLUMNS) if c in RIGHT})


def render_markdown(s: Summary) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---:" if c in RIGHT
                                                          else "---" for c in COLUMNS) + "|"]
    rows = s.rows()
    for rec, (indent, label) in zip(rows, _names(rows)):
        cells = _cells(rec, indent, label)
        cells[0] = "&nbsp;" * (2 * indent) + cells[0].strip()
        lines.append("| " + " | ".join(esc(c) for c in cells) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {line}" for line in footer_lines(s)) + "\n"
