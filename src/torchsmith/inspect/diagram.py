"""``diagram(model, input_size, path=...)``: one self-contained, offline HTML page of the architecture.

The page holds everything inline: the graph as JSON, the script and styles that draw it, and the
vendored layout engine (elkjs, the Eclipse Layout Kernel's layered algorithm; ``vendor/README.md``).
No server, no system binary, no network. Modules open and close by hierarchy (collapsed by default, so a
5,000-node model opens at its top level), repeated blocks are folded, search expands to a match, edges
carry tensor shapes, a click shows a layer's arguments and shapes; zoom, pan, fit, and export as SVG or
PNG. ``diagram`` leaves the model untouched (it runs on the meta device like :func:`~torchsmith.summary`).

Security model (names come from the model, a spec or a checkpoint: hostile input). The template is filled
in one pass, so no value is ever read as a placeholder; the graph goes only into a
``<script type="application/json">`` block with ``<``, ``>``, ``&``, U+2028 and U+2029 written as ``\\u``
escapes; the page's script renders every name as text (``textContent``, SVG text nodes), never as HTML;
and a Content-Security-Policy forbids all network access and runs only the page's own script and style,
named by their SHA-256 hashes, computed here as the page is written.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint.atomic import atomic_write
from ..errors import InspectError
from ..runner import backend_order, describe, example_call, refuse_uninitialised, renamed
from .collect import collect, module_params
from .graph import FlowGraph
from .totals import format_flops

__all__ = ["diagram", "render_page", "script_json", "ELK_VERSION"]

ELK_VERSION = "0.12.1"


_PLACEHOLDER = re.compile(r"__(TITLE|META|CSP|STYLE|SCRIPT|ELK|DATA)__")
# inside <script type="application/json">: nothing may close the block or open a comment; U+2028/9 end JS lines
_JSON_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026", 0x2028: "\\u2028", 0x2029: "\\u2029"}


@cache
def _asset(name: str) -> str:
    """A file shipped beside this module; a script or style that could close its own element is refused."""
    text = resources.files("torchsmith.inspect").joinpath(name).read_text(encoding="utf-8")
    if name.endswith((".js", ".css")) and re.search(r"</(script|style)|<!--", text, re.IGNORECASE):
        raise InspectError(f"the diagram asset {name} contains '</script', '</style' or '<!--', which would end its "
                           "element early; reinstall torchsmith (or refresh the vendored copy: make vendor-elk)")
    return text


@cache
def _csp_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def script_json(value: Any) -> str:
    """``value`` as JSON for a ``<script type="application/json">`` block: ``<``, ``>``, ``&``, U+2028 and
    U+2029 written as ``\\u`` escapes, so no name can end the block, open a comment or break a line of script.

    >>> script_json({"name": "</script><!--"})
    '{"name":"\\\\u003c/script\\\\u003e\\\\u003c!--"}'
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).translate(_JSON_ESCAPES)


def render_page(graph: dict[str, Any], *, title: str, meta: str) -> str:
    """The page's HTML for ``graph`` (:meth:`FlowGraph.to_dict`): the template filled in one pass, the data as
    escaped JSON, and a Content-Security-Policy allowing only the page's own script and style (by hash).
    """
    style, script, elk = _asset("diagram.css"), _asset("diagram.js"), _asset("vendor/elk.bundled.js")
    csp = "; ".join([
        "default-src 'none'",
        f"script-src {_csp_source(elk)} {_csp_source(script)}",
        f"style-src {_csp_source(style)}",
        "img-src blob: data:",  # the PNG export draws the SVG through an image made in the page
        "base-uri 'none'",
        "form-action 'none'",
    ])  # fmt: skip
    values = {
        "TITLE": html.escape(title), "META": html.escape(meta), "CSP": html.escape(csp), "STYLE": style,
        "SCRIPT": script, "ELK": elk, "DATA": script_json({"title": title, **graph}),
    }  # fmt: skip
    return _PLACEHOLDER.sub(lambda m: values[m[1]], _asset("diagram.html"))  # one pass: values are never rescanned


def diagram(
    model: nn.Module,
    input_size: Sequence[int] | Sequence[Sequence[int]] | None = None,
    *,
    path: str | os.PathLike = "model.html",
    example_inputs: Any = None,
    kwargs: dict | None = None,
    dtype: torch.dtype | Sequence[torch.dtype] | None = None,
    backend: str | None = None,
    allow_real: bool = False,
    title: str | None = None,
    inputs: Any = None,
    device: str | None = None,
) -> Path:
    """Write an interactive architecture diagram of ``model`` to ``path`` (one HTML file) and return it.

    Inputs as for :func:`~torchsmith.summary` (``input_size`` or ``example_inputs``; ``dtype``,
    ``backend``, ``allow_real``; ``inputs=`` and ``device=`` are their deprecated old names). Nodes are
    modules without children and the ops between them (a skip connection's ``add`` or ``cat``);
    groups are modules with children.

    Raises:
        InspectError: no backend could run the forward (the message names the module and shapes).

    Example:

        >>> import torchsmith
        >>> page = torchsmith.diagram(torchsmith.create_model("unet"), (1, 3, 64, 64), path="out/unet.html")
        >>> page.name, page.stat().st_size > 1_000_000   # the layout engine is inlined
        ('unet.html', True)
    """
    example_inputs = renamed(example_inputs, inputs, new="example_inputs", old="inputs", error=InspectError)
    backend = renamed(backend, device, new="backend", old="device", error=InspectError) or "meta"
    order = backend_order(backend, allow_real=allow_real, error=InspectError)
    refuse_uninitialised(model, error=InspectError, action="draw it")
    args, kw = example_call(model, input_size=input_size, example_inputs=example_inputs, kwargs=kwargs, dtype=dtype,
                            guess=False, error=InspectError)
    params = module_params(model)
    errors = []
    for name in order:
        run = collect(model, args, kw, backend=name, training=None, params=params, flow_factory=FlowGraph)
        if run.error is None:
            break
        errors.append(f"{name}: {run.error}")
    else:
        raise InspectError("cannot draw the model: " + "; ".join(errors) + " (allow_real=True runs it for real)")
    desc = describe((args, kw))
    graph = run.graph.to_dict()
    total = sum(p.numel() for p in model.parameters())
    name = title or type(model).__name__
    meta = f"input {desc} \u00b7 {total:,} parameters \u00b7 {format_flops(run.flops)} \u00b7 {len(graph['items'])} nodes"
    page = render_page(graph, title=name, meta=meta)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as f:  # a reader (a browser reloading) sees the old page or the new one
        f.write(page.encode("utf-8"))
    return out
