"""``summary(model, input_size)``: shapes, parameters, FLOPs and memory of any model, on the meta device.

``summary`` never changes its argument: the forward runs on stand-ins for the parameters and
buffers, and every module's attributes, hooks and modes are restored afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InspectError
from ..runner import backend_order, describe, example_call, refuse_uninitialised, renamed
from .collect import collect, module_params
from .format import render_html, render_markdown, render_short, render_text, rich_table
from .records import LayerRecord, OutputLeaf
from .totals import Totals, model_totals

__all__ = ["Summary", "summary"]

MODES = ("same", "train", "eval")


@dataclass
class Summary:
    """What :func:`summary` found: one :class:`LayerRecord` per module call, and the totals.

    ``str()`` is the table (rows down to ``depth``); ``repr()`` (a REPL) and ``_repr_html_`` (a notebook) show
    it as deep as fits in about 40 rows; ``to_json()`` / ``to_dict()`` hold every row;
    ``to_markdown()`` is the table in Markdown. ``error`` is set when no backend could run the whole
    forward: rows it could not compute are marked (``status`` other than ``"ok"``, ``?`` in the table).
    """

    model_type: str
    input_desc: str
    records: list[LayerRecord]
    totals: Totals
    depth: int = 3
    backend: str = "meta"
    mode: str = "eval"
    uncounted_ops: dict[str, int] = field(default_factory=dict)
    outputs: list[OutputLeaf] = field(default_factory=list)
    attempts: list[str] = field(default_factory=list)  # why earlier backends were given up
    error: str | None = None

    # the figures people ask for, at the top level
    @property
    def total_params(self) -> int:
        return self.totals.total_params

    @property
    def trainable_params(self) -> int:
        return self.totals.trainable_params

    @property
    def total_flops(self) -> int:
        return self.totals.total_flops

    @property
    def saved_bytes(self) -> int:
        return self.totals.saved_bytes

    @property
    def complete(self) -> bool:
        return self.error is None

    def rows(self, depth: int | None = None) -> list[LayerRecord]:
        """The records down to ``depth`` (default: the summary's), in call order."""
        limit = self.depth if depth is None else depth
        return [r for r in self.records if r.depth <= limit]

    def __getitem__(self, path: str) -> LayerRecord:
        """The first call's record of the module at ``path`` (``""`` is the model itself)."""
        for rec in self.records:
            if rec.path == path:
                return rec
        from ..errors import closest

        hint = closest(path, [r.path for r in self.records])
        raise InspectError(f"no module {path!r} in this summary" + (f"; did you mean {hint[0]!r}?" if hint else ""))

    def __str__(self) -> str:
        return render_text(self)

    def __repr__(self) -> str:  # the REPL: the table, as deep as fits in about 40 rows
        return render_short(self)

    def _repr_html_(self) -> str:  # a notebook: the same rows as an HTML table
        return render_html(self)

    def __rich_console__(self, console, options):  # console.print(summary): the table, fitted to the terminal
        yield rich_table(self, width=options.max_width)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_type,
            "input": self.input_desc,
            "backend": self.backend,
            "mode": self.mode,
            "complete": self.complete,
            "error": self.error,
            "attempts": list(self.attempts),
            "flops_unit": "FLOPs (one multiply or add; 2 x MACs)",
            "totals": self.totals.to_dict(),
            "outputs": [leaf.to_dict() for leaf in self.outputs],
            "uncounted_ops": dict(self.uncounted_ops),
            "layers": [r.to_dict() for r in self.records],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_markdown(self) -> str:
        return render_markdown(self)


# the function


def summary(
    model: nn.Module,
    input_size: Sequence[int] | Sequence[Sequence[int]] | None = None,
    *,
    example_inputs: Any = None,
    kwargs: dict | None = None,
    dtype: torch.dtype | Sequence[torch.dtype] | None = None,
    depth: int = 3,
    backend: str | None = None,
    mode: str = "same",
    allow_real: bool = False,
    inputs: Any = None,
    device: str | None = None,
) -> Summary:
    """Shapes, parameters, FLOPs and memory of ``model`` for one forward, without running it for real.

    Args:
        model: any ``nn.Module``; left exactly as it was (class, device, dtype, mode, buffers,
            attributes, hooks).
        input_size: the input shape, e.g. ``(1, 3, 224, 224)``, or a list of shapes for several inputs.
        example_inputs: example inputs instead (any dtype; a tensor, a tuple/list of positional
            arguments, a dict of keyword arguments; token ids for transformers, ``([image],)`` for
            detection models). Only their shapes and dtypes are used unless the run falls back to ``"real"``.
        kwargs: extra keyword arguments for the forward.
        dtype: dtype of the ``input_size`` tensors (``torch.long`` for token ids), one per shape.
        depth: deepest level printed by ``str()`` (every level is kept in ``records`` and ``to_json()``).
        backend: ``"meta"`` (the default: no memory, no compute), ``"fake"`` (``FakeTensorMode``) or
            ``"real"`` (a real forward with the model's parameters, buffers cloned).
        mode: ``"same"`` (the model's own train/eval flags), ``"train"`` or ``"eval"`` for the run;
            the activation bytes saved for backward are those of this mode (``"train"`` for a training step).
        allow_real: when meta and fake both fail (data-dependent shapes, ``.item()``), run for real on
            the given inputs (zeros for an ``input_size``) instead of marking the rows not computed.
        inputs, device: the deprecated old names of ``example_inputs`` and ``backend`` (they warn).

    Raises:
        InspectError: bad arguments, or a model with uninitialised lazy layers.

    Example (a ResNet-18 at 224x224: 3.63 GFLOPs, ``FlopCounterMode``'s figure):

        >>> import torchsmith
        >>> s = torchsmith.summary(torchsmith.create_model("resnet18"), (1, 3, 224, 224))
        >>> s.total_params, s.total_flops
        (11689512, 3628146688)
        >>> s["layer3.0.conv1"].outputs[0].shape
        (1, 256, 14, 14)
    """
    example_inputs = renamed(example_inputs, inputs, new="example_inputs", old="inputs", error=InspectError)
    backend = renamed(backend, device, new="backend", old="device", error=InspectError) or "meta"
    if mode not in MODES:
        raise InspectError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    order = backend_order(backend, allow_real=allow_real, error=InspectError)
    if not isinstance(depth, int) or depth < 0:
        raise InspectError(f"depth must be an integer >= 0; got {depth!r}")
    refuse_uninitialised(model, error=InspectError, action="summarise it")
    args, kw = example_call(model, input_size=input_size, example_inputs=example_inputs, kwargs=kwargs, dtype=dtype,
                            guess=False, error=InspectError)
    training = {"same": None, "train": True, "eval": False}[mode]
    params = module_params(model)
    attempts, best = [], None
    for name in order:
        run = collect(model, args, kw, backend=name, training=training, params=params)
        if run.error is None:
            best = run
            break
        if run.misfit:  # the input does not fit a layer's weights: a real run would fail there too
            raise InspectError(f"summary of {type(model).__name__} stopped at {run.error}")
        attempts.append(f"{name}: {run.error}")
        if best is None or run.finished > best.finished:
            best = run
    totals = model_totals(model)
    totals.total_flops = best.flops
    totals.saved_bytes = best.saved_bytes
    records = _with_missing(model, best, params)
    run_mode = mode if mode != "same" else ("train" if model.training else "eval")
    return Summary(
        model_type=type(model).__name__, input_desc=describe((args, kw)), records=records, totals=totals, depth=depth,
        backend=best.backend, mode=run_mode, uncounted_ops=dict(best.uncounted), outputs=best.outputs,
        attempts=attempts, error=best.error,
    )


def _with_missing(model: nn.Module, run, params) -> list[LayerRecord]:
    """The run's records plus one for every module that was not called.

    A container never called itself but whose children ran (``ModuleList``, ``ModuleDict``) gets
    status ``"container"``, sits before its first child's row, and sums its children's FLOPs. Any
    other module gets ``"not run"`` (or ``"not reached"`` when the forward failed), after its parent's rows.
    """
    ran = {r.path for r in run.records}
    uncalled = {path for path, _ in model.named_modules() if path not in ran}
    missing = "not run" if run.error is None else "not reached"
    records = list(run.records)
    for path, module in model.named_modules():
        if path not in uncalled:
            continue
        info = params[path]
        prefix = path + "."
        under = [r for r in run.records if r.path.startswith(prefix)]
        status = "container" if under else missing
        rec = LayerRecord(path, type(module).__name__, path.count(".") + 1 if path else 0, 1, info.count,
                          info.trainable, info.tied, status=status)
        if under:
            # FLOPs of the topmost descendants that ran (their parent is this container or another uncalled one)
            rec.flops = sum(r.flops for r in under if r.path.rpartition(".")[0] == path
                            or r.path.rpartition(".")[0] in uncalled)
            at = next(i for i, r in enumerate(records) if r.path.startswith(prefix))
        else:
            parent = path.rpartition(".")[0]
            at = len(records)
            for i, r in enumerate(records):
                if r.path == parent or not parent or r.path.startswith(parent + "."):
                    at = i + 1
        records.insert(at, rec)
    return records
