"""What the model commands share: loading MODEL (a registered name, a save_model directory or a spec file),
and turning ``--input`` / ``--dtype`` into example inputs."""

from __future__ import annotations

from typing import Optional

import typer


def parse_dtype(name: str):
    import torch

    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise typer.BadParameter(f"{name!r} is not a torch dtype (float32, float16, bfloat16, long, int32, bool, ...)")
    return dtype


SPEC_SUFFIXES = (".yaml", ".yml", ".json")


def registry():
    """The registry module with the built-in models in it (importing the zoo and spec registers them)."""
    from .. import registry, spec, zoo  # noqa: F401

    return registry


def refuse_weights_file(model: str, command: str) -> None:
    """A MODEL argument of ``command`` that names a weights file: say what to run instead (its tensors:
    ``inspect``; the registered model its keys fit, when one does)."""
    from ..checkpoint.formats import INDEX_SUFFIX, SAFETENSORS_SUFFIX, TORCH_SUFFIXES

    if not model.lower().endswith((*TORCH_SUFFIXES, SAFETENSORS_SUFFIX, INDEX_SUFFIX)):
        return
    import os

    from ..errors import TorchsmithError

    hint = f"To list its tensors: torchsmith inspect {model}."
    if os.path.isfile(model):
        from .. import models_io  # noqa: F401 - registers the guess of which registered model the keys fit
        from ..checkpoint import inspect_checkpoint
        from ..checkpoint.keys import guess_layout

        fits = guess_layout({key: tuple(shape) for key, shape, _ in inspect_checkpoint(model, verify=False).entries})
        if fits:
            hint += (f" Its keys fit the registered model {fits}: torchsmith {command} {fits.name} (and torchsmith diff "
                     f"{model} {fits.name} compares them).")
    else:
        hint = f"(There is no file {model!r} either.) " + hint
    raise TorchsmithError(
        f"{model!r} is a weights file, not a model: torchsmith {command} takes a registered model name, a save_model "
        f"directory or a spec file (.yaml/.json). {hint}"
    )


def load_model_arg(model: str, *, meta: bool, command: str):
    """A registered model name or a spec file (built on the meta device when ``meta``), or a save_model directory;
    a weights file is refused with what ``command`` takes and what to run instead."""
    import contextlib
    import os

    import torch

    create_model = registry().create_model
    refuse_weights_file(model, command)
    if os.path.isdir(model):
        from ..models_io import load_model

        return load_model(model)
    with torch.device("meta") if meta else contextlib.nullcontext():
        if model.lower().endswith(SPEC_SUFFIXES) and os.path.isfile(model):
            from pathlib import Path

            from ..spec import build

            return build(Path(model))
        return create_model(model)


def spec_input(model: str) -> Optional[list[str]]:
    """The ``input`` a spec file declares, in ``--input`` form (None for anything else)."""
    import os

    if not (model.lower().endswith(SPEC_SUFFIXES) and os.path.isfile(model)):
        return None
    from pathlib import Path

    from ..spec.source import read_spec

    declared = read_spec(Path(model)).get("input")
    if isinstance(declared, dict):
        return [f"{name}={','.join(map(str, shape))}" for name, shape in declared.items()]
    return [",".join(map(str, declared))] if declared else None


def example_for(model, values: Optional[list[str]], dtype: str, make=None) -> dict:
    """``{"example_inputs": ...}`` for ``summary`` / ``diagram`` / ``trace`` from ``--input`` (the spec
    commands' format, ``parse_inputs``): one shape -> one tensor; ``name=shape`` (repeatable) -> keyword
    inputs; none -> guessed from the first layer. ``make(shape, dtype)`` builds the tensors (meta by default)."""
    import torch

    from ..runner import example_input

    dt = parse_dtype(dtype)
    make = make or (lambda shape, dt: torch.empty(*shape, dtype=dt, device="meta"))
    parsed = parse_inputs(values) if values else list(example_input(model).shape)
    if isinstance(parsed, dict):
        return {"example_inputs": {name: make(shape, dt) for name, shape in parsed.items()}}
    return {"example_inputs": make(parsed, dt)}


def parse_inputs(values: list[str]) -> object:
    """``1,3,224,224`` -> a shape; ``image=1,3,64,64`` (repeatable) -> {name: shape}."""

    def shape(text: str) -> list[int]:
        try:
            dims = [int(d) for d in text.replace("x", ",").split(",") if d.strip()]
        except ValueError:
            dims = []
        if not dims or any(d < 1 for d in dims):
            raise typer.BadParameter(f"{text!r} is not a shape; write it as 1,3,224,224", param_hint="--input")
        return dims

    if len(values) == 1 and "=" not in values[0]:
        return shape(values[0])
    named = {}
    for v in values:
        name, sep, dims = v.partition("=")
        if not sep:
            raise typer.BadParameter(f"with several inputs, name each: --input image=1,3,64,64 (got {v!r})", param_hint="--input")
        named[name.strip()] = shape(dims)
    return named
