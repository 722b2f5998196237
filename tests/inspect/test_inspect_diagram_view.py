"""The diagram page as a newcomer uses it: zoom, pan and fit; panels that never cover the drawing; tensor shapes
on the edges; a layer's arguments and shapes in the details panel; export as SVG and PNG.

Each test measures the page in Chromium (tests/browser.py): bounding boxes of nodes, labels and panels, the
pixels of a screenshot, and the exported files parsed on their own. References are independent of the page:
forward hooks for shapes, the modules' own attributes for arguments, the ratio a zoom step promises.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from torch import nn

import torchsmith as ts
from browser import Opened, browser, click, decode_png, inside, overlap, ready, shown  # noqa: F401 (browser: the fixture)

# fills of closed nodes, as the page draws them (module, op, input/output, group, fold)
NODE_FILLS = {(0xEA, 0xF2, 0xFF), (0xFF, 0xF6, 0xE5), (0xE9, 0xF7, 0xEE), (0xEE, 0xF0, 0xF4), (0xF3, 0xEE, 0xFB)}
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def resnet(tmp_path_factory) -> Path:
    return ts.diagram(ts.create_model("resnet18"), (1, 3, 64, 64), path=tmp_path_factory.mktemp("pages") / "r18.html")


def nodes(page) -> dict[int, dict]:
    """Every drawn node by id: its path, whether it is an open group, its box on screen and its width in the layout."""
    return {int(k): v for k, v in page.eval_on_selector_all("g.node", """els => Object.fromEntries(els.map(g => {
        const rect = g.querySelector('rect'), r = rect.getBoundingClientRect();
        return [g.dataset.id, {path: g.dataset.path, open: g.classList.contains('open'), x: r.x, y: r.y,
                               width: r.width, height: r.height, layout: +rect.getAttribute('width')}]; }))""").items()}


def node(page, path: str) -> dict:
    return next(n for n in nodes(page).values() if n["path"] == path)


def labels(page) -> list[dict]:
    return page.eval_on_selector_all("g.edge-label", """els => els.map(g => {
        const r = g.querySelector('rect').getBoundingClientRect();
        return {text: g.textContent, x: r.x, y: r.y, width: r.width, height: r.height}; })""")


def box(page, selector: str) -> dict:
    return page.locator(selector).bounding_box()


def hit_at(page, x: float, y: float) -> str | None:
    """The path of the node Chromium finds at a point of the screen (what a click there reaches), or None."""
    return page.evaluate("([x, y]) => { const e = document.elementFromPoint(x, y); const g = e && e.closest('g.node');"
                         " return g ? g.dataset.path : null; }", [x, y])


def centre(b: dict) -> tuple[float, float]:
    return b["x"] + b["width"] / 2, b["y"] + b["height"] / 2


def hook_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[list[tuple], tuple]]:
    """path -> (input shapes, output shape) of each module's first call, from forward hooks on a real run."""
    seen: dict[str, tuple[list[tuple], tuple]] = {}

    def hook(path):
        def record(module, args, output):
            seen.setdefault(path, ([tuple(a.shape) for a in args], tuple(output.shape)))
        return record

    handles = [m.register_forward_hook(hook(p)) for p, m in model.named_modules() if p]
    model(x)
    for h in handles:
        h.remove()
    return seen


