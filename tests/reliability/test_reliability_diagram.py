"""Hostile names on the diagram page (issue 20, class 2): nothing from a model or a spec runs as script.

A second audit put a spec input named ``__DATA__`` and an output key holding ``<img onerror>`` into a page:
the template's chained replacements put raw JSON into the HTML, Chromium ran the handler and sent a request
from a page promised to be offline. Here pages are built from names that try every way out of their
context: the template's placeholders, ``</script>``, ``<img onerror>``, ``<!--<script>``, U+2028 / U+2029,
an attribute break-out, ``</title>``, ``{{`` and ``${`` (template syntaxes), in layer names, module paths, class names, a title, keyword-input
names, output keys, a module's ``extra_repr`` and an argument read back from an attribute; and a spec with
``__DATA__`` / ``__ELK__`` as its input and output names, saved with save_model (hostile checkpoint
metadata beside it) and drawn by ``torchsmith diagram DIR``; a config.json edited to hold hostile names is
refused before any page is written; and the SVG exported from a hostile page is a picture with its names as text. Each page is opened in Chromium twice, with its
Content-Security-Policy and with the policy bypassed (so escaping alone must hold), and the test checks: no
script of ours ran (no dialog, ``window.__pwned`` unset, no console error, which is where a blocked inline
script would show), the page rendered, every name shows as the text it is, and the only request is the file.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import torchsmith as ts
from torchsmith.cli import app
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
    # template and string-interpolation syntaxes: a page that filled names into a template or a JS template
    # literal would evaluate these; here they are names like any other
    "{{__pwned=1}}",
    "${__pwned=1}",
    "`+(__pwned=1)+`",
    "{{\u2028}}${\u2028}",
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
    inputs = {name: torch.zeros(1, 3) for name in [*HOSTILE[:6], HOSTILE[8], *HOSTILE[-4:]]}  # keyword inputs
    path = ts.diagram(model, example_inputs=inputs, path=tmp_path / "hostile.html", title=HOSTILE[10])
    found = check(browser, path, HOSTILE)
    assert found == len(HOSTILE)  # every name reached the page, as text
    exported = export_svg(browser, path)
    assert sum(n in exported for n in HOSTILE) == len(HOSTILE)  # the export holds the names, as text
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


def export_svg(browser, path: Path) -> str:
    """Open every group of the page, export it as SVG, and check the file is a picture: no element or
    attribute that runs script or loads anything, whatever the names. Returns the text it shows."""
    opened = Opened(browser, path)
    page = opened.page
    for _ in range(2):
        page.click("#expand-all")
        ready(page)
    with page.expect_download() as download:
        page.click("#export-svg")
    assert re.fullmatch(r"[A-Za-z0-9_.-]+\.svg", download.value.suggested_filename)  # a hostile title: a plain file name
    root = ET.fromstring(Path(download.value.path()).read_text(encoding="utf-8"))  # parses as XML on its own
    tags = {e.tag.rpartition("}")[2] for e in root.iter()}
    assert tags <= {"svg", "defs", "marker", "path", "g", "rect", "text", "title", "tspan"}, tags
    attributes = {a for e in root.iter() for a in e.attrib}
    assert not [a for a in attributes if a.lower().startswith("on") or "href" in a.lower()], attributes
    assert opened.requests == [opened.file] and opened.errors == [] and opened.dialogs == []
    opened.close()
    return "\n".join(root.itertext())


PLACEHOLDER_SPEC = {"graph": {"inputs": ["__DATA__", "__ELK__"], "nodes": {
    "__SCRIPT__": {"Linear": [4, 4], "from": "__DATA__"}, "__CSP__": {"ReLU": None, "from": "__SCRIPT__"},
    "total": {"add": None, "from": ["__CSP__", "__ELK__"]}},
    "outputs": {"__TITLE__": "total", "__META__": "__SCRIPT__"}}}
CHECKPOINT_HOSTILE = "</script><img src=x onerror=__pwned=1>{{__pwned=1}}${__pwned=1}\u2028<!--<script>"


def test_a_saved_model_drawn_from_its_directory_makes_a_safe_page(browser, tmp_path):
    """The checkpoint route: ``torchsmith diagram DIR`` on a save_model directory whose config.json holds
    placeholder names (the names a spec accepts) and whose weights carry hostile metadata."""
    saved = ts.save_model(ts.build(PLACEHOLDER_SPEC), tmp_path / "saved",
                          metadata={"note": CHECKPOINT_HOSTILE, CHECKPOINT_HOSTILE[:20]: "__DATA__"})
    out = tmp_path / "page.html"
    result = CliRunner().invoke(app, ["diagram", str(saved), "-o", str(out), "-i", "__DATA__=1,4", "-i", "__ELK__=1,4"])
    assert result.exit_code == 0, result.output
    assert check(browser, out, ["__DATA__", "__ELK__", "__SCRIPT__", "__CSP__", "__TITLE__", "__META__"]) == 6


@pytest.mark.parametrize("where, name", [
    ("input", "</script><img src=x onerror=__pwned=1>"),
    ("node", "<!--<script>__pwned=1"),
    ("output", "__DATA__\u2028"),
    ("output", "out\n"),
])  # fmt: skip
def test_a_config_edited_to_hold_hostile_names_is_refused_before_any_page(tmp_path, where, name):
    """Hand-edited config.json (the checksum matches nothing, so it is read with ``verify=False``, as a
    user who edited it on purpose would): its spec's names are checked like a spec's, and no page is written."""
    saved = ts.save_model(ts.build(PLACEHOLDER_SPEC), tmp_path / "saved")
    doc = json.loads((saved / "config.json").read_text())
    graph = doc["kwargs"]["spec"]["graph"]
    if where == "input":
        graph["inputs"][0] = name
        graph["nodes"]["__SCRIPT__"]["from"] = name
    elif where == "node":
        graph["nodes"][name] = graph["nodes"].pop("__CSP__")
        graph["nodes"]["total"]["from"][0] = name
    else:
        graph["outputs"][name] = graph["outputs"].pop("__TITLE__")
    (saved / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ts.TorchsmithError) as refused:
        ts.load_model(saved, verify=False)
    assert repr(name)[1:-1] in str(refused.value) or repr(name) in str(refused.value)  # names what it refused
    out = tmp_path / "page.html"
    result = CliRunner().invoke(app, ["diagram", str(saved), "-o", str(out), "-i", "__DATA__=1,4", "-i", "__ELK__=1,4"])
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)  # refused as a TorchsmithError
    assert not out.exists() and "Traceback" not in result.output # and no page
