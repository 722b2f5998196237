"""create_model(name, pretrained=True / weights=TAG): torchvision-layout files from the torch hub cache, the hash
check, another num_classes, data_config, backbones, and what save_model / load_model keep (without fetching)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from ckpt_models import filled
from hub_fixtures import serve

import torchsmith as ts
from torchsmith.pretrained import cache_path, file_sha256

CATEGORIES = [f"class {i}" for i in range(1000)]


def torchvision_layout_file(path, *, seed: int = 0, depth: str = "resnet18"):
    """A torchvision-layout checkpoint (a plain ``torch.save`` of the state dict, as download.pytorch.org serves)
    of a resnet with distinct values everywhere (running statistics positive); returns the reference model."""
    ref = filled(ts.create_model(depth), seed=seed).eval()
    with torch.no_grad():
        for name, t in ref.state_dict().items():
            if name.endswith("running_var"):
                t.abs_().add_(0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ref.state_dict(), path)
    return ref


def register(model: str, tag: str, file, **extra):
    return ts.register_weights(model, tag, url=f"http://127.0.0.1:9/{file.name}", file_name=file.name,
                               sha256=file_sha256(file), categories=CATEGORIES, classifier="fc", **extra)  # fmt: skip


def reference_output(ref, file, x):
    """What torch's own load_state_dict of the same file gives (the independent reference)."""
    plain = ts.create_model("resnet18").eval()
    plain.load_state_dict(torch.load(file, weights_only=True))
    out = plain(x)
    assert torch.equal(out, ref(x))
    return out


def test_weights_from_the_torch_hub_cache_give_load_state_dicts_outputs(torch_home, weights_table):
    file = torch_home / "resnet18-mine.pth"
    ref = torchvision_layout_file(file)
    entry = register("resnet18", "MINE_V1", file, default=True)
    assert cache_path(entry) == file  # torch.hub.get_dir()/checkpoints/<file name>: torchvision's place
    model = ts.create_model("resnet18", pretrained=True).eval()  # nothing listens on 127.0.0.1:9: the cache is used
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model(x), reference_output(ref, file, x))
    assert ts.model_config(model)["kwargs"] == {"num_classes": 1000, "weights": "MINE_V1"}
    assert model.pretrained_cfg["tag"] == "MINE_V1" and model.pretrained_cfg["file"] == "resnet18-mine.pth"


def test_a_wrong_file_in_the_cache_is_refused_by_its_hash_and_kept(torch_home, monkeypatch):
    # torchvision's real entry: its file name carries the sha256 prefix f37072fd, which our file does not have
    file = torch_home / "resnet18-f37072fd.pth"
    torchvision_layout_file(file)
    before = file.read_bytes()
    with pytest.raises(ts.CorruptCheckpointError) as info:
        ts.create_model("resnet18", pretrained=True)
    msg = str(info.value)
    assert "f37072fd" in msg and str(file) in msg and file_sha256(file) in msg and "Delete it" in msg
    assert file.read_bytes() == before  # refused, not deleted: it may be the user's


def test_weights_path_is_hash_checked_too(tmp_path, torch_home, weights_table):
    good, other = tmp_path / "good.pth", tmp_path / "other.pth"
    ref = torchvision_layout_file(good, seed=1)
    torchvision_layout_file(other, seed=2)
    register("resnet18", "MINE_V1", good)
    model = ts.create_model("resnet18", weights="MINE_V1", weights_path=good).eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model(x), ref(x))
    assert not torch_home.exists()  # an explicit file is used where it is: nothing is downloaded or copied
    with pytest.raises(ts.CorruptCheckpointError, match="does not start with"):
        ts.create_model("resnet18", weights="MINE_V1", weights_path=other)


