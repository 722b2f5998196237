"""`torchsmith pretrained` (the table, golden) and `torchsmith fetch` (into the torch hub cache, verified).

Regenerate the golden table after an intended change with
``TORCHSMITH_UPDATE_GOLDEN=1 pytest tests/pretrained/test_pretrained_cli.py`` and review the diff."""

from __future__ import annotations

import hashlib
import json
import os

from helpers import GOLDEN
from hub_fixtures import serve
from typer.testing import CliRunner

import torchsmith as ts
from torchsmith.cli import app

DATA = b"weights" * 50_000


def test_the_table_matches_golden_and_says_what_is_cached(torch_home):
    (torch_home).mkdir(parents=True)
    (torch_home / "resnet34-b627a593.pth").write_bytes(b"only its presence is shown; fetch checks the hash")
    out = CliRunner().invoke(app, ["pretrained", "resnet*"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[-2] == f"cache: {torch_home}"
    text = "\n".join(lines[:-2]) + "\n"
    path = GOLDEN / "pretrained_table.txt"
    if os.environ.get("TORCHSMITH_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()
    rows = json.loads(CliRunner().invoke(app, ["pretrained", "resnet34", "--json"]).output)
    assert [(r["name"], r["cached"], r["categories"], r["default"]) for r in rows] == [("resnet34.IMAGENET1K_V1", True, 1000, True)]
    out = CliRunner().invoke(app, ["pretrained", "vgg*"])
    assert out.exit_code == 1 and "no pretrained weights match 'vgg*'" in out.output


def test_fetch_downloads_into_the_cache_and_refuses_offline(torch_home, weights_table, monkeypatch):
    with serve({"/resnet18-cli.pth": DATA}) as (url, requests):
        ts.register_weights("resnet18", "CLI", url=f"{url}/resnet18-cli.pth", sha256=hashlib.sha256(DATA).hexdigest())
        out = CliRunner().invoke(app, ["fetch", "resnet18", "--weights", "CLI", "--json"])
        assert out.exit_code == 0, out.output
        assert json.loads(out.output)["path"] == str(torch_home / "resnet18-cli.pth")
        assert (torch_home / "resnet18-cli.pth").read_bytes() == DATA and requests == ["/resnet18-cli.pth"]
    monkeypatch.setenv("TORCHSMITH_OFFLINE", "1")
    out = CliRunner().invoke(app, ["fetch", "resnet50"])
    assert out.exit_code == 1
    flat = " ".join(out.output.split())
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in flat and "downloads are off" in flat


def test_a_file_url_is_a_source_too(tmp_path, torch_home, weights_table):
    src = tmp_path / "published.pth"
    src.write_bytes(DATA)
    entry = ts.register_weights("resnet18", "LOCAL", url=src.as_uri(), sha256=hashlib.sha256(DATA).hexdigest())
    assert ts.fetch_weights("resnet18", "LOCAL", progress=False) == torch_home / "published.pth"
    assert (torch_home / "published.pth").read_bytes() == DATA and entry.file_name == "published.pth"
