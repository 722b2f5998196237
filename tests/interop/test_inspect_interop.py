"""summary() on every peer model: untouched afterwards, output shapes of a real forward, FlopCounterMode's FLOPs.

Models that cannot run on meta nor on fake tensors (data-dependent shapes in detection, ``.item()`` in
BERT's mask handling) are summarised again with ``allow_real=True``; their default summary must
still leave the model untouched and say what it could not compute.
"""

from __future__ import annotations

import pytest
import torch
from helpers import flop_reference, probe_differences, probe_snapshot
from models import models

import torchsmith as ts
from torchsmith.inspect.records import output_leaves


def reference(model, args, kwargs):
    """Output leaves and FLOPs of a real forward (attention in its math form, which FlopCounterMode counts;
    with grad enabled, as nn.MultiheadAttention's fused inference kernel has no FLOP formula)."""
    with flop_reference() as fc:  # grad on: no fused MHA fast path
        out = model(*args, **kwargs)
    return [(leaf.key, leaf.shape, leaf.dtype) for leaf in output_leaves(out)], fc.get_total_flops()


@pytest.mark.parametrize("peer", models())
def test_summary_of_peer_model(peer):
    model = peer.build()
    args, kwargs = peer.example()
    model.register_forward_hook(lambda *a: None)  # the user's own hook must survive
    model.extra_attribute = "kept"
    before = probe_snapshot(model)

    s = ts.summary(model, example_inputs=args, kwargs=kwargs)
    assert probe_differences(before, probe_snapshot(model)) == []
    if not s.complete:  # meta and fake both failed: rows are marked, then a real run is allowed
        assert s.error and any(r.status in ("failed", "unfinished", "not reached") for r in s.records)
        assert "?" in str(s)
        s = ts.summary(model, example_inputs=args, kwargs=kwargs, allow_real=True)
        assert s.backend == "real" and probe_differences(before, probe_snapshot(model)) == []
    assert s.complete

    leaves, flops = reference(model, args, kwargs)
    assert [(leaf.key, leaf.shape, leaf.dtype) for leaf in s.outputs] == leaves
    assert s.total_flops == flops
    assert s.total_params == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    if "tied" in peer.tags:
        naive = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
        assert s.total_params < naive and any(r.tied for r in s.records)


@pytest.mark.parametrize("peer", models(family="transformers"))
def test_train_mode_saved_bytes_match_a_real_step(peer):
    from inspect_models import saved_bytes_real

    model = peer.build().train()
    args, kwargs = peer.example()
    torch.manual_seed(0)
    s = ts.summary(model, example_inputs=args, kwargs=kwargs, mode="train", allow_real=True)
    real = saved_bytes_real(model, *args, **kwargs)  # CPU's own attention kernel, as summary emulates on meta
    assert abs(s.saved_bytes - real) <= 0.01 * real, (s.backend, s.saved_bytes, real)
