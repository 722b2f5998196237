"""diagram(): the graph it records (skip connections, folding) and the page in a real browser.

The browser is Debian's Chromium (/usr/bin/chromium, installed by `make test`), driven by Playwright
with the network cut: the page must work from the file alone.
"""

from __future__ import annotations

import base64
import time
from collections import Counter

import pytest
import torch
from torch import nn

import torchsmith as ts
from torchsmith.inspect.collect import collect, module_params
from torchsmith.inspect.graph import FlowGraph

from helpers import CHROMIUM  # noqa: E402 - Debian's Chromium, or `make test CHROMIUM=...`
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]


def graph_of(model, *shape):
    run = collect(model, (torch.empty(*shape, device="meta"),), {}, backend="meta", training=None,
                  params=module_params(model), flow_factory=FlowGraph)
    assert run.error is None
    return run.graph.to_dict()


# the recorded graph


def test_skip_connections_are_edges_into_cat_and_add():
    unet = graph_of(ts.create_model("unet"), 1, 3, 64, 64)
    cats = [it["id"] for it in unet["items"] if it["label"] == "cat"]
    into = Counter(dst for _, dst in unet["edges"])
    assert len(cats) == 4 and all(into[c] == 2 for c in cats)  # upsampled path + encoder skip
    resnet = graph_of(ts.create_model("resnet18"), 1, 3, 64, 64)
    adds = [it["id"] for it in resnet["items"] if it["label"] in ("add", "add_")]
    assert len(adds) == 8 and all(Counter(d for _, d in resnet["edges"])[a] == 2 for a in adds)  # 8 BasicBlocks


def test_repeated_blocks_are_folded_and_nodes_carry_numbers():
    g = graph_of(ts.create_model("resnet50"), 1, 3, 64, 64)
    by_id = {it["id"]: it for it in g["items"]}
    folds = [it for it in g["items"] if it["kind"] == "fold"]
    # layer1..layer4 have 3, 4, 6, 3 blocks; block 0 differs (downsample), so 1, 2, 4, 1 repeats follow it
    assert sorted(sum(1 for it in g["items"] if it["parent"] == f["id"]) for f in folds) == [2, 4]
    conv = next(it for it in g["items"] if it["path"] == "layer1.0.conv1")
    assert conv["params"] == 64 * 64 and conv["shapes"] == ["(1, 64, 16, 16)"] and conv["flops"] == 2 * 64 * 64 * 16 * 16
    assert by_id[conv["parent"]]["path"] == "layer1.0"


def test_diagram_of_a_model_meta_cannot_run_needs_allow_real(tmp_path):
    from test_inspect import ItemModel
    from helpers import probe_differences, probe_snapshot

    model = ItemModel()
    before = probe_snapshot(model)
    with pytest.raises(ts.InspectError, match=r"meta: the model \(ItemModel\) got \(3, 4\).*allow_real=True"):
        ts.diagram(model, (3, 4), path=tmp_path / "item.html")
    assert not (tmp_path / "item.html").exists()
    page = ts.diagram(model, (3, 4), path=tmp_path / "item.html", allow_real=True)
    assert page.is_file() and probe_differences(before, probe_snapshot(model)) == []


# the page in a browser


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_page(browser, path):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route("**/*", lambda route: (requests.append(route.request.url), route.continue_()
                                      if route.request.url.startswith("file://") else route.abort()))
    page.goto(path.as_uri())
    ready(page)
    return page, errors, requests


def ready(page, timeout=60_000):
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=timeout)


def click(page, path):
    """Click a node's header (an open group's middle holds its children), then wait for the new layout."""
    page.click(f"g.node[data-path='{path}']", position={"x": 12, "y": 10})
    ready(page)


def shown(page) -> set[str]:
    return set(page.eval_on_selector_all("g.node", "els => els.map(e => e.dataset.path)"))


def distinct_colours(browser, png: bytes) -> int:
    """Decode the screenshot in the browser (canvas) and count its distinct colours."""
    page = browser.new_page()
    n = page.evaluate("""async (src) => {
        const img = new Image(); img.src = src; await img.decode();
        const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
        const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
        const d = ctx.getImageData(0, 0, c.width, c.height).data; const seen = new Set();
        for (let i = 0; i < d.length; i += 4) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
        return seen.size; }""", "data:image/png;base64," + base64.b64encode(png).decode())
    page.close()
    return n


def test_page_renders_offline_without_errors(browser, tmp_path):
    path = ts.diagram(ts.create_model("unet"), (1, 3, 64, 64), path=tmp_path / "unet.html")
    text = path.read_text()
    assert "<script src" not in text and "<link" not in text  # everything inline
    page, errors, requests = open_page(browser, path)
    assert errors == [] and all(u.startswith("file://") for u in requests)
    assert {"stem", "encoder.0", "decoder.3", "head"} <= shown(page)  # the model's top level, collapsed
    assert "stem.0" not in shown(page)
    assert page.locator("path.edge").count() >= 10
    assert distinct_colours(browser, page.screenshot()) > 20  # not blank
    page.close()


def test_expanding_a_module_shows_its_children_and_collapsing_hides_them(browser, tmp_path):
    path = ts.diagram(ts.create_model("resnet18"), (1, 3, 64, 64), path=tmp_path / "r18.html")
    page, errors, _ = open_page(browser, path)
    assert "layer2" in shown(page) and "layer2.0" not in shown(page)
    click(page, "layer2")
    assert {"layer2.0", "layer2.1"} <= shown(page)
    assert "layer2" in page.inner_text("#details") and "525,568" in page.inner_text("#details")  # params of layer2
    click(page, "layer2.0")
    assert {"layer2.0.conv1", "layer2.0.downsample"} <= shown(page)
    click(page, "layer2")
    assert "layer2.0" not in shown(page)
    assert errors == []
    page.close()


def test_search_expands_to_the_match(browser, tmp_path):
    path = ts.diagram(ts.create_model("resnet18"), (1, 3, 64, 64), path=tmp_path / "r18.html")
    page, errors, _ = open_page(browser, path)
    assert "layer3.1.conv2" not in shown(page)
    page.fill("#search", "layer3.1.conv2")
    page.press("#search", "Enter")
    ready(page)
    hit = page.locator("g.node.hit")
    assert hit.count() == 1 and hit.get_attribute("data-path") == "layer3.1.conv2"
    assert page.inner_text("#hits") == "1 found" and "Conv2d" in page.inner_text("#details")
    assert errors == []
    page.close()


class Wide(nn.Module):
    """50 stages of 100 small layers: 5,000 leaf modules (neighbouring stages differ, so nothing folds)."""

    def __init__(self):
        super().__init__()
        self.stages = nn.Sequential(*[
            nn.Sequential(*[nn.Linear(4, 4) if (i + s) % 2 else nn.Tanh() for i in range(100)]) for s in range(50)])

    def forward(self, x):
        return self.stages(x)


def test_five_thousand_node_graph_opens_collapsed_and_expands(browser, tmp_path):
    path = ts.diagram(Wide(), (2, 4), path=tmp_path / "wide.html")
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    start = time.perf_counter()
    page.goto(path.as_uri())
    ready(page)
    opened = time.perf_counter() - start
    assert int(page.inner_text("#status").split(" of ")[1]) >= 5000
    assert opened < 30  # a generous functional bound; the benchmark measures the real figure
    click(page, "stages")
    click(page, "stages.7")
    assert "stages.7.99" in shown(page)
    assert errors == []
    page.close()
