"""Step 6 - inspection: summaries of the FPN backbone and the U-Net, a printing forward, an interactive diagram.

Run alone: python examples/tour/step_6_inspect.py   (writes out/unet.html; out/unet.png too where Chromium is)
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

import torchsmith

console = Console()
OUT = Path("out")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def dict_of_layers() -> nn.Module:
    """The tutorial's dict-of-layers composition: named layers, one added by key after construction."""

    class DictNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleDict(OrderedDict(linear=nn.Linear(784, 256), act=nn.ReLU()))
            self.layers["output"] = nn.Linear(256, 10)

        def forward(self, x):
            for layer in self.layers.values():
                x = layer(x)
            return x

    return DictNet()


def screenshot(page: Path, png: Path) -> bool:
    """A picture of the page with the deepest encoder block open, when Chromium is on this machine (not needed:
    the page itself is the result)."""
    if not Path(CHROMIUM).exists():
        return False
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        tab.goto(page.resolve().as_uri())
        drawn = "body[data-ready='1']"  # the page sets it once a layout is drawn (its CSP forbids eval: no wait_for_function)
        tab.wait_for_selector(drawn, state="attached", timeout=60_000)
        tab.click("g.node[data-path='encoder.3']", position={"x": 12, "y": 10})  # open the deepest encoder block
        tab.wait_for_selector(drawn, state="attached", timeout=60_000)
        tab.screenshot(path=str(png))
        browser.close()
    return True


def summaries() -> list:
    """The FPN backbone's and the U-Net's summaries (console.print fits them to the terminal)."""
    fpn = torchsmith.create_model("resnet152_fpn")
    unet = torchsmith.create_model("unet")
    return [torchsmith.summary(fpn, (1, 3, 224, 224), depth=1),
            torchsmith.summary(unet, (1, 3, 256, 256), depth=1, mode="train")]


def tables() -> list:
    """What this step prints as tables (tests/test_examples.py checks they fit 80 columns)."""
    return summaries()


def main() -> None:
    # shapes, parameters (frozen ones counted), FLOPs and memory, on the meta device: nothing allocated
    fpn_summary, s = summaries()
    console.print(fpn_summary)  # the table, as wide as the terminal allows (print(summary): 140 columns)
    console.print(s)
    console.print(f"U-Net training step at 256x256: {s.totals.training_bytes / 2**20:.0f} MiB "
                  f"({s.saved_bytes / 2**20:.0f} MiB of it activations kept for backward)\n")

    # the tutorial prints inside forward; trace does it for any model, and names the layer that fails
    console.print("[bold]trace of the dict-of-layers composition[/]")
    torchsmith.trace(dict_of_layers(), torch.randn(1, 784))
    broken = nn.Sequential(nn.Conv2d(3, 20, 5), nn.ReLU(), nn.Conv2d(30, 64, 5))
    try:
        torchsmith.trace(broken, torch.randn(1, 3, 224, 224), file=None)
    except torchsmith.InspectError as err:
        console.print(f"[red]InspectError:[/] {str(err).split(': RuntimeError')[0]}", highlight=False)

    # one self-contained HTML page: open it in any browser, offline
    unet = torchsmith.create_model("unet")
    page = torchsmith.diagram(unet, (1, 3, 256, 256), path=OUT / "unet.html")
    console.print(f"\nwrote {page} ({page.stat().st_size / 2**20:.1f} MiB, layout engine inlined): open it in any "
                  f"browser, offline ({page.resolve().as_uri()})", highlight=False)
    png = OUT / "unet.png"
    if screenshot(page, png):
        console.print(f"wrote {png} (a picture of it, by headless Chromium)")


if __name__ == "__main__":
    main()
