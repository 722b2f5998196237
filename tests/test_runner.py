"""The runner: example inputs, the nested-value walker, stand-ins, the fallback order, the untouched guarantee
(classes included), and the refusal of models whose lazy layers are not initialised."""

from __future__ import annotations

import dataclasses
import warnings
from collections import OrderedDict, namedtuple

import pytest
import torch
from helpers import probe_differences, probe_snapshot
from torch import nn

import torchsmith as ts
from torchsmith import CheckpointError, FeatureExtractionError, InspectError, SurgeryError, TorchsmithError
from torchsmith.runner import (
    as_call, backend_order, describe, example_call, main_output, map_tensors, on_stand_ins, output_tensors, probe,
    renamed, tensor_leaves, untouched,
)  # fmt: skip


# example inputs


def test_example_inputs_in_every_form():
    x, ids = torch.zeros(2, 3), torch.zeros(2, 5, dtype=torch.long)
    assert as_call(x) == ((x,), {})
    assert as_call((x, ids)) == ((x, ids), {}) and as_call([x, ids]) == ((x, ids), {})
    assert as_call(([x],)) == (([x],), {})  # a detector's list of images: one positional argument
    assert as_call({"input_ids": ids}) == ((), {"input_ids": ids})
    with pytest.raises(SurgeryError, match="got str"):
        as_call("image.png", error=SurgeryError)


def test_example_call_from_sizes_dtypes_kwargs_or_a_guess():
    args, kw = example_call(nn.Linear(4, 2), input_size=[(2, 4), (2,)], dtype=[torch.float16, torch.long],
                            kwargs={"flag": True})
    assert [(tuple(a.shape), a.dtype, a.device.type) for a in args] == [((2, 4), torch.float16, "meta"), ((2,), torch.long, "meta")]
    assert kw == {"flag": True}
    guesses = {
        "conv2d": (nn.Sequential(nn.Conv2d(5, 8, 3)), (1, 5, 224, 224), torch.float32),
        "conv1d": (nn.Sequential(nn.Conv1d(2, 8, 3).double()), (1, 2, 224), torch.float64),
        "linear": (nn.Linear(7, 2), (1, 7), torch.float32),
        "tokens": (nn.Sequential(nn.Embedding(10, 4)), (1, 8), torch.long),
    }
    for name, (model, shape, dtype) in guesses.items():
        (x,), _ = example_call(model)
        assert (tuple(x.shape), x.dtype) == (shape, dtype), name
    with pytest.raises(InspectError, match="pass input_size"):
        example_call(nn.Linear(4, 2), guess=False, error=InspectError)
    with pytest.raises(SurgeryError, match="not both"):
        example_call(nn.Linear(4, 2), input_size=(1, 4), example_inputs=torch.zeros(1, 4), error=SurgeryError)
    with pytest.raises(SurgeryError, match="no Conv, Linear or Embedding"):
        example_call(nn.ReLU(), error=SurgeryError)
    for bad in [("a",), (1, -2), [(1, 4), (2, "x")]]:
        with pytest.raises(InspectError, match="input_size must be"):
            example_call(nn.Linear(4, 2), input_size=bad, error=InspectError)


def test_describe_names_dtypes_other_than_float32_and_keywords():
    call = ((torch.zeros(1, 3, 8, 8), [torch.zeros(2)]), {"ids": torch.zeros(1, 8, dtype=torch.long), "flag": None})
    assert describe(call) == "(1, 3, 8, 8), [(2,)], ids=(1, 8) int64, flag=None"
    assert describe(((object(),), {})) == "object"  # never a repr of whatever was passed


def test_renamed_keyword_warns_at_the_caller_and_refuses_both():
    def public(new=None, old=None):
        return renamed(new, old, new="new", old="old", error=InspectError)

    assert public(new=1) == 1
    with pytest.warns(DeprecationWarning, match="old= is deprecated; pass new= instead") as caught:
        assert public(old=2) == 2
    assert caught[0].filename == __file__
    with pytest.raises(InspectError, match="pass new= only"):
        public(new=1, old=2)


# nested values


Pair = namedtuple("Pair", "a b")


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    hidden: tuple


@dataclasses.dataclass
class Record(OrderedDict):
    """transformers' ModelOutput shape: an OrderedDict subclass that is also a dataclass (set fields only)."""

    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is not None:
                self[f.name] = getattr(self, f.name)


def test_the_walker_keeps_every_container_type_and_key_path():
    t = torch.zeros(2, 3)
    value = {"pair": Pair(t, [t, 1]), "out": Out(t, (t,)), "record": Record(logits=t), "size": torch.Size([2])}
    mapped = map_tensors(value, lambda x: x.new_ones(x.shape))
    assert type(mapped["pair"]) is Pair and mapped["pair"].b[1] == 1 and mapped["pair"].a.sum() == 6
    assert type(mapped["out"]) is Out and mapped["out"].hidden[0].sum() == 6
    assert type(mapped["record"]) is Record and list(mapped["record"]) == ["logits"] and mapped["record"].loss is None
    assert mapped["record"]["logits"].sum() == 6 and mapped["size"] == torch.Size([2])
    assert [k for k, _ in tensor_leaves(value)] == ["pair.0", "pair.1.0", "out.logits", "out.hidden.0", "record.logits"]
    assert len(output_tensors(value)) == 5


def test_main_output_reads_logits_of_dicts_and_dataclasses():
    t, u = torch.zeros(2, 3), torch.zeros(2, 4)
    assert main_output(t) is t and main_output((t, u)) is t
    assert main_output({"out": t, "aux": u}) is t and main_output(Record(logits=t)) is t
    assert main_output(Out(t, (u,))) is t
    assert main_output({"scores": t}) is None and main_output(Out("text", ())) is None


