"""diagram(): the graph it records (skip connections, folding) and the page in a real browser.

The browser is Debian's Chromium (/usr/bin/chromium, installed by `make test`), driven by Playwright
with the network cut (tests/browser.py): the page must work from the file alone. What the page offers
beyond opening and searching (zoom, pan, fit, edge shapes, details, export) is in
test_inspect_diagram_view.py; hostile names in tests/reliability/test_reliability_diagram.py.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
import torch
from torch import nn

import torchsmith as ts
from torchsmith.inspect.collect import collect, module_params
from torchsmith.inspect.graph import FlowGraph

from browser import Opened, browser, click, decode_png, ready, shown  # noqa: F401 (browser: the fixture)


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


def test_edges_carry_the_shapes_hooks_see_and_nodes_their_inputs_and_arguments():
    model = ts.create_model("resnet18")
    seen = {}  # path -> (input shapes, output shape) from hooks on a real forward

    def hook(path):
        def record(module, args, output):
            seen.setdefault(path, ([tuple(x.shape) for x in args], tuple(output.shape)))
        return record

    hooks = [m.register_forward_hook(hook(p)) for p, m in model.named_modules() if p]
    model(torch.zeros(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    g = graph_of(model, 1, 3, 64, 64)
    assert len(g["edge_shapes"]) == len(g["edges"])
    node = {it["path"]: it for it in g["items"] if it["kind"] == "module"}
    by_id = {it["id"]: it for it in g["items"]}
    checked = 0
    for (src, dst), shapes in zip(g["edges"], g["edge_shapes"]):
        a, b = by_id[src], by_id[dst]
        if a["kind"] == "module" and b["kind"] == "module":  # conv1 -> bn1: the tensor bn1 took
            assert shapes == [list(s) for s in seen[b["path"]][0]]
            checked += 1
    flat = g["edge_shapes"][g["edges"].index([node["avgpool"]["id"], node["fc"]["id"]])]
    assert flat == [[1, 512]] and seen["avgpool"][1] == (1, 512, 1, 1)  # the edge carries the flattened view fc took
    assert checked >= 20
    for path, (ins, _) in seen.items():
        if path in node:
            assert node[path]["inputs"] == [str(s) for s in ins]
    conv = dict(node["conv1"]["args"])
    c = model.conv1
    assert (conv["in_channels"], conv["out_channels"], conv["kernel_size"], conv["stride"], conv["padding"], conv["bias"]) == (
        str(c.in_channels), str(c.out_channels), str(c.kernel_size), str(c.stride), str(c.padding), str(c.bias is not None))
    assert dict(node["fc"]["args"]) == {"in_features": "512", "out_features": "1000", "bias": "True"}


def test_inputs_and_outputs_are_named_by_their_keys():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x, *, extra):
            return {"logits": self.fc(x), "aux": extra * 2}

    model = Two()
    run = collect(model, (torch.zeros(2, 4, device="meta"),), {"extra": torch.zeros(5, device="meta")}, backend="meta",
                  training=None, params=module_params(model), flow_factory=FlowGraph)
    labels = [it["label"] for it in run.graph.to_dict()["items"] if it["kind"] in ("input", "output")]
    assert labels == ["input 0", "input extra", "output logits", "output aux"]


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


def open_page(browser, path):
    opened = Opened(browser, path)
    return opened.page, opened.errors, opened.requests


def distinct_colours(browser, png: bytes) -> int:
    return decode_png(browser, png)["colours"]


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
