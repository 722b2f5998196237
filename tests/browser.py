"""Pages in a real browser: Debian's Chromium (/usr/bin/chromium, asked for by `make test`) driven by Playwright,
with the network cut. Test modules import the ``browser`` fixture from here.

The diagram page forbids ``eval`` (its Content-Security-Policy), so waiting uses selectors, and what a test
measures in the page it reads through Playwright's own calls (bounding boxes, attributes), never through
``wait_for_function`` strings.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from helpers import CHROMIUM, CHROMIUM_ARGS as ARGS  # Debian's Chromium, or `make test CHROMIUM=...`


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Opened:
    """A page opened from a file, with what it did: console errors, page errors, dialogs, requests."""

    def __init__(self, browser: Any, path: Path, *, width: int = 1200, height: int = 800, bypass_csp: bool = False):
        self.context = browser.new_context(viewport={"width": width, "height": height}, bypass_csp=bypass_csp,
                                           accept_downloads=True)
        self.page = page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.console: list[str] = []
        page.on("console", lambda m: (self.console.append(m.text), m.type == "error" and self.errors.append(m.text)))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.file = path.as_uri()
        # the file itself loads; anything else (a network request, another file) fails
        page.route("**/*", lambda route: route.continue_() if route.request.url == self.file else route.abort())
        page.goto(self.file)
        ready(page)

    def close(self) -> None:
        self.context.close()


def ready(page: Any, timeout: int = 60_000) -> None:
    """Wait for the diagram's layout to be drawn (the page sets ``data-ready`` on its body)."""
    page.wait_for_selector("body[data-ready='1']", state="attached", timeout=timeout)


def click(page: Any, path: str) -> None:
    """Click a node's header (an open group's middle holds its children), then wait for the new layout."""
    node = page.locator(f"g.node[data-path='{path}']")
    b = node.bounding_box()
    node.click(position={"x": min(12, b["width"] / 4), "y": min(10, b["height"] / 4)})
    ready(page)


def shown(page: Any) -> set[str]:
    return set(page.eval_on_selector_all("g.node", "els => els.map(e => e.dataset.path)"))


def decode_png(browser: Any, png: bytes, points: list[tuple[int, int]] = ()) -> dict[str, Any]:
    """Decode a PNG in the browser (a canvas on a blank page): its size, its number of distinct colours, and
    the ``[r, g, b]`` at each of ``points``."""
    page = browser.new_page()
    out = page.evaluate("""async ([src, points]) => {
        const img = new Image(); img.src = src; await img.decode();
        const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
        const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
        const d = ctx.getImageData(0, 0, c.width, c.height).data; const seen = new Set();
        for (let i = 0; i < d.length; i += 4) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
        const at = points.map(([x, y]) => { const i = 4 * (y * c.width + x); return [d[i], d[i + 1], d[i + 2]]; });
        return { width: img.width, height: img.height, colours: seen.size, at }; }""",
                        ["data:image/png;base64," + base64.b64encode(png).decode(), list(points)])
    page.close()
    return out


def overlap(a: dict[str, float], b: dict[str, float]) -> float:
    """The area two bounding boxes (``{"x", "y", "width", "height"}``) share."""
    w = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
    h = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
    return max(w, 0) * max(h, 0)


def inside(a: dict[str, float], b: dict[str, float], slack: float = 0.5) -> bool:
    """Whether box ``a`` lies within box ``b``."""
    return (a["x"] >= b["x"] - slack and a["y"] >= b["y"] - slack and a["x"] + a["width"] <= b["x"] + b["width"] + slack
            and a["y"] + a["height"] <= b["y"] + b["height"] + slack)
