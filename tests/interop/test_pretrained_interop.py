"""Pretrained weights against the peers: the table equals torchvision's ResNet*_Weights, the cache path is the one
torchvision uses, a torchvision model's weights load from the hub cache to torchvision's outputs, data_config
makes timm's transform equal torchvision's, and timm's weights on the Hub (a hand-built cache) load into timm."""

from __future__ import annotations

import os
from urllib.parse import urlparse

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torchvision
from hub_fixtures import hf_repo
from PIL import Image
from torchvision.models import resnet as tv_resnet

import torchsmith as ts
from torchsmith.pretrained import all_weights, cache_path, file_sha256

ENUMS = {"resnet18": tv_resnet.ResNet18_Weights, "resnet34": tv_resnet.ResNet34_Weights, "resnet50": tv_resnet.ResNet50_Weights,
         "resnet101": tv_resnet.ResNet101_Weights, "resnet152": tv_resnet.ResNet152_Weights}  # fmt: skip


def test_the_table_is_torchvisions():
    ours = {(w.model, w.tag): w for w in all_weights() if w.meta.get("source") == "torchvision"}
    theirs = {(m, w.name): w for m, enum in ENUMS.items() for w in enum}
    assert ours.keys() == theirs.keys()
    for key, tv in theirs.items():
        w, t = ours[key], tv.transforms()
        assert w.url == tv.url and w.file_name == os.path.basename(urlparse(tv.url).path)
        assert w.categories == tuple(tv.meta["categories"]) and w.num_classes == 1000
        assert (w.meta["acc@1"], w.meta["acc@5"]) == (tv.meta["_metrics"]["ImageNet-1K"]["acc@1"], tv.meta["_metrics"]["ImageNet-1K"]["acc@5"])
        assert w.meta["num_params"] == tv.meta["num_params"] and w.meta["recipe"] == tv.meta["recipe"]
        assert (w.meta["file_size_mb"], w.meta["gflops"]) == (tv.meta["_file_size"], tv.meta["_ops"])
        assert w.input_size[1:] == (t.crop_size[0], t.crop_size[0]) and w.meta["resize_size"] == t.resize_size[0]
        assert w.crop_pct == t.crop_size[0] / t.resize_size[0]
        assert (list(w.mean), list(w.std), w.interpolation) == (t.mean, t.std, t.interpolation.value)
        assert w.is_default == (ENUMS[key[0]].DEFAULT is tv)


def test_the_cache_path_is_the_one_torchvision_uses(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    seen = {}

    def download(url, dst, hash_prefix=None, progress=True):  # torch.hub's downloader, stood in for: no network
        seen["dst"], seen["prefix"] = dst, hash_prefix
        raise RuntimeError("stop")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    with pytest.raises(RuntimeError, match="stop"):
        torchvision.models.resnet50(weights="IMAGENET1K_V2")
    assert seen["dst"] == str(cache_path(ts.get_weights("resnet50", "IMAGENET1K_V2")))
    assert seen["prefix"] == ts.get_weights("resnet50").sha256 == "11ad3fa6"


def test_a_torchvision_models_weights_load_from_the_hub_cache_to_its_outputs(torch_home, weights_table):
    tv = torchvision.models.resnet50().eval()
    with torch.no_grad():
        for name, t in tv.state_dict().items():
            if t.is_floating_point():  # trained-looking values everywhere, positive variances
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.05)
    file = torch_home / "resnet50-mine.pth"
    file.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), file)  # what download.pytorch.org serves: a plain state dict
    ts.register_weights("resnet50", "TV_RANDOM", url="https://example.com/resnet50-mine.pth", sha256=file_sha256(file),
                        categories=ENUMS["resnet50"].IMAGENET1K_V2.meta["categories"], classifier="fc")  # fmt: skip
    model = ts.create_model("resnet50", weights="TV_RANDOM").eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(model(x), tv(x))


def test_data_config_gives_timms_transform_what_torchvision_does():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    for tag in ("IMAGENET1K_V1", "IMAGENET1K_V2"):
        cfg = ts.get_weights("resnet50", tag).data_config()
        ours = timm.data.create_transform(**cfg)(image)  # timm's own transform from our keys
        theirs = ENUMS["resnet50"][tag].transforms()(image)
        assert ours.shape == theirs.shape == (3, 224, 224)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_a_models_pretrained_cfg_is_read_by_timm_too(torch_home, weights_table):
    ref = ts.create_model("resnet18")
    file = torch_home / "r18.pth"
    file.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), file)
    ts.register_weights("resnet18", "MINE", url="https://example.com/r18.pth", sha256=file_sha256(file), crop_pct=0.9,
                        interpolation="bicubic", num_classes=1000, classifier="fc")  # fmt: skip
    model = ts.create_model("resnet18", weights="MINE")
    assert timm.data.resolve_data_config(model=model) == ts.data_config(model)


def test_timms_weights_on_the_hub_load_into_timm(tmp_path, hf_cache):
    src = timm.create_model("resnet18").eval()
    with torch.no_grad():
        for name, t in src.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
    weights = tmp_path / "model.safetensors"
    safetensors.torch.save_file(src.state_dict(), str(weights))  # as timm's hub repos hold them
    config = b'{"architecture": "resnet18", "num_classes": 1000, "pretrained_cfg": {"tag": "a1_in1k"}}'
    hf_repo(hf_cache, "timm/resnet18.a1_in1k", {"model.safetensors": weights, "config.json": config})
    model = timm.create_model("resnet18").eval()
    report = ts.load_weights(model, "hf://timm/resnet18.a1_in1k")
    assert report.ok and report.checksums == "absent"
    reference = timm.create_model("resnet18").eval()
    reference.load_state_dict(safetensors.torch.load_file(str(weights)))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert ts.data_config(model) == timm.data.resolve_data_config(model=model)  # a timm model's own pretrained_cfg
    with pytest.raises(ts.CorruptCheckpointError, match="not a valid torchsmith model config"):
        ts.load_model("hf://timm/resnet18.a1_in1k")  # timm's config.json is not a save_model directory's
