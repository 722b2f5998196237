"""hf://ORG/NAME[@REVISION][/FILE] sources, read from a Hugging Face cache the tests lay out by hand, with
HF_HUB_OFFLINE=1 (nothing reaches the network), and snapshot folders of that cache loaded by path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import safetensors.torch
import torch
from ckpt_models import TinyNet, filled
from helpers import ROOT, snapshot
from hub_fixtures import hf_repo
from typer.testing import CliRunner

import torchsmith as ts
from torchsmith.checkpoint.hub import parse_hf
from torchsmith.cli import app


def plain_safetensors(model, path):
    """What the Hub holds: a safetensors file written by safetensors itself (no torchsmith checksums)."""
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def sharded(tmp_path, src):
    """``src`` saved by torchsmith in at least three shards and an index (in tmp_path/out); returns the index."""
    (tmp_path / "out").mkdir()
    index = ts.save_weights(src, tmp_path / "out" / "model.safetensors", max_shard_size=600)
    assert len(list(index.parent.glob("model-*.safetensors"))) >= 3
    return index


def test_a_single_file_repository_loads_like_load_state_dict(tmp_path, hf_cache):
    src = filled(TinyNet(), seed=3)
    file = plain_safetensors(src, tmp_path / "model.safetensors")
    snap = hf_repo(hf_cache, "someone/tiny", {"model.safetensors": file, "README.md": b"# tiny"})
    for source in ("hf://someone/tiny", "hf://someone/tiny/model.safetensors", f"hf://someone/tiny@{snap.name}",
                   "hf://someone/tiny@main/model.safetensors", "hf://models/someone/tiny"):  # fmt: skip
        model = filled(TinyNet(), seed=9)
        report = ts.load_weights(model, source)
        assert report.ok and snapshot(model) == snapshot(src), source
        assert report.path == str(snap / "model.safetensors")
    assert snapshot(ts.read_weights("hf://someone/tiny")) == snapshot(src.state_dict())
    assert ts.inspect_checkpoint("hf://someone/tiny").tensors == len(src.state_dict())


def test_a_sharded_repository_loads_through_its_index(tmp_path, hf_cache):
    src = filled(TinyNet(width=16), seed=4)
    index = sharded(tmp_path, src)
    hf_repo(hf_cache, "someone/sharded", {p.name: p for p in index.parent.iterdir()})
    for source in ("hf://someone/sharded", "hf://someone/sharded/model.safetensors.index.json"):
        model = filled(TinyNet(width=16), seed=9)
        report = ts.load_weights(model, source)
        assert report.ok and report.format == "safetensors-sharded" and report.checksums == "verified"
        assert snapshot(model) == snapshot(src)


def test_a_sharded_repository_in_a_subfolder(tmp_path, hf_cache):
    src = filled(TinyNet(width=16), seed=5)
    index = sharded(tmp_path, src)
    hf_repo(hf_cache, "someone/nested", {f"unet/{p.name}": p for p in index.parent.iterdir()})
    model = filled(TinyNet(width=16), seed=9)
    assert ts.load_weights(model, "hf://someone/nested/unet/model.safetensors.index.json").ok
    assert snapshot(model) == snapshot(src)


def test_load_model_reads_a_save_model_directory_from_the_hub(tmp_path, hf_cache):
    model = ts.replace_head(ts.create_model("resnet18", num_classes=4), 3).eval()
    directory = ts.save_model(model, tmp_path / "run")
    snap = hf_repo(hf_cache, "someone/r18", {p.name: p for p in directory.iterdir()})
    again = ts.load_model("hf://someone/r18").eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(again(x), model(x)) and ts.model_config(again) == ts.model_config(model)
    assert ts.load_model(snap).fc.out_features == 3  # the snapshot folder by path: links into blobs/ accepted


def test_the_cli_takes_hf_sources(tmp_path, hf_cache):
    src = filled(TinyNet(), seed=6)
    hf_repo(hf_cache, "someone/cli", {"model.safetensors": plain_safetensors(src, tmp_path / "m.safetensors")})
    runner = CliRunner()
    out = runner.invoke(app, ["inspect", "hf://someone/cli", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["tensors"] == len(src.state_dict())
    converted = tmp_path / "local.safetensors"
    out = runner.invoke(app, ["convert", "hf://someone/cli", str(converted), "--json"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["diff", "hf://someone/cli", str(converted)])
    assert out.exit_code == 0 and out.output.strip().endswith("same"), out.output


def test_offline_and_not_cached_says_where_it_looked_and_how_to_get_it(hf_cache):
    with pytest.raises(ts.CheckpointError) as info:
        ts.load_weights(TinyNet(), "hf://someone/absent")
    msg = str(info.value)
    assert str(hf_cache) in msg and "model.safetensors" in msg and "hf download someone/absent" in msg
    assert "models--someone--absent" in msg
    hf_repo(hf_cache, "someone/partial", {"README.md": b"no weights"})
    with pytest.raises(ts.CheckpointError, match="not in the cache, and downloads are off"):
        ts.read_weights("hf://someone/partial/model.safetensors")


def test_a_shard_missing_from_the_cache_is_named(tmp_path, hf_cache):
    index = sharded(tmp_path, filled(TinyNet(width=16), seed=7))
    files = {p.name: p for p in index.parent.iterdir()}
    missing = sorted(n for n in files if n.startswith("model-"))[1]
    del files[missing]
    hf_repo(hf_cache, "someone/holes", files)
    with pytest.raises(ts.CheckpointError, match=missing):
        ts.load_weights(TinyNet(width=16), "hf://someone/holes")


@pytest.mark.parametrize("source, words", [
    ("hf://someone", "NAME '' is not a repository name"),
    ("hf://someone/../x", "NAME '..' is not a repository name"),
    ("hf://someone/x/../../etc/passwd", "must be a path inside the repository"),
    ("hf://datasets/someone/x", "only model repositories"),
    ("hf://a--b/x", "no '--'"),
    ("hf://someone/x@", "the revision after '@' is empty"),
])  # fmt: skip
def test_malformed_sources_are_refused_naming_the_problem(source, words):
    with pytest.raises(ts.CheckpointError, match=words.replace("(", r"\(").replace(".", r"\.")):
        parse_hf(source)


def test_revisions_with_slashes(hf_cache):
    assert parse_hf("hf://o/n@refs/pr/3/sub/model.safetensors") == parse_hf("hf://o/n@refs%2Fpr%2F3/sub/model.safetensors")
    assert parse_hf("hf://o/n@refs/pr/3/sub/model.safetensors").revision == "refs/pr/3"
    assert parse_hf("hf://o/n@my%2Fbranch").revision == "my/branch"


def test_huggingface_hub_is_imported_only_for_hf_sources(tmp_path):
    code = (
        "import sys, torch, torchsmith as ts\n"
        "m = ts.create_model('resnet18'); ts.save_weights(m, 'w.safetensors'); ts.load_weights(m, 'w.safetensors')\n"
        "ts.save_model(m, 'run'); ts.load_model('run'); ts.inspect_checkpoint('w.safetensors')\n"
        "from torchsmith.cli import app\n"
        "assert 'huggingface_hub' not in sys.modules, 'imported early'\n"
        "try:\n    ts.read_weights('hf://someone/absent')\nexcept ts.CheckpointError:\n    pass\n"
        "print('huggingface_hub' in sys.modules)\n"
    )
    path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_without_huggingface_hub_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails, as when it is not installed
    with pytest.raises(ts.CheckpointError, match=r"pip install 'torchsmith\[hub\]'"):
        ts.read_weights("hf://someone/anything")