# runs


class NeedsFake(nn.Module):
    """Keeps a tensor as a plain attribute: meta cannot add it to a meta input, FakeTensorMode can."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.offset = torch.ones(4)

    def forward(self, x):
        return self.fc(x + self.offset)


class NeedsReal(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x) * (2 if x.sum().item() >= 0 else 1)


def test_probe_falls_back_meta_fake_real_and_real_only_when_allowed():
    call = ((torch.empty(3, 4, device="meta"),), {})
    assert probe(nn.Linear(4, 2), call).device.type == "meta"
    from torch._subclasses.fake_tensor import FakeTensor

    assert isinstance(probe(NeedsFake(), call), FakeTensor)  # nonzero has no meta kernel; fake runs it
    needs_real = NeedsReal()
    real = probe(needs_real, call)  # on zeros: the output is twice the bias
    assert real.device.type == "cpu" and torch.equal(real, 2 * needs_real.fc.bias.detach().expand(3, 2))
    with pytest.raises(SurgeryError, match=r"cannot run NeedsReal on \(\(3, 4\)\) to measure it: .*example_inputs=") as err:
        probe(NeedsReal(), call, allow_real=False, error=SurgeryError, purpose="measure it")
    assert err.value.__cause__ is not None
    assert backend_order() == ["meta", "fake"] and backend_order(allow_real=True) == ["meta", "fake", "real"]
    with pytest.raises(InspectError, match="backend must be one of meta, fake, real"):
        backend_order("cuda", error=InspectError)


def test_stand_ins_share_one_tensor_for_tied_weights_and_leave_the_model_untouched():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False), nn.BatchNorm1d(10))
    model[1].weight = model[0].weight
    model[2].running_mean.fill_(0.5)
    model.eval()
    before = probe_snapshot(model)
    for backend in ("meta", "fake", "real"):
        with on_stand_ins(model, ((torch.zeros(2, dtype=torch.long),), {}), backend=backend, training=True) as run:
            assert run.state["0.weight"] is run.state["1.weight"]
            assert (run.state["1.weight"] is model[0].weight) == (backend == "real")
            assert run.state["2.running_mean"] is not model[2].running_mean
            out = run.forward()
            assert tuple(out.shape) == (2, 10) and model.training  # training=True inside
        assert probe_differences(before, probe_snapshot(model)) == [], backend
    assert torch.equal(model[2].running_mean, torch.full((10,), 0.5))  # a real train-mode run updated a clone


def test_untouched_puts_back_classes_attributes_hooks_and_materialised_lazy_layers():
    model = nn.Sequential(nn.LazyLinear(3), nn.ReLU())
    hook = model[1].register_forward_hook(lambda *a: None)
    with untouched(model):
        model(torch.zeros(2, 5))  # materialises: LazyLinear -> Linear, weight (3, 5)
        model[1].cache = torch.zeros(1)
        model[1]._forward_hooks.clear()
        assert type(model[0]) is nn.Linear
    assert type(model[0]) is nn.LazyLinear and not hasattr(model[1], "cache") and len(model[1]._forward_hooks) == 1
    assert model(torch.zeros(2, 7)).shape == (2, 3)  # still lazy: it takes another width
    hook.remove()


# models whose lazy layers are not initialised


def lazy_model() -> nn.Module:
    return nn.Sequential(nn.LazyConv2d(8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LazyLinear(10))


REFUSALS = {
    "probe": (lambda m: probe(m, ((torch.zeros(1, 3, 16, 16),), {}), error=SurgeryError), SurgeryError),
    "summary": (lambda m: ts.summary(m, (1, 3, 16, 16)), InspectError),
    "diagram": (lambda m: ts.diagram(m, (1, 3, 16, 16), path="never.html"), InspectError),
    "feature_info": (lambda m: ts.feature_info(m, (1, 3, 16, 16)), FeatureExtractionError),
    "replace_head": (lambda m: ts.replace_head(m, 3), SurgeryError),
    "replace_head path=": (lambda m: ts.replace_head(m, 3, path="4"), SurgeryError),
    "adapt_input_channels": (lambda m: ts.adapt_input_channels(m, 1), SurgeryError),
    "freeze": (lambda m: ts.freeze(m, ["0"]), SurgeryError),
    "freeze_report": (lambda m: ts.freeze_report(m), SurgeryError),
    "save_weights": (lambda m: ts.save_weights(m, "never.safetensors"), CheckpointError),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_uninitialised_lazy_layers_are_refused_and_the_model_still_runs(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    call, kind = REFUSALS[name]
    model = lazy_model()
    classes = [type(m) for m in model.modules()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: lazy modules are a new feature
        with pytest.raises(kind) as err:
            call(model)
    assert isinstance(err.value, TorchsmithError)
    message = str(err.value)
    assert ("'0', '4'" in message or "'0.weight'" in message) and "run one forward first (model(example_input))" in message
    assert [type(m) for m in model.modules()] == classes and not list(tmp_path.iterdir())
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)  # initialises as a lazy model does
    assert type(model[0]) is nn.Conv2d


# outputs as dataclasses


@dataclasses.dataclass
class Prediction:
    logits: torch.Tensor
    features: torch.Tensor


class DataclassOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.classifier = nn.Linear(8, 5)

    def forward(self, x):
        h = self.body(x).relu()
        return Prediction(logits=self.classifier(h), features=h)


def test_replace_head_finds_the_logits_of_a_dataclass_output():
    model = ts.replace_head(DataclassOut(), 3)
    assert model.classifier.out_features == 3 and model.body.out_features == 8
    assert model(torch.randn(2, 6)).logits.shape == (2, 3)