def test_panels_never_cover_the_drawing_and_an_expanded_group_stays_in_view(browser, tmp_path):
    path = ts.diagram(ts.create_model("unet"), (1, 3, 64, 64), path=tmp_path / "unet.html")
    opened = Opened(browser, path, width=1000, height=640)
    page = opened.page
    canvas, panels = box(page, "#canvas"), [box(page, s) for s in ("header", "#details", "footer")]
    assert all(overlap(canvas, p) == 0 for p in panels)  # the canvas is its own cell of the page's grid
    assert canvas["width"] >= 600 and canvas["height"] >= 500
    for group, low in (("decoder.3", True), ("decoder.2", False), ("encoder.0", False)):
        page.keyboard.press("0")  # fit: the whole model in the canvas, the last decoder block at its bottom
        before = node(page, group)
        click(page, group)
        after = node(page, group)
        if low:  # opened where it was, the group would reach below the canvas: the view had to move up
            grown = after["height"] * before["width"] / after["width"]  # its height at the scale it was clicked at
            assert before["y"] + grown > canvas["y"] + canvas["height"] and after["y"] < before["y"]
        shot = tmp_path / f"expanded-{group}.png"
        png = page.screenshot(path=shot)
        drawn = nodes(page)
        children = [n for n in drawn.values() if n["path"].startswith(group + ".")]
        assert children, group
        for n in children:  # every child of the group just opened shows whole, inside the canvas, not under a panel
            assert inside(n, canvas), (group, n)
            assert all(overlap(n, p) == 0 for p in panels)
            assert hit_at(page, *centre(n)) == n["path"]
        # the screenshot agrees: no node's fill shows in the details panel or the footer
        grid = [(int(p["x"] + i), int(p["y"] + j)) for p in panels[1:] for i in range(4, int(p["width"]) - 4, 12)
                for j in range(4, int(p["height"]) - 4, 12)]
        assert not [c for c in decode_png(browser, png, grid)["at"] if tuple(c) in NODE_FILLS]
        # and inside the canvas, each child's box is painted with a node's fill (somewhere between its text)
        interior = [(int(n["x"] + n["width"] * i / 6), int(n["y"] + n["height"] * j / 6)) for n in children
                    for i in range(1, 6) for j in range(1, 6)]
        colours = [tuple(c) for c in decode_png(browser, png, interior)["at"]]
        for i, n in enumerate(children):
            assert set(colours[25 * i: 25 * (i + 1)]) & NODE_FILLS, (group, n)
    assert opened.errors == []
    opened.close()


def test_fit_puts_every_node_inside_the_canvas(browser, resnet, tmp_path):
    opened = Opened(browser, resnet, width=1100, height=700)
    page = opened.page
    for _ in range(3):
        page.click("#expand-all")
        ready(page)
    canvas = box(page, "#canvas")
    assert not all(inside(n, canvas) for n in nodes(page).values())  # the whole model does not fit at this size
    page.click("#fit")
    drawn = nodes(page)
    assert len(drawn) > 60
    assert all(inside(n, canvas) for n in drawn.values())
    k = drawn[min(drawn)]["width"] / drawn[min(drawn)]["layout"]  # the scale, read off a box
    assert k < 1 and abs(float(page.inner_text("#zoom").rstrip("%")) - 100 * k) <= 0.5
    page.screenshot(path=tmp_path / "fit.png")
    opened.close()
    small = ts.diagram(nn.Sequential(nn.Linear(4, 4)), (1, 4), path=tmp_path / "small.html")
    opened = Opened(browser, small)
    opened.page.click("#fit")  # a small model is not blown up beyond its actual size
    assert all(math.isclose(n["width"], n["layout"], rel_tol=1e-3) for n in nodes(opened.page).values())
    opened.close()


def test_zoom_buttons_wheel_and_keys_scale_by_their_factors(browser, resnet):
    opened = Opened(browser, resnet)
    page = opened.page
    cx, cy = centre(box(page, "#canvas"))
    before = node(page, "conv1")
    page.click("#zoom-in")
    after = node(page, "conv1")
    assert math.isclose(after["width"] / before["width"], 1.25, rel_tol=1e-3)
    assert math.isclose(after["x"], cx + (before["x"] - cx) * 1.25, abs_tol=0.5)  # about the canvas centre
    assert math.isclose(after["y"], cy + (before["y"] - cy) * 1.25, abs_tol=0.5)
    assert page.inner_text("#zoom") == f"{round(after['width'] / after['layout'] * 100)}%"
    page.click("#zoom-out")
    back = node(page, "conv1")
    assert all(math.isclose(back[k], before[k], abs_tol=0.5) for k in ("x", "y", "width", "height"))
    # the wheel zooms by exp(-deltaY / 500) about the pointer: the point under it stays put
    px, py = centre(before)
    page.mouse.move(px, py)
    page.mouse.wheel(0, -100)
    page.wait_for_timeout(100)
    wheeled = node(page, "conv1")
    assert math.isclose(wheeled["width"] / before["width"], math.exp(0.2), rel_tol=1e-3)
    assert math.isclose(centre(wheeled)[0], px, abs_tol=0.5) and math.isclose(centre(wheeled)[1], py, abs_tol=0.5)
    page.keyboard.press("-")
    keyed = node(page, "conv1")
    assert math.isclose(keyed["width"] / wheeled["width"], 0.8, rel_tol=1e-3)
    page.keyboard.press("1")  # actual size: a box is as wide on screen as in the layout
    assert math.isclose(node(page, "conv1")["width"], before["layout"], rel_tol=1e-3)
    assert page.inner_text("#zoom") == "100%"
    assert opened.errors == []
    opened.close()


