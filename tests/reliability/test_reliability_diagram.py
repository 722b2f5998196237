"""Hostile names on the diagram page (issue 20, class 2): nothing from a model or a spec runs as script.

A second audit put a spec input named ``__DATA__`` and an output key holding ``<img onerror>`` into a page:
the template's chained replacements put raw JSON into the HTML, Chromium ran the handler and sent a request
from a page promised to be offline. Here pages are built from names that try every way out of their
context: the template's placeholders, ``</script>``, ``<img onerror>``, ``<!--<script>``, U+2028 / U+2029,
an attribute break-out, ``</title>``, in layer names, module paths, class names, a title, keyword-input
names, output keys, a module's ``extra_repr`` and an argument read back from an attribute; and a spec with
``__DATA__`` / ``__ELK__`` as its input and output names. Each page is opened in Chromium twice, with its
Content-Security-Policy and with the policy bypassed (so escaping alone must hold), and the test checks: no
script of ours ran (no dialog, ``window.__pwned`` unset, no console error, which is where a blocked inline
script would show), the page rendered, every name shows as the text it is, and the only request is the file.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import torchsmith as ts
from browser import Opened, browser, ready  # noqa: F401 (browser: the fixture)
from reliability_tools import record

# names without dots (a module name cannot hold one); each would set window.__pwned or ask the network if run
HOSTILE = [
    "__DATA__",
    "__ELK__",
    "__SCRIPT__",
    "__CSP__",
    "</script><script>__pwned=1;alert(1)</script>",
    "<img src=x onerror=__pwned=1>",
    "<img src=http://evil/x onerror=__pwned=1>",
    "<!--<script>__pwned=1//",
    "\u2028__pwned=1\u2029",
    "\"><svg onload=__pwned=1>",
    "</title><script>__pwned=1</script>",
    "</style><script>__pwned=1</script>",
    "&lt;script&gt;__pwned=1&lt;/script&gt;",
]


class Leaf(nn.Module):
    """A leaf whose printed form and whose argument read back from an attribute are hostile."""

    def __init__(self, mode: str = "plain"):
        super().__init__()
        self.mode = mode

    def forward(self, x):
        return x * 2

    def extra_repr(self) -> str:
        return "</script><img src=x onerror=__pwned=1>"


def hostile_model() -> nn.Module:
    """Layer names, nested paths and class names from HOSTILE, keyword inputs and a dict output keyed by them."""

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            inner = nn.Sequential()
            for i, name in enumerate(HOSTILE):
                cls = type(name, (nn.Module,), {"forward": lambda self, x: torch.relu(x)})  # the class name too
                inner.add_module(name, cls() if i % 2 else Leaf(mode=name))
            self.add_module(HOSTILE[4], inner)  # a group named </script>..., paths "</script>....<img ...>"
            self.fc = nn.Linear(3, 3)

        def forward(self, **inputs):
            x = sum(inputs.values())
            y = self.get_submodule(HOSTILE[4])(self.fc(x))
            return {name: y + i for i, name in enumerate(HOSTILE)}

    return Model()


def check(browser, path, names: list[str]) -> int:
    """Open ``path`` with and without its policy; return how many names were found shown as text."""
    html = path.read_text()
    data = html[html.index('type="application/json">'):]
    data = data[:data.index("</script>")]
    assert not re.search(r"[<>&\u2028\u2029]", data[len('type="application/json">'):])  # the JSON block holds none
    assert html.count("<script") == 3 and html.count("</script>") == 3  # ELK, the data, the page's own
    found = 0
    for bypass in (False, True):
        opened = Opened(browser, path, bypass_csp=bypass)
        page = opened.page
        ready(page)
        assert page.locator("g.node").count() > 2  # it rendered
        page.click("#expand-all")
        ready(page)
        page.click("#expand-all")
        ready(page)
        assert page.evaluate("() => typeof window.__pwned") == "undefined"
        assert opened.dialogs == [] and opened.errors == [], (opened.dialogs, opened.errors)
        assert opened.requests == [opened.file], opened.requests
        text = "\n".join(page.eval_on_selector_all("g.node title, g.edge-label, #title, #meta",
                                                   "els => els.map(e => e.textContent)"))
        for g in page.locator("g.node.module, g.node.input, g.node.output").all():  # details panels, as text nodes
            g.dispatch_event("click")
            text += "\n" + page.locator("#details").text_content()
        shown = [n for n in names if n in text]
        assert page.evaluate("() => typeof window.__pwned") == "undefined" and opened.dialogs == [] and opened.errors == []
        assert opened.requests == [opened.file]
        found = max(found, len(shown))
        opened.close()
    return found


def test_hostile_names_in_a_model_show_as_text_and_run_nothing(browser, tmp_path):
    model = hostile_model()
    inputs = {name: torch.zeros(1, 3) for name in HOSTILE[:6]}  # keyword inputs named by hostile strings
    path = ts.diagram(model, example_inputs=inputs, path=tmp_path / "hostile.html", title=HOSTILE[10])
    found = check(browser, path, HOSTILE)
    assert found == len(HOSTILE)  # every name reached the page, as text
    record("diagram page: hostile names", names=len(HOSTILE), places=9, opened=2, scripts_run=0, requests=0)


def test_a_spec_named_with_placeholders_makes_a_safe_page(browser, tmp_path):
    spec = {"graph": {"inputs": ["__DATA__", "__ELK__"], "nodes": {
        "__SCRIPT__": {"Linear": [4, 4], "from": "__DATA__"}, "__CSP__": {"ReLU": None, "from": "__SCRIPT__"},
        "total": {"add": None, "from": ["__CSP__", "__ELK__"]}},
        "outputs": {"__TITLE__": "total", "__META__": "__SCRIPT__"}}}
    model = ts.build(spec)
    path = ts.diagram(model, example_inputs={"__DATA__": torch.zeros(1, 4), "__ELK__": torch.zeros(1, 4)},
                      path=tmp_path / "spec.html")
    assert check(browser, path, ["__DATA__", "__ELK__", "__SCRIPT__", "__CSP__", "__TITLE__", "__META__"]) == 6
    with pytest.raises(ts.SpecError, match=r"graph\.outputs\[.*cannot name an output"):  # hostile output keys: refused
        ts.build({**spec, "graph": {**spec["graph"], "outputs": {"<img src=x onerror=__pwned=1>": "total"}}})
