"""summary(): shapes, parameters, FLOPs and memory against independent references (hooks on a real
forward, FlopCounterMode, analytic formulas, saved tensors of a real CPU step), and a model left untouched."""

from __future__ import annotations

import json

import pytest
import torch
from inspect_models import Outputs, TinyLM, saved_bytes_real
from helpers import probe_differences, probe_snapshot
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import torchsmith as ts
from torchsmith import InspectError


def real_shapes(model: nn.Module, *args) -> list[tuple[str, list[tuple[int, ...]]]]:
    """(path, output shapes) per module call of a real forward, by forward hooks (the reference)."""
    from torchsmith.inspect.records import output_leaves

    calls, handles = [], []
    names = {m: n for n, m in model.named_modules()}
    for m in names:
        handles.append(m.register_forward_hook(lambda mod, a, out: calls.append(
            (names[mod], [leaf.shape for leaf in output_leaves(out)]))))
    with torch.no_grad():
        model(*args)
    for h in handles:
        h.remove()
    return calls


def flop_counter_total(model_fn, *shapes) -> tuple[int, dict]:
    with torch.device("meta"):
        model = model_fn()
    with FlopCounterMode(display=False) as fc:
        model(*[torch.empty(*s, device="meta") for s in shapes])
    return fc.get_total_flops(), {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}


# shapes and parameters


def test_output_shapes_of_every_call_match_hooks_on_a_real_forward():
    model = ts.create_model("resnet18").eval()
    s = ts.summary(model, (2, 3, 64, 64))
    expected = real_shapes(model, torch.randn(2, 3, 64, 64))
    got = sorted((r.path, [leaf.shape for leaf in r.outputs]) for r in s.records if r.status == "ok")
    assert got == sorted(expected)
    assert s.complete and s.backend == "meta"


def test_every_leaf_of_dict_tuple_list_and_dataclass_outputs():
    s = ts.summary(Outputs(), (5, 4))
    assert [(leaf.key, leaf.shape) for leaf in s.outputs] == [
        ("main", (5, 3)), ("extra.0", (5, 2)), ("extra.1.0", (5, 4)), ("extra.1.1", (5,))]
    lm = ts.summary(TinyLM(), (2, 16), dtype=torch.long)
    assert [(leaf.key, leaf.shape) for leaf in lm.outputs] == [("logits", (2, 16, 100)), ("hidden", (2, 16, 32))]
    assert "logits: (2, 16, 100)" in str(lm) and "hidden: (2, 16, 32)" in str(lm)


def test_tied_parameters_counted_once_and_marked():
    model = TinyLM()
    s = ts.summary(model, (2, 16), dtype=torch.long)
    unique = {id(p): p.numel() for p in model.parameters()}
    naive = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert s.total_params == sum(unique.values()) == naive - 100 * 32
    assert s["head"].tied == ("embed",) and s["embed"].tied == ("head",)
    assert s.totals.param_bytes == {"float32": 4 * sum(unique.values())}


def test_trainable_yes_no_partial_and_dtypes():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4).to(torch.bfloat16), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    model[2].bias.requires_grad_(False)
    s = ts.summary(model, inputs=torch.zeros(1, 4), device="meta")
    assert [s[p].trainable for p in ("0", "1", "2")] == ["no", "yes", "partial"]
    assert s.trainable_params == 20 + 8
    assert s.totals.param_bytes == {"float32": 4 * (20 + 10), "bfloat16": 2 * 20}


# FLOPs


def test_resnet152_flops_equal_flop_counter_mode_and_print_the_unit():
    s = ts.summary(ts.create_model("resnet152"), (1, 3, 224, 224), depth=1)
    total, _ = flop_counter_total(lambda: ts.create_model("resnet152"), (1, 3, 224, 224))
    assert s.total_flops == total
    assert f"{total / 1e9:.2f}" == "23.03"
    assert "FLOPs: 23.03 GFLOPs (1 FLOP = one multiply or add, so 2 x MACs)" in str(s)


def test_per_module_flops_equal_flop_counter_mode():
    s = ts.summary(ts.create_model("resnet18"), (1, 3, 96, 96))
    _, per_module = flop_counter_total(lambda: ts.create_model("resnet18"), (1, 3, 96, 96))
    for path in ("layer1", "layer2.0", "layer3.0.downsample", "layer4.1.conv2", "fc"):
        assert s[path].flops == per_module["ResNet." + path], path
    assert s[""].flops == s.total_flops


def test_matmul_bmm_baddbmm_einsum_and_attention_flops():
    class Ops(nn.Module):
        def forward(self, a, b, q):
            x = a @ b  # (4, 8, 16) @ (4, 16, 8): bmm
            y = torch.baddbmm(x, a, b)
            z = torch.einsum("bij,bjk->bik", a, b)
            att = nn.functional.scaled_dot_product_attention(q, q, q)  # (2, 3, 10, 6)
            return x + y + z, att

    args = [(4, 8, 16), (4, 16, 8), (2, 3, 10, 6)]
    s = ts.summary(Ops(), args)
    bmm = 2 * 4 * 8 * 16 * 8
    attention = 2 * (2 * 2 * 3 * 10 * 10 * 6)  # q @ k^T and p @ v
    assert s.total_flops == 3 * bmm + attention
    real = ts.summary(Ops(), inputs=[torch.randn(*a) for a in args], device="real")  # the CPU flash kernel
    assert real.total_flops == 3 * bmm + attention


