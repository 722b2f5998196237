"""How result objects show themselves: a short text in a REPL (``repr``), an HTML table in a notebook.

Every report (``Summary``, ``Trace``, ``LoadReport``, ``FreezeReport``, ``CheckpointInfo``, ``CheckpointDiff``)
builds its ``_repr_html_`` with :func:`html_table`, which escapes every cell: model, layer and key names
come from outside and are shown as text, never as markup.

    >>> print(html_table("keys", ["key", "shape"], [["<b>w</b>", "(2, 3)"]], notes=["1 tensor"]))
    <div class="torchsmith-report"><table>
    <caption style="text-align:left"><strong>keys</strong></caption>
    <thead><tr><th style="text-align:left">key</th><th style="text-align:left">shape</th></tr></thead>
    <tbody>
    <tr><td style="text-align:left">&lt;b&gt;w&lt;/b&gt;</td><td style="text-align:left">(2, 3)</td></tr>
    </tbody></table>
    <p style="font-family:monospace">1 tensor</p></div>
    >>> capped(list(range(12)), 10)
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 2)
"""

from __future__ import annotations

import html
from collections.abc import Collection, Iterable, Sequence
from typing import TypeVar

__all__ = ["REPR_ROWS", "html_table", "capped", "more"]

REPR_ROWS = 40  # rows a repr or a notebook table shows before "... and N more"

T = TypeVar("T")


def capped(items: Sequence[T], limit: int | None) -> tuple[list[T], int]:
    """The first ``limit`` items (all when ``limit`` is None) and how many were left out."""
    shown = list(items) if limit is None else list(items[:limit])
    return shown, len(items) - len(shown)


def more(left: int, what: str, hint: str) -> str:
    """``"... and 12 more tensors (print(info) lists them)"``, or ``""`` when nothing was left out."""
    return f"... and {left:,} more{' ' + what if what else ''} ({hint})" if left else ""


def _cell(value: object, align: str) -> str:
    text = html.escape(str(value)).replace("\n", "<br>")
    return f'<td style="text-align:{align}">{text}</td>'


def html_table(
    title: str,
    header: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    notes: Sequence[str] = (),
    right: Collection[int] = (),
) -> str:
    """One table as HTML: ``title``, a header row, the rows (columns in ``right`` aligned right), then ``notes``
    as lines of text. Every string is escaped (``html.escape``); newlines in a cell become line breaks."""
    align = ["right" if i in right else "left" for i in range(len(header))]
    head = "".join(f'<th style="text-align:{a}">{html.escape(h)}</th>' for h, a in zip(header, align))
    body = "\n".join("<tr>" + "".join(_cell(v, a) for v, a in zip(row, align)) + "</tr>" for row in rows)
    lines = [
        '<div class="torchsmith-report"><table>',
        f'<caption style="text-align:left"><strong>{html.escape(title)}</strong></caption>',
        f"<thead><tr>{head}</tr></thead>",
        "<tbody>",
        *([body] if body else []),
        "</tbody></table>",
    ]
    text = "<br>".join(html.escape(n) for n in notes if n)
    return "\n".join(lines) + (f'\n<p style="font-family:monospace">{text}</p>' if text else "") + "</div>"
