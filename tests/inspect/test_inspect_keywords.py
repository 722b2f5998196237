"""One keyword per idea: ``example_inputs=`` and ``backend=`` on summary / diagram / trace; the old ``inputs=``
and ``device=`` still work for one release, with a DeprecationWarning pointing at the caller."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import torchsmith as ts
from torchsmith import InspectError


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_summary_new_and_old_keywords_give_the_same_summary():
    x = torch.zeros(3, 4)
    new = ts.summary(model(), example_inputs=x, backend="fake")
    with pytest.warns(DeprecationWarning) as caught:
        old = ts.summary(model(), inputs=x, device="fake")
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2 and "pass backend=" in messages[0] and "pass example_inputs=" in messages[1]
    assert {w.filename for w in caught} == {__file__}  # the warning points at the caller, not at torchsmith
    assert new.to_dict() == old.to_dict()
    assert new.backend == "fake" and new.input_desc == "(3, 4)" and new.total_flops == 2 * 3 * (4 * 8 + 8 * 2)


@pytest.mark.parametrize("both", [dict(inputs=torch.zeros(1, 4), example_inputs=torch.zeros(1, 4)),
                                  dict(input_size=(1, 4), device="meta", backend="meta")])
def test_old_and_new_keyword_together_is_an_error(both, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before any warning
        with pytest.raises(InspectError, match="deprecated old name"):
            ts.summary(model(), **both)
        with pytest.raises(InspectError, match="deprecated old name"):
            ts.diagram(model(), path=tmp_path / "m.html", **both)


def test_diagram_new_and_old_keywords(tmp_path):
    page = ts.diagram(model(), example_inputs=(torch.zeros(2, 4),), backend="real", path=tmp_path / "new.html")
    with pytest.warns(DeprecationWarning, match="pass example_inputs= instead"):
        old = ts.diagram(model(), inputs=(torch.zeros(2, 4),), path=tmp_path / "old.html")
    assert "input (2, 4)" in page.read_text() and "input (2, 4)" in old.read_text()
    with pytest.warns(DeprecationWarning, match="pass backend= instead"), pytest.raises(InspectError, match="backend must be"):
        ts.diagram(model(), (2, 4), device="gpu", path=tmp_path / "bad.html")


def test_trace_takes_example_inputs_in_every_form():
    net = model()
    x = torch.randn(2, 4)
    expected = net(x)
    for given in (x, (x,), [x]):
        torch.testing.assert_close(ts.trace(net, example_inputs=given, file=None).output, expected)

    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, *, features):
            return self.fc(features)

    kw = Keyword()
    assert ts.trace(kw, example_inputs={"features": x}, file=None).steps[0].inputs == "features=(2, 4)"
    with pytest.raises(InspectError, match="not both"):
        ts.trace(net, x, example_inputs=x, file=None)