def test_dragging_pans_and_a_drag_is_not_a_click(browser, resnet):
    opened = Opened(browser, resnet)
    page = opened.page
    canvas = box(page, "#canvas")
    before, paths = nodes(page), shown(page)
    page.mouse.move(canvas["x"] + 20, canvas["y"] + canvas["height"] - 20)  # empty canvas
    page.mouse.down()
    page.mouse.move(canvas["x"] + 80, canvas["y"] + canvas["height"] - 50, steps=5)
    page.mouse.move(canvas["x"] + 140, canvas["y"] + canvas["height"] - 80, steps=5)
    page.mouse.up()
    after = nodes(page)
    assert all(math.isclose(after[i]["x"] - before[i]["x"], 120, abs_tol=0.5) for i in before)
    assert all(math.isclose(after[i]["y"] - before[i]["y"], -60, abs_tol=0.5) for i in before)
    layer2 = node(page, "layer2")  # a drag that starts on a group pans and leaves the group closed
    page.mouse.move(layer2["x"] + 12, layer2["y"] + 10)
    page.mouse.down()
    page.mouse.move(layer2["x"] + 60, layer2["y"] + 40, steps=5)
    page.mouse.up()
    page.wait_for_timeout(200)
    assert shown(page) == paths and math.isclose(node(page, "layer2")["x"], layer2["x"] + 48, abs_tol=0.5)
    click(page, "layer2")  # and a click after it still opens the group
    assert "layer2.0" in shown(page)
    assert opened.errors == []
    opened.close()


def test_edges_show_the_shapes_they_carry_clear_of_the_boxes(browser, resnet, tmp_path):
    seen = hook_shapes(ts.create_model("resnet18"), torch.zeros(1, 3, 64, 64))
    opened = Opened(browser, resnet)
    page = opened.page
    click(page, "layer1")
    click(page, "layer1.0")
    page.click("#fit")
    page.screenshot(path=tmp_path / "edges.png")
    texts = [label["text"] for label in labels(page)]
    for path in ("bn1", "relu", "maxpool", "layer1.0.bn1", "layer1.0.conv2", "fc"):  # what each of these took
        assert "\u00d7".join(map(str, seen[path][0][0])) in texts, path
    assert "1\u00d73\u00d764\u00d764" in texts and "1\u00d71000" in texts  # the input, the output
    placed = labels(page)
    closed = [n for n in nodes(page).values() if not n["open"]]
    assert all(overlap(lab, n) == 0 for lab in placed for n in closed)  # ELK placed the labels between the boxes
    assert all(overlap(a, b) == 0 for i, a in enumerate(placed) for b in placed[i + 1:])
    opened.close()


def test_details_show_a_layers_arguments_and_its_shapes(browser, resnet):
    model = ts.create_model("resnet18")
    seen = hook_shapes(model, torch.zeros(1, 3, 64, 64))
    opened = Opened(browser, resnet)
    page = opened.page
    click(page, "conv1")
    rows = dict(page.eval_on_selector_all("#arguments tr", "trs => trs.map(r => [...r.cells].map(c => c.textContent))"))
    conv = model.conv1
    assert rows == {"in_channels": "3", "out_channels": "64", "kernel_size": str(conv.kernel_size), "stride": str(conv.stride),
                    "padding": str(conv.padding), "dilation": str(conv.dilation), "groups": "1", "bias": "False",
                    "padding_mode": "'zeros'"}
    details = dict(page.eval_on_selector_all("#details table:first-of-type tr",
                                             "trs => trs.map(r => [r.cells[0].textContent, r.cells[1].innerText])"))
    assert details["inputs"] == str(seen["conv1"][0][0]) and details["outputs"] == str(seen["conv1"][1])
    assert details["params"] == f"{sum(p.numel() for p in conv.parameters()):,}"
    assert "conv1" not in [*shown(page)][:0] and page.locator("g.node.selected").get_attribute("data-path") == "conv1"
    click(page, "layer1")  # a group: its own arguments (BasicBlock's are not attributes: none), its shapes
    details = dict(page.eval_on_selector_all("#details table:first-of-type tr",
                                             "trs => trs.map(r => [r.cells[0].textContent, r.cells[1].innerText])"))
    assert details["inputs"] == str(seen["layer1"][0][0]) and details["children"] == "2"
    assert opened.errors == []
    opened.close()


