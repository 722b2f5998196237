"""``trace(model, *inputs)``: the tutorial's printing forward, for any model, by hooks.

``trace`` runs the model for real (its own mode, device and grad mode) and removes its hooks
afterwards, even when the forward raises; it changes nothing else.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console
from torch import nn

from ..display import REPR_ROWS, capped, html_table, more
from ..errors import InspectError
from ..runner import as_call, describe
from .collect import describe_failure
from .records import output_leaves

__all__ = ["Trace", "TraceStep", "trace"]


@dataclass
class TraceStep:
    """One module call: where, what went in and what came out (``None`` while it had not returned)."""

    path: str
    type: str
    depth: int
    inputs: str
    outputs: str | None = None

    def __str__(self) -> str:
        name = "  " * self.depth + (self.path.rsplit(".", 1)[-1] if self.path else self.type)
        return f"{name:<32} {self.type:<24} {self.inputs} -> {self.outputs if self.outputs is not None else '?'}"


    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "type": self.type, "depth": self.depth, "inputs": self.inputs, "outputs": self.outputs}


@dataclass
class Trace:
    """Every module call of one forward in call order (parents before their children), and its output.

    ``str()`` lists every call; ``repr()`` (a REPL) and ``_repr_html_`` (a notebook) the first 40 and a count.
    """

    steps: list[TraceStep] = field(default_factory=list)
    output: Any = None

    def __str__(self) -> str:
        return "\n".join(str(s) for s in self.steps)

    def _heading(self) -> str:
        shapes = ", ".join(str(leaf.shape) for leaf in output_leaves(self.output)) or "no tensors"
        return f"Trace: {len(self.steps):,} module calls; output {shapes}"

    def __repr__(self) -> str:
        shown, left = capped(self.steps, REPR_ROWS)
        lines = [self._heading(), *map(str, shown), more(left, "calls", "print(trace) lists them")]
        return "\n".join(line for line in lines if line)

    def _repr_html_(self) -> str:
        shown, left = capped(self.steps, REPR_ROWS)
        rows = [("\u00a0" * (2 * s.depth) + (s.path.rsplit(".", 1)[-1] if s.path else s.type), s.type, s.inputs,
                 s.outputs if s.outputs is not None else "?") for s in shown]
        return html_table(self._heading(), ["Module", "Type", "Inputs", "Outputs"], rows,
                          notes=[more(left, "calls", "print(trace) lists them")])

    def to_dict(self) -> dict[str, Any]:
        """Every call (``path``, ``type``, ``depth``, ``inputs``, ``outputs``) and the output's shapes, for JSON."""
        return {"calls": [s.to_dict() for s in self.steps],
                "output": [leaf.to_dict() for leaf in output_leaves(self.output)]}


def trace(
    model: nn.Module, *inputs: Any, example_inputs: Any = None, file: TextIO | None | str = "stdout", **kwargs: Any
) -> Trace:
    """Run ``model(*inputs, **kwargs)`` and print each module as it is called, with shapes in and out.

    The inputs are given positionally (and ``**kwargs``), or as ``example_inputs=`` as everywhere
    else (a tensor, a tuple / list of positional arguments, a dict of keyword arguments).

    Printed in call order, one line per call: indented name, type, input shapes -> output shapes
    (every tensor of tuple / dict / dataclass outputs), to ``file`` (``sys.stdout`` at the time of
    the call by default; ``None`` prints nothing). Returns a
    :class:`Trace`; ``.output`` is the model's output.

    Raises:
        InspectError: the forward raised; the message names the innermost module that was running
            and the shapes that went into it (``layer3.0.conv1 (Conv2d) got (1, 128, 28, 28), expects
            256 input channels: ...``); the original error is chained as ``__cause__``.

    Example (the tutorial's first composition, Conv2d(3, 20, 5)-ReLU-Conv2d(20, 64, 5)-ReLU):

        >>> import torch
        >>> net = nn.Sequential(nn.Conv2d(3, 20, 5), nn.ReLU(), nn.Conv2d(20, 64, 5), nn.ReLU())
        >>> t = trace(net, torch.zeros(1, 3, 224, 224), file=None)
        >>> print(t.steps[3])
          2                              Conv2d                   (1, 20, 220, 220) -> (1, 64, 216, 216)
        >>> t.output.shape
        torch.Size([1, 64, 216, 216])
    """
    if example_inputs is not None:
        if inputs:
            raise InspectError("pass the inputs positionally or as example_inputs=, not both.")
        inputs, given = as_call(example_inputs, error=InspectError)
        kwargs = {**given, **kwargs}
    paths = {m: name for name, m in model.named_modules()}
    result = Trace()
    open_steps: list[tuple[TraceStep, nn.Module, Any]] = []
    file = sys.stdout if file == "stdout" else file
    console = Console(file=file, highlight=False, soft_wrap=True) if file is not None else None

    def pre_hook(module: nn.Module, args: tuple, kw: dict) -> None:
        path = paths[module]
        step = TraceStep(path, type(module).__name__, path.count(".") + 1 if path else 0, describe((args, kw)) or "nothing")
        result.steps.append(step)
        open_steps.append((step, module, (args, kw)))

    def post_hook(module: nn.Module, args: tuple, kw: dict, output: Any) -> None:
        while open_steps and open_steps[-1][1] is not module:  # a child raised and its parent caught it
            open_steps.pop()
        if open_steps:
            step = open_steps.pop()[0]
            step.outputs = ", ".join(str(leaf.shape) for leaf in output_leaves(output)) or "no tensors"

    with ExitStack() as hooks:
        for module in paths:
            hooks.callback(module.register_forward_pre_hook(pre_hook, with_kwargs=True).remove)
            hooks.callback(module.register_forward_hook(post_hook, with_kwargs=True).remove)
        try:
            result.output = model(*inputs, **kwargs)
        except Exception as err:
            if console is not None:
                console.print(str(result))
            if open_steps:
                step, module, args = open_steps[-1]
                message = describe_failure(step.path, module, args, err)
            else:
                message = f"{type(model).__name__} got {describe((inputs, kwargs)) or 'nothing'}: {type(err).__name__}: {err}"
            raise InspectError(message) from err
    if console is not None:
        console.print(str(result))
    return result