@pytest.mark.parametrize("device", ["meta", "real"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_recurrent_flops_match_the_analytic_count(cell, device):
    seq, batch, n_in, hidden, layers = 7, 3, 5, 6, 2
    gates = 4 if cell == "LSTM" else 3
    model = getattr(nn, cell)(n_in, hidden, num_layers=layers)
    x = torch.randn(seq, batch, n_in)
    s = ts.summary(model, inputs=x, device=device)
    analytic = sum(2 * seq * batch * gates * hidden * (i + hidden) for i in (n_in, hidden))
    assert s.total_flops == analytic


def test_uncounted_ops_are_listed():
    s = ts.summary(nn.Sequential(nn.Linear(4, 4), nn.GELU()), (2, 4))
    assert s.uncounted_ops == {"gelu": 1}
    assert "Not counted (element-wise / reductions, no FLOP formula): gelu x1" in str(s)


# memory


@pytest.mark.parametrize("which", ["resnet18", "transformer"])
def test_saved_activation_bytes_equal_a_real_cpu_training_step(which):
    torch.manual_seed(0)
    if which == "resnet18":
        model, x = ts.create_model("resnet18").train(), torch.randn(2, 3, 64, 64)
    else:
        model, x = TinyLM().train(), torch.randint(0, 100, (2, 16))
    real = saved_bytes_real(model, x)
    s = ts.summary(model, inputs=x, mode="train")
    assert abs(s.saved_bytes - real) <= 0.01 * real
    t = s.totals
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert t.training_bytes == weights + buffers + 3 * trainable + real


# the model is left exactly as it was


class Caching(nn.Module):
    """Keeps state in forward (an attribute, a buffer update) and carries hooks of its own."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        self.last_shape = tuple(x.shape)
        return self.bn(self.conv(x))


@pytest.mark.parametrize("mode", ["same", "train", "eval"])
def test_model_untouched_after_summary(mode):
    model = Caching().train()
    model.conv.register_forward_hook(lambda *a: None)
    model.bn.register_forward_pre_hook(lambda *a: None)
    model.bn.running_mean.fill_(0.5)
    before = probe_snapshot(model)
    s = ts.summary(model, (2, 3, 8, 8), mode=mode)
    assert s.complete
    assert probe_differences(before, probe_snapshot(model)) == []
    assert model.calls == 0 and not hasattr(model, "last_shape")


class ItemModel(nn.Module):
    """Branches on a value: cannot run on meta nor under FakeTensorMode."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        if h.sum().item() > -1e9:
            h = h * 2
        return self.b(h)


def test_fallback_to_real_only_when_allowed_and_rows_marked_otherwise():
    model = ItemModel()
    before = probe_snapshot(model)
    s = ts.summary(model, (3, 4))
    assert not s.complete and s.backend in ("meta", "fake")
    assert [a.split(":")[0] for a in s.attempts] == ["meta", "fake"]
    assert s[""].status == "failed" and s["a"].status == "ok" and s["b"].status == "not reached"
    assert "the model (ItemModel) got (3, 4)" in s.error
    assert "? (failed)" in str(s) and "Incomplete:" in str(s)
    real = ts.summary(model, (3, 4), allow_real=True)
    assert real.complete and real.backend == "real" and real.total_flops == 2 * 3 * 4 * 4 + 2 * 3 * 4 * 2
    assert probe_differences(before, probe_snapshot(model)) == []


def test_fake_tensor_fallback_for_plain_tensor_attributes():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.scale = torch.ones(4)  # not a buffer: stays on CPU when parameters move to meta

        def forward(self, x):
            return self.lin(x) * self.scale

    s = ts.summary(Plain(), (2, 4))
    assert s.complete and s.backend == "fake" and s.attempts[0].startswith("meta:")
    assert s.outputs[0].shape == (2, 4) and s.total_flops == 2 * 2 * 4 * 4


# formats and arguments


def test_json_markdown_and_depth():
    s = ts.summary(ts.create_model("resnet18"), (1, 3, 32, 32), depth=1)
    data = json.loads(s.to_json())
    assert data["totals"]["total_params"] == s.total_params and data["totals"]["total_flops"] == s.total_flops
    assert {r["path"] for r in data["layers"]} >= {"layer1.0.conv1", "fc"}  # every level in JSON
    assert all(r.depth <= 1 for r in s.rows()) and "conv1 " in str(s) and "layer1.0" not in str(s)
    md = s.to_markdown()
    assert md.startswith("| Module | Type | Output shape |") and "23" not in md.splitlines()[1]
    assert "- FLOPs:" in md


@pytest.mark.parametrize("bad", [
    dict(input_size=None), dict(input_size=(1, 3), inputs=torch.zeros(1, 3)), dict(input_size=("a",)),
    dict(input_size=(1, 4), mode="training"), dict(input_size=(1, 4), device="gpu"), dict(input_size=(1, 4), depth=-1),
])
def test_bad_arguments_raise_inspect_error(bad):
    with pytest.raises(InspectError):
        ts.summary(nn.Linear(4, 2), **bad)


def test_missing_module_lookup_suggests_a_name():
    from collections import OrderedDict

    s = ts.summary(nn.Sequential(OrderedDict(linear=nn.Linear(4, 2))), (1, 4))
    with pytest.raises(InspectError, match="did you mean 'linear'"):
        s["linaer"]


def test_transposed_conv_and_grouped_conv_flops_equal_flop_counter_mode():
    def make():
        return nn.Sequential(nn.Conv2d(8, 16, 3, groups=4, padding=1), nn.ConvTranspose2d(16, 4, 4, stride=2))

    s = ts.summary(make(), (2, 8, 10, 10))
    total, _ = flop_counter_total(make, (2, 8, 10, 10))
    assert s.total_flops == total
    grouped = 2 * (2 * 16 * 10 * 10) * (8 // 4) * 9  # 2 x batch x out positions x in channels per group x k^2
    transposed = 2 * (2 * 10 * 10) * 16 * 4 * 16  # 2 x batch x in positions x in x out x k^2
    assert s.total_flops == grouped + transposed