def test_export_as_svg_holds_every_shown_node_and_as_png_decodes_at_twice_its_size(browser, resnet, tmp_path):
    opened = Opened(browser, resnet)
    page = opened.page
    click(page, "layer1")
    click(page, "layer3")
    with page.expect_download() as svg_download:
        page.click("#export-svg")
    assert svg_download.value.suggested_filename == "ResNet.svg"
    text = Path(svg_download.value.path()).read_text()
    root = ET.fromstring(text)  # parses as XML on its own
    assert root.tag == f"{SVG}svg"
    width, height = float(root.get("width")), float(root.get("height"))
    groups = [g for g in root.iter(f"{SVG}g") if "node" in (g.get("class") or "").split()]
    assert {g.get("data-path") for g in groups} == shown(page) and len(groups) == len(nodes(page))
    for g in groups:  # each box lies inside the picture, with its label as text
        x, y = map(float, g.get("transform")[len("translate("):-1].split(","))
        rect = g.find(f"{SVG}rect")
        assert 0 <= x and x + float(rect.get("width")) <= width and 0 <= y and y + float(rect.get("height")) <= height
    assert "<script" not in text and "foreignObject" not in text and "href" not in text  # a picture, nothing that runs
    with page.expect_download() as png_download:
        page.click("#export-png")
    assert png_download.value.suggested_filename == "ResNet.png"
    png = Path(png_download.value.path()).read_bytes()
    conv = next(g for g in groups if g.get("data-path") == "conv1")  # a module's fill at the corner of its box, doubled
    x, y = map(float, conv.get("transform")[len("translate("):-1].split(","))
    w, h = float(conv.find(f"{SVG}rect").get("width")), float(conv.find(f"{SVG}rect").get("height"))
    corner = (int(2 * (10 + x + w - 5)), int(2 * (10 + y + h - 5)))  # 10: the export's margin
    decoded = decode_png(browser, png, [corner, (2, 2)])
    assert (decoded["width"], decoded["height"]) == (2 * width, 2 * height)
    assert decoded["at"] == [[0xEA, 0xF2, 0xFF], [255, 255, 255]] and decoded["colours"] > 20
    (tmp_path / "export.png").write_bytes(png)
    assert opened.requests == [opened.file] and opened.errors == []  # exports stay in the page: no request
    opened.close()


def test_boxes_never_overlap_and_every_label_fits_its_box(browser, resnet, tmp_path):
    """At every level of expansion: two boxes are apart, or one lies inside the other and that one is an open
    group (the layout nests children in it); each node's text lies inside its own box; and the screenshot
    shows each closed node's own fill across its box (nothing drawn over it)."""
    opened = Opened(browser, resnet, width=1100, height=700)
    page = opened.page
    for level in range(4):
        page.click("#fit")
        drawn = list(nodes(page).values())
        for i, a in enumerate(drawn):
            for b in drawn[i + 1:]:
                if overlap(a, b) > 0:
                    outer = a if inside(b, a) else b if inside(a, b) else None
                    assert outer is not None and outer["open"], (level, a, b)
        texts = page.eval_on_selector_all("g.node", """els => els.map(g => {
            const r = g.querySelector('rect').getBoundingClientRect();
            return [g.dataset.path, {x: r.x, y: r.y, width: r.width, height: r.height},
                    [...g.querySelectorAll('text')].map(t => { const b = t.getBoundingClientRect();
                        return {x: b.x, y: b.y, width: b.width, height: b.height}; })]; })""")
        assert all(t and all(inside(x, r, slack=1) for x in t) for _, r, t in texts), level
        page.keyboard.press("1")  # actual size (fit shrinks boxes to a few pixels): the boxes in the canvas
        png = page.screenshot(path=tmp_path / f"level-{level}.png")
        canvas = box(page, "#canvas")
        closed = [n for n in nodes(page).values() if not n["open"] and inside(n, canvas)]
        assert len(closed) >= 3, level  # a 5 x 5 grid inside each: mostly its own fill, between its text
        grid = [(int(n["x"] + n["width"] * i / 6), int(n["y"] + n["height"] * j / 6)) for n in closed
                for i in range(1, 6) for j in range(1, 6)]
        at = [tuple(c) for c in decode_png(browser, png, grid)["at"]]
        painted = {n["path"]: sum(c in NODE_FILLS for c in at[25 * k: 25 * (k + 1)]) for k, n in enumerate(closed)}
        assert all(v >= 12 for v in painted.values()), (level, {p: v for p, v in painted.items() if v < 12})
        page.click("#expand-all")
        ready(page)
    assert len(drawn) > 60 and opened.errors == []
    opened.close()
