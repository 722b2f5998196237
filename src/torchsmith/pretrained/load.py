"""Pretrained weights into a model just built, and what the model remembers of them.

:func:`load_pretrained` fetches an entry's file (:mod:`~torchsmith.pretrained.fetch`) and loads it with
``load_weights`` (weights only, no pickle, reported); the classifier is left out when the model was built
with other ``num_classes`` than the weights have, and said so. The model then carries
``model.pretrained_cfg`` (timm's attribute and keys), which :func:`data_config` reads.

Inside :func:`rebuilding` (``build_from_config``, so ``load_model`` and ``save_model``'s check) nothing is
fetched: a model is rebuilt from a config that names its weights, and the weights come from the file saved
with it. ``load_pretrained`` changes the model it is given in place (for a model just built: a load that does
not fit leaves it partly loaded, and raises); ``data_config`` reads only.

    >>> model = create_model("resnet50", num_classes=10)
    >>> data_config(model)
    Traceback (most recent call last):
    ...
    torchsmith.errors.ModelConfigError: This ResNet was not built with pretrained weights, so it has no preprocessing ...
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from torch import nn

from ..checkpoint import LoadReport, load_weights
from ..errors import IncompatibleCheckpointError, ModelConfigError
from .fetch import Progress, fetch
from .table import Weights, get_weights

__all__ = ["load_pretrained", "rebuilding", "is_rebuilding", "data_config", "CFG_ATTR"]

log = logging.getLogger(__name__)

CFG_ATTR = "pretrained_cfg"  # timm's name: timm.data.resolve_data_config(model=...) reads it too
_DATA_KEYS = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
              "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center"}  # timm's defaults  # fmt: skip
_REBUILDING: contextvars.ContextVar[bool] = contextvars.ContextVar("torchsmith_rebuilding", default=False)


@contextlib.contextmanager
def rebuilding() -> Iterator[None]:
    """Builds inside record the weights they name and read none (the weights come from a saved file)."""
    token = _REBUILDING.set(True)
    try:
        yield
    finally:
        _REBUILDING.reset(token)


def is_rebuilding() -> bool:
    """Whether the current build is a rebuild from a config (inside :func:`rebuilding`)."""
    return _REBUILDING.get()


def _remember(model: nn.Module, cfg: dict[str, Any]) -> None:
    object.__setattr__(model, CFG_ATTR, cfg)  # a plain attribute: no state-dict key, no submodule


def _in(key: str, module: str | None) -> bool:
    return module is not None and (key == module or key.startswith(module + "."))


def _load(model: nn.Module, entry: Weights, file: os.PathLike, model_name: str, backbone: bool) -> LoadReport:
    """``load_weights`` with the classifier left out when the model's ``num_classes`` differ (or the model is a
    backbone), and the ``num_batches_tracked`` counters a frozen BatchNorm does not keep; anything else that does
    not fit raises."""
    classes = getattr(model, "num_classes", entry.num_classes)
    new_head = entry.classifier is not None and (backbone or (entry.num_classes is not None and classes != entry.num_classes))
    report = load_weights(model, file, strict=False, skip_mismatched=new_head)
    head = entry.classifier if new_head else None
    problems = [f"missing {k}" for k in report.missing if not _in(k, head)]
    problems += [f"unexpected {k}" for k in report.unexpected if not (_in(k, head) or k.endswith(".num_batches_tracked"))]
    problems += [f"{m.key}: {m.reason}" for m in report.mismatched if not _in(m.key, head)]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; ... ({len(problems) - 6} more)" if len(problems) > 6 else "")
        raise IncompatibleCheckpointError(
            f"The weights {entry.name} do not fit this {model_name} ({type(model).__name__}): {shown}. Build it with the "
            f"arguments the weights were made for (only num_classes may differ), or load the file yourself with "
            f"load_weights(model, {str(file)!r}, strict=False).\n{report}",
            report,
        )
    if new_head and not backbone:
        log.warning(
            "%s: the weights %s have %s classes, the model %s: loaded everything but the classifier %r (%s), which "
            "keeps its initial values; train it.",
            model_name, entry.name, entry.num_classes, classes, entry.classifier, ", ".join(
                [m.key for m in report.mismatched] + [k for k in report.unexpected if _in(k, head)]) or "absent",
        )  # fmt: skip
    log.info("%s", report)
    return report


def load_pretrained(
    model: nn.Module,
    model_name: str,
    weights: str | None = None,
    *,
    weights_path: str | os.PathLike | None = None,
    progress: bool | Progress = True,
    backbone: bool = False,
) -> LoadReport | None:
    """Load the weights ``weights`` of ``model_name`` (None or True: its default) into ``model``, just built as
    ``model_name``; returns the load report (None inside :func:`rebuilding`: nothing is read).

    ``backbone=True``: ``model`` is the encoder of a larger model (FPN, U-Net): its classifier is never needed,
    so it is left out without a warning.

    The file comes from ``weights_path`` when given, else the torch hub cache, else a download (see
    :func:`~torchsmith.pretrained.fetch.fetch`). Records ``model.pretrained_cfg``.

    Raises:
        ModelConfigError: no such weights, or the model takes other input channels than the weights (checked
            before anything is fetched).
        DownloadError, CorruptCheckpointError: the file is not at hand and cannot be downloaded, or its hash
            does not match.
        IncompatibleCheckpointError: the weights do not fit beyond the classifier.
    """
    if weights is True:
        weights = None
    if is_rebuilding():
        try:
            entry = get_weights(model_name, weights)
        except ModelConfigError:  # weights registered where the model was saved, not here: the file has them
            _remember(model, {"architecture": model_name, "tag": weights})
            return None
        _remember(model, entry.pretrained_cfg())
        return None
    entry = get_weights(model_name, weights)
    chans = getattr(model, "in_chans", None)
    if chans is not None and chans != entry.input_size[0]:
        raise ModelConfigError(
            f"The weights {entry.name} take {entry.input_size[0]} input channels, the model {chans}: build it with "
            f"in_chans={entry.input_size[0]} and then ts.adapt_input_channels(model, {chans}), which derives the new "
            f"first layer from the pretrained one."
        )
    report = _load(model, entry, fetch(entry, path=weights_path, progress=progress), model_name, backbone)
    _remember(model, entry.pretrained_cfg())
    return report


def data_config(model: nn.Module) -> dict[str, Any]:
    """The input preprocessing of the weights ``model`` was built with, with timm's ``resolve_data_config``
    keys: ``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode`` (resize the shorter
    side to ``input_size[-1] / crop_pct``, centre-crop to ``input_size[1:]``, normalise). Reads
    ``model.pretrained_cfg``, so a timm model answers too; a model saved and loaded keeps its weights' config.

    Raises:
        ModelConfigError: the model was not built with pretrained weights (or with weights not registered here).

    Example (weights of your own, registered with the file's hash; torchvision's are used the same way)::

        >>> from torchsmith.pretrained import file_sha256
        >>> torch.save(create_model("resnet18").state_dict(), "r18.pth")
        >>> _ = register_weights("resnet18", "MINE_V1", url="https://example.com/r18.pth", sha256=file_sha256("r18.pth"),
        ...                      num_classes=1000, classifier="fc", crop_pct=0.95, interpolation="bicubic")
        >>> model = create_model("resnet18", weights="MINE_V1", weights_path="r18.pth")
        >>> data_config(model)
        {'input_size': (3, 224, 224), 'interpolation': 'bicubic', 'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225), 'crop_pct': 0.95, 'crop_mode': 'center'}
    """
    cfg = getattr(model, CFG_ATTR, None)
    if not isinstance(cfg, Mapping) or "mean" not in cfg:
        if isinstance(cfg, Mapping) and cfg.get("tag"):
            raise ModelConfigError(
                f"This {type(model).__name__} was built with the weights {cfg['tag']!r} of {cfg.get('architecture')!r}, "
                f"which are not registered in this process: register them (torchsmith.register_weights) before "
                f"building or loading it, to know their preprocessing."
            )
        raise ModelConfigError(
            f"This {type(model).__name__} was not built with pretrained weights, so it has no preprocessing of its own. "
            f"Build it with create_model(name, pretrained=True) or weights=TAG, or read a table entry's: "
            f"torchsmith.get_weights(name, tag).data_config()."
        )
    out = {}
    for key, default in _DATA_KEYS.items():
        value = cfg.get(key) or default
        out[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    return out
