"""The runner's walker on transformers' ``ModelOutput`` (an OrderedDict that is also a dataclass) and torchvision's
namedtuple outputs: rebuilt as their own type, walked as a mapping (set fields only), the prediction found."""

from __future__ import annotations

import torch
from models import BY_NAME

from torchsmith.runner import example_call, main_output, map_tensors, probe, tensor_leaves


def test_model_output_is_walked_as_a_mapping_and_rebuilt_as_itself():
    peer = BY_NAME["hf.bert"]
    model = peer.build()
    args, kwargs = peer.example()
    with torch.no_grad():
        out = model(*args, **kwargs)
    keys = list(out.keys())  # only the fields that are set (no loss without labels)
    assert "loss" not in keys and keys[0] == "logits"
    mapped = map_tensors(out, lambda t: t.new_zeros(t.shape))
    assert type(mapped) is type(out) and list(mapped.keys()) == keys and mapped.loss is None
    assert mapped.logits.shape == out.logits.shape and not mapped.logits.any()
    assert [k for k, _ in tensor_leaves(out)][: 1] == ["logits"]
    assert main_output(out) is out.logits


def test_probe_of_a_model_output_and_a_namedtuple_output():
    bert = BY_NAME["hf.bert"]
    args, kwargs = bert.example()
    y = probe(bert.build(), example_call(bert.build(), example_inputs={"input_ids": args[0], **kwargs}))
    assert type(y).__name__ == "SequenceClassifierOutput" and tuple(main_output(y).shape) == (2, 3)
    googlenet = BY_NAME["tv.googlenet"]
    (x,), _ = googlenet.example()
    out = probe(googlenet.build(), ((torch.cat([x, x]),), {}), training=True)  # aux outputs in train mode
    assert type(out).__name__ == "GoogLeNetOutputs" and main_output(out) is out.logits
    assert [k for k, _ in tensor_leaves(out)] == ["0", "1", "2"]  # a namedtuple keeps its positions
