"""Run modules one after another and keep chosen outputs: the one "run the children in order" runner.

Used by :class:`torchsmith.zoo.LayerGetter` (FPN and U-Net backbones) and by
:func:`torchsmith.extract_features` (its ``"children"`` strategy).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

from torch import Tensor, nn

__all__ = ["ChildrenRunner"]


class ChildrenRunner(nn.ModuleDict):
    """Calls its modules in order on one input; returns ``{output name: tensor}`` for ``return_layers``.

    ``return_layers`` maps module names to output names; outputs come in its
    order. State-dict keys are the module names (``layer1.0.conv1.weight``), so
    a model's own top-level children keep the model's keys. An output that the
    next module would overwrite in place (``ReLU(inplace=True)``) is cloned.

    Example::

        >>> runner = ChildrenRunner({"conv": nn.Conv2d(3, 8, 3), "act": nn.ReLU(inplace=True)}, {"conv": "c", "act": "a"})
        >>> {k: tuple(v.shape) for k, v in runner(torch.randn(1, 3, 8, 8)).items()}   # (B, 8, 6, 6) each
        {'c': (1, 8, 6, 6), 'a': (1, 8, 6, 6)}
    """

    def __init__(self, modules: Mapping[str, nn.Module] | Iterable[tuple[str, nn.Module]], return_layers: Mapping[str, str]) -> None:
        super().__init__(modules)
        missing = [name for name in return_layers if name not in self._modules]
        if missing:
            raise KeyError(f"return_layers {missing} name no module of the runner ({list(self._modules)}).")
        self.return_layers = dict(return_layers)
        names = list(self._modules)
        self._clone = {a for a, b in zip(names, names[1:]) if a in self.return_layers and getattr(self._modules[b], "inplace", False)}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        found: dict[str, Tensor] = {}
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                found[self.return_layers[name]] = x.clone() if name in self._clone else x
        return OrderedDict((out, found[out]) for out in self.return_layers.values())
