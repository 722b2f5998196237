"""load_weights applies the upgrades torchvision's modules declare, exactly as load_state_dict does.

torchvision's ``FeaturePyramidNetwork`` (and the detectors' ``RPNHead``) accept checkpoints of their old key
layout in ``_load_from_state_dict``; BatchNorm accepts files without ``num_batches_tracked``. The reference is
torchvision's own path: ``load_state_dict`` on the same tensors, into a model built with the same seed; every
tensor is compared bit for bit.
"""

from __future__ import annotations

import re

import pytest
import torch
import torchvision.models.detection as tvd
from safetensors.torch import save_file
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

import torchsmith as ts
from helpers import snapshot


def old_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as torchvision wrote them before 0.13: ``inner_blocks.0.weight``, ``rpn.head.conv.weight``."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"(inner_blocks|layer_blocks)\.(\d+)\.0\.", r"\1.\2.", k)
        k = re.sub(r"rpn\.head\.conv\.0\.0\.", "rpn.head.conv.", k)
        out[k] = v.detach().clone()
    return out


def built(make, seed: int = 3):
    torch.manual_seed(seed)
    return make().eval()


def fpn():
    return FeaturePyramidNetwork([16, 32, 64], 8, extra_blocks=LastLevelMaxPool())


def detector():
    return tvd.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=96, max_size=128)


@pytest.mark.parametrize("make", [fpn, detector], ids=["FeaturePyramidNetwork", "fasterrcnn_resnet50_fpn"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_old_layout_checkpoints_load_as_torchvision_loads_them(tmp_path, make, suffix):
    state = old_layout(built(make, seed=1).state_dict())
    assert any(re.search(r"inner_blocks\.\d+\.weight$", k) for k in state)
    path = tmp_path / f"old{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    ours, theirs = built(make), built(make)
    report = ts.load_weights(ours, path)
    theirs.load_state_dict(state)  # torchvision's own upgrade
    assert snapshot(ours) == snapshot(theirs)
    assert report.ok and report.upgraded
    renamed = {u.key: u.new_key for u in report.upgraded if u.change == "renamed"}
    assert len(renamed) == sum(1 for k in state if re.search(r"(_blocks\.\d+|head\.conv)\.(weight|bias)$", k))


def test_a_detector_checkpoint_without_batch_counts_keeps_the_model_counts(tmp_path):
    source = built(detector, seed=1)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, tmp_path / "no_counts.safetensors")
    ours, theirs = built(detector), built(detector)
    for model in (ours, theirs):
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.num_batches_tracked.fill_(9)
    report = ts.load_weights(ours, tmp_path / "no_counts.safetensors")
    theirs.load_state_dict(state)
    assert snapshot(ours) == snapshot(theirs) and report.ok
    assert {u.change for u in report.upgraded} == {"added"}
    assert len(report.upgraded) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in ours.modules())


def test_mnasnet_weights_load_though_the_file_names_no_version(tmp_path):
    """torchvision's MNASNet refuses a state dict without its version (load_state_dict of a safetensors file
    raises ValueError); a file we saved has the model's layout, so it is read as the model's version."""
    import torchvision.models as tvm

    source = built(lambda: tvm.mnasnet0_5(), seed=1)
    ts.save_weights(source, tmp_path / "mnasnet.safetensors")
    model = built(lambda: tvm.mnasnet0_5(), seed=2)
    report = ts.load_weights(model, tmp_path / "mnasnet.safetensors")
    assert snapshot(model) == snapshot(source) and report.ok
    assert [(u.module, u.change, u.key) for u in report.upgraded] == [("", "assumed", "version 2")]
