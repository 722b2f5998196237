"""Spec-built models with the peers' tools: torchvision's fx feature extractor on a spec graph, and a
spec holding a layer stack in front of a torchvision-style head (random weights, small inputs)."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import torchsmith as ts

SPECS = Path(__file__).resolve().parents[2] / "examples" / "specs"


def test_torchvision_feature_extractor_on_a_spec_graph():
    model = ts.build(SPECS / "fpn_top_down.yaml").eval()
    _, eval_nodes = get_graph_node_names(model)
    assert {"c3.1", "lat4", "p2"} <= set(eval_nodes)
    body = create_feature_extractor(model, {"c3.1": "c3", "p2": "p2"})
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        got = body(x)
        expected_p2 = model(x)["p2"]
        expected_c3 = model.c3(model.c2(x))
    assert torch.equal(got["p2"], expected_p2) and torch.equal(got["c3"], expected_c3)


def test_ts_features_on_a_spec_model_match_torchvision_extractor():
    model = ts.build(SPECS / "conv_stack.yaml").eval()
    x = torch.rand(1, 3, 32, 32)
    ours = ts.extract_features(model, {"relu1": "a", "conv2": "b"})(x)
    theirs = create_feature_extractor(model, {"relu1": "a", "conv2": "b"})(x)
    assert all(torch.equal(ours[k], theirs[k]) for k in ("a", "b"))
