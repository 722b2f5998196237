"""What a REPL and a notebook show of each result object: a short table (``repr``), an HTML table
(``_repr_html_``) that renders in a real browser with hostile names shown as text."""

from __future__ import annotations

import html.parser

import pytest
import torch
from helpers import CHROMIUM, CHROMIUM_ARGS
from torch import nn

import torchsmith as ts

HOSTILE = "<img src=x onerror=\"document['title']='pwned'\">&amp;"  # no dot: a module name cannot hold one


class Hostile(nn.Module):
    """A model whose layer name and parameter key are markup."""

    def __init__(self):
        super().__init__()
        self.add_module(HOSTILE, nn.Linear(4, 3))

    def forward(self, x):
        return getattr(self, HOSTILE)(x)


def calls_seen_by_hooks(model, x) -> int:
    seen = []
    handles = [m.register_forward_pre_hook(lambda *a: seen.append(1)) for m in model.modules()]
    model(x)
    for h in handles:
        h.remove()
    return len(seen)


# repr: the short table


def test_summary_repr_is_the_table_as_deep_as_fits_in_40_rows():
    model = ts.create_model("resnet50")
    s = ts.summary(model, (1, 3, 224, 224))
    text = repr(s)
    table_rows = [line for line in text.splitlines() if line.startswith("    ") or line.startswith("  ResNet")]
    assert 10 < len(table_rows) <= 40 and len(text) < 6_000  # was a 40,000-character dataclass dump
    assert all(f"    {name} " in text for name, _ in model.named_children())
    assert f"{sum(p.numel() for p in model.parameters()):,}" in text
    assert "depth 2 of 3 shown: print(summary) lists all 175 rows" in text
    small = ts.summary(ts.create_model("mlp"), (1, 784))
    assert repr(small) == str(small)  # everything fits: the whole table


def test_trace_repr_is_the_first_40_calls_and_a_count():
    model = ts.create_model("resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    t = ts.trace(model, x, file=None)
    lines = repr(t).splitlines()
    calls = calls_seen_by_hooks(model, x)
    assert lines[0] == f"Trace: {calls} module calls; output (1, 1000)"
    assert len(lines) == 1 + 40 + 1 and lines[-1] == f"... and {calls - 40} more calls (print(trace) lists them)"
    assert lines[1:41] == str(t).splitlines()[:40]


def test_load_report_repr_shows_counts_and_the_first_five_of_each_kind(tmp_path):
    ts.save_weights(ts.create_model("resnet34"), tmp_path / "r34.safetensors")
    model = ts.create_model("resnet18")
    report = ts.load_weights(model, tmp_path / "r34.safetensors", strict=False, skip_mismatched=True)
    extra = set(ts.create_model("resnet34").state_dict()) - set(model.state_dict())
    assert sorted(report.unexpected) == sorted(extra)
    text = repr(report)
    assert f"  unexpected  {len(extra)}" in text and f"... and {len(extra) - 5} more unexpected" in text
    assert sum(line.startswith("    layer") for line in text.splitlines()) <= 10  # 5 unexpected, 5 mismatched
    assert str(report).count("\n") > text.count("\n")  # print() still lists every key


def test_freeze_report_repr_is_its_text():
    report = ts.freeze_report(ts.freeze(ts.create_model("resnet18"), exclude=["layer4"]))
    assert repr(report) == str(report) and repr(report).startswith("frozen: ")


def test_checkpoint_info_and_diff_reprs_are_capped_tables(tmp_path):
    model = ts.create_model("resnet18")
    ts.save_weights(model, tmp_path / "a.safetensors")
    ts.save_weights(nn.DataParallel(ts.create_model("resnet34")), tmp_path / "b.pt")
    info = ts.inspect_checkpoint(tmp_path / "a.safetensors")
    lines = repr(info).splitlines()
    assert lines[0] == f"{tmp_path / 'a.safetensors'} (safetensors, single file)"
    assert sum(line.startswith("  ") for line in lines) == 41  # 40 tensors and the count
    assert f"tensors: 122   values: {sum(t.numel() for t in model.state_dict().values()):,}" in repr(info)
    d = ts.diff_checkpoints(tmp_path / "a.safetensors", tmp_path / "b.pt")
    text = repr(d)
    only_b = set(ts.create_model("resnet34").state_dict()) - set(model.state_dict())
    assert f"only in {tmp_path / 'b.pt'}: {len(only_b)}" in text
    assert "keys matched after removing 'module.' from" in text and "+ module." not in text  # keys as matched
    assert sum(line.startswith("  + ") for line in text.splitlines()) == 10
    assert f"... and {len(only_b) - 10} more (print(diff) lists them)" in text
    assert str(d).count("\n") > text.count("\n")


# HTML: escaped, and rendered by a browser


class _Cells(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def html_of_everything(tmp_path) -> dict[str, str]:
    model = Hostile()
    x = torch.randn(2, 4)
    path = ts.save_weights(model, tmp_path / "hostile.safetensors")
    ts.save_weights({"other.w": torch.zeros(1)}, tmp_path / "other.safetensors")
    report = ts.load_weights(nn.Linear(4, 3), path, strict=False)  # the hostile keys are unexpected
    return {
        "summary": ts.summary(model, (2, 4))._repr_html_(),
        "trace": ts.trace(model, x, file=None)._repr_html_(),
        "load": report._repr_html_(),
        "freeze": ts.freeze_report(ts.freeze(Hostile()))._repr_html_(),  # names the whole model "<model>"
        "info": ts.inspect_checkpoint(path)._repr_html_(),
        "diff": ts.diff_checkpoints(path, tmp_path / "other.safetensors")._repr_html_(),
    }


def test_every_html_table_escapes_names(tmp_path):
    for name, page in html_of_everything(tmp_path).items():
        cells = _Cells()
        cells.feed(page)
        assert "table" in cells.tags and "img" not in cells.tags, name
        assert any(("<model>" if name == "freeze" else HOSTILE) in t for t in cells.text), name


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_html_tables_render_in_chromium_with_hostile_names_as_text(browser, tmp_path):
    pages = html_of_everything(tmp_path)
    page = browser.new_page()
    page.route("**/*", lambda route: route.abort())  # nothing may be fetched (the hostile <img src=x>)
    page.set_content("<html><head><title>tables</title></head><body>"
                     + "".join(f'<section id="{k}">{v}</section>' for k, v in pages.items()) + "</body></html>")
    assert page.title() == "tables"  # the onerror handler never ran
    assert page.locator("img").count() == 0
    for name in pages:
        section = page.locator(f"#{name}")
        assert section.locator("table").count() == 1 and section.locator("tbody tr").count() >= 1, name
        box = section.locator("table").bounding_box()
        assert box["width"] > 100 and box["height"] > 20, name  # laid out, visible
    for name in pages:
        assert ("<model>" if name == "freeze" else HOSTILE) in page.locator(f"#{name}").inner_text(), name
    summary_cells = page.locator("#summary tbody tr").first.locator("td").all_inner_texts()
    assert summary_cells[0] == "Hostile" and summary_cells[3] == "15"  # Linear(4, 3): 12 weights + 3 biases
    page.close()


def test_weights_repr_is_one_line_and_the_categories_stay_on_the_object():
    w = ts.get_weights("resnet50")
    text = repr(w)
    assert "\n" not in text and len(text) < 150  # the dataclass's repr was 14,000 characters of category names
    assert text.startswith(f"<Weights resnet50.{w.tag}: {len(w.categories)} classes, top-1 {w.meta['acc@1']}")
    assert w.file_name in text and w.categories[0] not in text
