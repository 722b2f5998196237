"""Layer choices by name, so configs (JSON/YAML) can name them.

``norm_layer`` / ``act_layer`` arguments across the zoo accept a class (or any
callable) or one of the names below.

Example::

    >>> get_norm_layer("frozen_bn")
    <class 'torchsmith.layers.norm.FrozenBatchNorm2d'>
    >>> get_act_layer("leaky_relu")
    <class 'torch.nn.modules.activation.LeakyReLU'>
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import ModelConfigError, did_you_mean
from .norm import FrozenBatchNorm2d

__all__ = ["get_norm_layer", "get_act_layer", "NORM_LAYERS", "ACT_LAYERS"]

NORM_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "batchnorm": nn.BatchNorm2d,
    "bn": nn.BatchNorm2d,
    "frozen_bn": FrozenBatchNorm2d,
    "instancenorm": nn.InstanceNorm2d,
    "identity": nn.Identity,
    "none": nn.Identity,
}

ACT_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
    "none": nn.Identity,
}


def _lookup(kind: str, table: dict[str, Callable[..., nn.Module]], value: str | Callable[..., nn.Module] | None, default):
    if value is None:
        return default
    if callable(value):
        return value
    if isinstance(value, str) and value.lower() in table:
        return table[value.lower()]
    raise ModelConfigError(
        f"Unknown {kind} {value!r}.{did_you_mean(str(value), table, n=1)} Known names: {', '.join(sorted(table))}; "
        f"or pass an nn.Module class."
    )


def get_norm_layer(value: str | Callable[..., nn.Module] | None, default: Callable[..., nn.Module] = nn.BatchNorm2d):
    """A norm-layer class from a name, a class, or None (-> ``default``)."""
    return _lookup("norm_layer", NORM_LAYERS, value, default)


def get_act_layer(value: str | Callable[..., nn.Module] | None, default: Callable[..., nn.Module] = nn.ReLU):
    """An activation class from a name, a class, or None (-> ``default``)."""
    return _lookup("act_layer", ACT_LAYERS, value, default)
