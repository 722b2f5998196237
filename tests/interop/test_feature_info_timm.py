"""A zoo model's ``feature_info`` answers timm's ``FeatureInfo`` accessors as timm's own class does.

Reference: ``timm.models._features.FeatureInfo`` built from the same levels (timm's dicts:
``num_chs`` = channels per level, ``reduction`` = input size / map size per level, ``module``).
"""

from __future__ import annotations

import pytest
import torch
from timm.models._features import FeatureInfo as TimmFeatureInfo

from torchsmith import create_model


@pytest.mark.parametrize("name", ["resnet50", "resnet18_fpn", "unet", "unet_resnet34"])
def test_accessors_agree_with_timms_feature_info(name):
    with torch.device("meta"):
        ours = create_model(name).feature_info
    levels = [{"num_chs": f.channels, "reduction": f.stride, "module": f.module} for f in ours]
    theirs = TimmFeatureInfo(levels, out_indices=tuple(range(len(levels))))
    last = len(levels) - 1
    for idx in (None, 0, last, -1, [last, 0], (1, 2)):
        assert ours.channels(idx) == theirs.channels(idx), idx
        assert ours.reduction(idx) == theirs.reduction(idx), idx
        assert ours.module_name(idx) == theirs.module_name(idx), idx
        assert ours.get("num_chs", idx) == theirs.get("num_chs", idx), idx
        keys = ["num_chs", "reduction", "module"]
        assert ours.get_dicts(keys=keys, idx=idx) == theirs.get_dicts(keys=keys, idx=idx), idx
    assert len(ours) == len(theirs)
    assert [(f.num_chs, f.reduction, f.module) for f in ours] == [(d["num_chs"], d["reduction"], d["module"]) for d in theirs.info]


def test_timm_reads_our_feature_info_as_its_own():
    """timm's checks on a FeatureInfo (channels > 0, reduction never shrinking) hold for our dicts."""
    with torch.device("meta"):
        ours = create_model("resnet50").feature_info
    theirs = TimmFeatureInfo(ours.get_dicts(), out_indices=(1, 4))
    assert theirs.channels() == [256, 2048] and theirs.reduction() == [4, 32] and theirs.module_name() == ["layer1", "layer4"]
