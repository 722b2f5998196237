"""Edits that check themselves: every structural edit runs the model once through the shape runner
afterwards, and an edit that leaves it unable to run is rolled back and refused.

The pattern, in each operation::

    call = checking_call(model, input_size=input_size, example_inputs=example_inputs, action="replace_head")
    with restored_on_failure(model):      # the model exactly as it was, if anything below raises
        ...                               # the edit, recorded
        check_runs(model, call, action="replace_head")

The call is the caller's ``example_inputs`` / ``input_size`` (which must run the model as it is), else
the runner's guess from the first layer when that runs it; with neither the edit is not checked, and a
log message says so. Nothing here changes the model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import SurgeryError
from ..inspect.collect import collect, module_params
from ..runner import Call, backend_order, describe, example_call, probe

__all__ = ["checking_call", "check_runs", "failing_layer"]

logger = logging.getLogger("torchsmith")


def checking_call(
    model: nn.Module, *, input_size: Sequence[int] | None = None, example_inputs: Any = None, action: str
) -> Call | None:
    """The call ``action`` is checked on: the given inputs, else a guessed one; None when the guess does not run
    the model as it is (nothing to check against: logged).

    Raises:
        SurgeryError: the given inputs do not run the model as it is.
    """
    given = bool(input_size) or example_inputs is not None
    try:
        call = example_call(model, input_size=input_size or None, example_inputs=example_inputs, error=SurgeryError)
        probe(model, call, error=SurgeryError, purpose=f"check it before {action}")
    except SurgeryError as err:
        if given:
            raise
        logger.info("%s: no example input runs %s (%s); the edit is not checked: pass example_inputs= to check it",
                    action, type(model).__name__, err)
        return None
    return call


def failing_layer(model: nn.Module, call: Call) -> str | None:
    """``'layer1.0.conv1 (Conv2d) got (1, 1, 56, 56), expects 64 input channels: ...'``: where a run of ``model``
    on ``call`` fails (the inspect collector's description, from the last backend tried); None if it runs."""
    error = None
    for backend in backend_order(allow_real=True):
        run = collect(model, *call, backend=backend, training=False, params=module_params(model))
        if run.error is None:
            return None
        error = run.error
    return error


def check_runs(model: nn.Module, call: Call | None, *, action: str, hint: str = "") -> None:
    """Run ``model`` once on ``call`` (shapes only); raise :class:`SurgeryError` naming the layer that fails.

    Called last inside :func:`torchsmith.runner.restored_on_failure`, so a failure leaves the model as it was.
    ``call=None``: nothing to check with (see :func:`checking_call`).
    """
    if call is None:
        return
    try:
        probe(model, call, error=SurgeryError, purpose=f"check it after {action}")
    except SurgeryError as err:
        where = failing_layer(model, call) or str(err)
        raise SurgeryError(
            f"{action} would leave {type(model).__name__} unable to run on ({describe(call)}): {where}. "
            f"The model is as it was.{' ' + hint if hint else ''}"
        ) from err
