"""Every model of the matrix builds and runs its example forward (the ground the other interop tests stand on)."""

import pytest
import torch

from models import MODELS, models


@pytest.mark.parametrize("peer", models())
def test_builds_and_runs(peer):
    model = peer.build()
    args, kwargs = peer.example()
    with torch.no_grad():
        out = model(*args, **kwargs)
    assert out is not None
    assert not any(p.is_meta for p in model.parameters())


def test_matrix_covers_the_peer_families():
    names = {m.name for m in MODELS}
    assert len(names) == len(MODELS) >= 21
    assert {"tv.fasterrcnn_resnet50_fpn", "timm.efficientnet_b0", "hf.gpt2", "hf.t5"} <= names