def test_other_num_classes_load_everything_but_the_head_and_say_so(torch_home, weights_table, caplog):
    file = torch_home / "resnet18-mine.pth"
    ref = torchvision_layout_file(file)
    register("resnet18", "MINE_V1", file)
    torch.manual_seed(0)
    fresh_fc = ts.create_model("resnet18", num_classes=10).fc
    with caplog.at_level(logging.INFO, logger="torchsmith.pretrained"):
        torch.manual_seed(0)
        model = ts.create_model("resnet18", weights="MINE_V1", num_classes=10).eval()
    sd, want = model.state_dict(), ref.state_dict()
    assert all(torch.equal(sd[k], want[k]) for k in sd if not k.startswith("fc."))
    assert torch.equal(model.fc.weight, fresh_fc.weight) and model.fc.out_features == 10  # as initialised
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1000 classes, the model 10" in warnings[0] and "'fc'" in warnings[0]
    report = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("LoadReport"))
    assert "fc.weight  shape (1000, 512) in file, (10, 512) in model" in report
    assert ts.model_config(model)["kwargs"] == {"num_classes": 10, "weights": "MINE_V1"}
    # num_classes=0: no head at all, the pooled features of the weights
    pooled = ts.create_model("resnet18", weights="MINE_V1", num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(pooled(x), ref.forward_head(ref.forward_features(x), pre_logits=True))


def test_in_chans_other_than_the_weights_is_refused_before_any_download(torch_home, weights_table):
    with serve({"/r.pth": b"never sent"}) as (url, requests):
        ts.register_weights("resnet18", "SERVED", url=f"{url}/r.pth", sha256="0" * 64)
        with pytest.raises(ts.ModelConfigError, match=r"take 3 input channels, the model 1.*adapt_input_channels"):
            ts.create_model("resnet18", weights="SERVED", in_chans=1)
        assert requests == []


def test_unknown_tags_and_models_without_weights_are_refused_before_building(torch_home):
    with pytest.raises(ts.ModelConfigError, match=r"'resnet50' has no weights 'IMAGENET1K_V3'\. Did you mean 'IMAGENET1K_V2', 'IMAGENET1K_V1'"):
        ts.create_model("resnet50", weights="IMAGENET1K_V3")
    with pytest.raises(ts.ModelConfigError, match="No pretrained weights are registered for 'unet'"):
        ts.create_model("unet", pretrained=True)
    with pytest.raises(ts.ModelConfigError, match="pass pretrained=True"):
        ts.create_model("resnet50", pretrained=True, weights="IMAGENET1K_V1")


def test_save_and_load_keep_the_weights_tag_without_fetching_again(tmp_path, torch_home, weights_table, monkeypatch):
    file = torch_home / "resnet18-mine.pth"
    torchvision_layout_file(file)
    register("resnet18", "MINE_V1", file, crop_pct=0.9)
    model = ts.replace_head(ts.create_model("resnet18", weights="MINE_V1"), 5).eval()
    directory = ts.save_model(model, tmp_path / "run")
    file.unlink()  # the weights are gone from the cache, and downloads are off: load_model must not need them
    monkeypatch.setenv("TORCHSMITH_OFFLINE", "1")
    again = ts.load_model(directory).eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(again(x), model(x))
    assert ts.model_config(again) == ts.model_config(model)
    assert ts.data_config(again) == ts.data_config(model) and ts.data_config(again)["crop_pct"] == 0.9
    rebuilt = ts.build_from_config(ts.model_config(model))  # a rebuild reads no weights either
    assert rebuilt.fc.weight.is_meta and rebuilt.pretrained_cfg["tag"] == "MINE_V1"
    with pytest.raises(ts.DownloadError):  # while a fresh create_model does need them
        ts.create_model("resnet18", weights="MINE_V1")


def test_a_saved_model_whose_weights_are_not_registered_here_still_loads(tmp_path, torch_home, weights_table):
    file = torch_home / "resnet18-mine.pth"
    torchvision_layout_file(file)
    before = ts.pretrained.table_state()
    register("resnet18", "ELSEWHERE", file)
    directory = ts.save_model(ts.create_model("resnet18", weights="ELSEWHERE"), tmp_path / "run")
    ts.pretrained.restore_table(before)  # a process that never registered them
    again = ts.load_model(directory)
    assert ts.model_config(again)["kwargs"]["weights"] == "ELSEWHERE"
    with pytest.raises(ts.ModelConfigError, match="'ELSEWHERE' of 'resnet18', which are not registered in this process"):
        ts.data_config(again)


def test_data_config_is_the_weights_preprocessing_in_timms_keys(torch_home, weights_table):
    want = {"input_size": (3, 224, 224), "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225), "crop_pct": 224 / 232, "crop_mode": "center"}  # fmt: skip
    assert ts.get_weights("resnet50").data_config() == want  # torchvision's ImageClassification(224, resize 232)
    assert math.floor(224 / want["crop_pct"]) == 232  # timm's rule: resize to floor(size / crop_pct)
    file = torch_home / "resnet18-mine.pth"
    torchvision_layout_file(file)
    register("resnet18", "MINE_V1", file, interpolation="bicubic", crop_pct=0.95, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    cfg = ts.data_config(ts.create_model("resnet18", weights="MINE_V1"))
    assert cfg == {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                   "crop_pct": 0.95, "crop_mode": "center"}  # fmt: skip
    with pytest.raises(ts.ModelConfigError, match="not built with pretrained weights"):
        ts.data_config(ts.create_model("resnet18"))


@pytest.mark.parametrize("name, part", [("resnet18_fpn", "body"), ("unet_resnet18", "encoder")])
def test_backbone_weights_load_the_resnet_inside(name, part, torch_home, weights_table):
    file = torch_home / "resnet18-mine.pth"
    ref = torchvision_layout_file(file)
    register("resnet18", "MINE_V1", file, crop_pct=0.9)
    model = ts.create_model(name, backbone_weights="MINE_V1")
    want = ref.state_dict()
    inner = getattr(model, part).state_dict()
    assert inner and all(torch.equal(t, want[k]) for k, t in inner.items())  # frozen BN keeps no num_batches_tracked
    assert ts.model_config(model)["kwargs"] == {"backbone_weights": "MINE_V1"}
    assert ts.data_config(model)["crop_pct"] == 0.9 and model.pretrained_cfg["classifier"] is None
    if name == "resnet18_fpn":  # torchvision's trainable_layers=3 still holds
        assert not model.body.layer1[0].conv1.weight.requires_grad and model.body.layer4[0].conv1.weight.requires_grad


def test_a_builder_that_takes_weights_itself_gets_them(weights_table):
    from torch import nn

    @ts.register_model(name="own_weights_net")
    def own_weights_net(*, weights: str | None = None) -> nn.Module:
        model = nn.Linear(2, 2)
        model.asked = weights
        return model

    try:
        model = ts.create_model("own_weights_net", weights="ANYTHING")
        assert model.asked == "ANYTHING" and ts.model_config(model)["kwargs"] == {"weights": "ANYTHING"}
    finally:
        from torchsmith.registry import _REGISTRY

        del _REGISTRY["own_weights_net"]
