"""The table of pretrained weights: ``(model name, tag) -> Weights``, filled by :func:`register_weights`.

The table only records: where a file comes from (URL, file name, hash), what the weights are for
(classes, categories, the classifier's module) and how inputs must be prepared (timm's data-config keys).
The zoo registers torchvision's ResNet weights here when it is imported; anyone registers their own the
same way. Reading the files is :mod:`torchsmith.pretrained.fetch`'s job.

    >>> w = get_weights("resnet50")                       # the default: torchvision's IMAGENET1K_V2
    >>> w.tag, w.file_name, w.num_classes, w.categories[:2]
    ('IMAGENET1K_V2', 'resnet50-11ad3fa6.pth', 1000, ('tench', 'goldfish'))
    >>> list_pretrained("resnet5*")
    ['resnet50.IMAGENET1K_V1', 'resnet50.IMAGENET1K_V2']
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..errors import DuplicateModelError, ModelConfigError, did_you_mean
from .imagenet import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["Weights", "register_weights", "get_weights", "list_pretrained", "DEFAULT_TAG"]

DEFAULT_TAG = "DEFAULT"  # torchvision's alias for a model's default weights; accepted wherever a tag is
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")  # torch.hub's convention: resnet50-11ad3fa6.pth
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
_SHA256 = re.compile(r"[a-f0-9]{64}")
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
_CROP_MODES = ("center", "squash", "border")

_TABLE: dict[tuple[str, str], "Weights"] = {}
_DEFAULTS: dict[str, str] = {}  # model name -> its default tag


@dataclass(frozen=True)
class Weights:
    """One set of pretrained weights for one registered model.

    Attributes:
        model, tag: the registered model name and the weights' name (``"resnet50"``, ``"IMAGENET1K_V2"``).
        url: where the file is downloaded from; ``file_name`` is its name in the torch hub cache.
        sha256: the file's sha256 (hex): all 64 digits, or the prefix torch.hub's file names carry
            (``resnet50-11ad3fa6.pth``: ``11ad3fa6``). A file is used only when its hash starts with it.
        num_classes, categories: the classifier's outputs and their names (``categories[i]`` names logit ``i``).
        classifier: the module holding the classifier (``"fc"``): left out of a load into a model built with
            other ``num_classes``.
        input_size, interpolation, mean, std, crop_pct, crop_mode: the evaluation preprocessing, in timm's
            data-config keys (resize the shorter side to ``input_size[-1] / crop_pct``, centre-crop
            ``input_size[1:]``, normalise with ``mean`` and ``std``).
        meta: anything else (accuracy, parameter count, recipe, license, source).
    """

    model: str
    tag: str
    url: str
    file_name: str
    sha256: str
    num_classes: int | None = None
    categories: tuple[str, ...] | None = None
    classifier: str | None = None
    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    crop_mode: str = "center"
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # the REPL: one line (the dataclass's own repr printed all 1,000 category names)
        classes = f"{self.num_classes} classes" if self.num_classes is not None else "no classifier"
        facts = "".join(f", {fmt.format(self.meta[k])}" for k, fmt in (("acc@1", "top-1 {}%"), ("file_size_mb", "{} MB")) if k in self.meta)
        return f"<Weights {self.name}: {classes}{facts}; {self.file_name}, sha256 {self.sha256[:8]}...>"

    @property
    def name(self) -> str:
        """``"model.tag"``, as :func:`list_pretrained` lists it."""
        return f"{self.model}.{self.tag}"

    @property
    def is_default(self) -> bool:
        """Whether ``pretrained=True`` picks these weights for their model."""
        return _DEFAULTS.get(self.model) == self.tag

    def data_config(self) -> dict[str, Any]:
        """The preprocessing, with timm's ``resolve_data_config`` keys (``timm.data.create_transform(**cfg)``).

        >>> get_weights("resnet50", "IMAGENET1K_V1").data_config()
        {'input_size': (3, 224, 224), 'interpolation': 'bilinear', 'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225), 'crop_pct': 0.875, 'crop_mode': 'center'}
        """
        return {
            "input_size": self.input_size, "interpolation": self.interpolation, "mean": self.mean, "std": self.std,
            "crop_pct": self.crop_pct, "crop_mode": self.crop_mode,
        }  # fmt: skip

    def pretrained_cfg(self) -> dict[str, Any]:
        """What a model built with these weights carries as ``model.pretrained_cfg`` (timm's attribute and keys,
        so ``timm.data.resolve_data_config(model=model)`` reads it too)."""
        return {
            "architecture": self.model, "tag": self.tag, "url": self.url, "file": self.file_name,
            "num_classes": self.num_classes, "classifier": self.classifier, **self.data_config(),
        }  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``torchsmith pretrained --json``); categories as their count."""
        return {
            "name": self.name, "model": self.model, "tag": self.tag, "default": self.is_default, "url": self.url,
            "file_name": self.file_name, "sha256": self.sha256, "num_classes": self.num_classes,
            "categories": len(self.categories) if self.categories else 0, "classifier": self.classifier,
            **self.data_config(), "meta": dict(self.meta),
        }  # fmt: skip


# registering


def _check(model_name: str, tag: str, url: str, sha256: str | None, file_name: str | None, **fields: Any) -> list[str]:
    """Every problem with an entry, so one error names them all."""
    problems = []
    if not isinstance(model_name, str) or not model_name:
        problems.append(f"model_name must be a registered model's name, got {model_name!r}")
    if not isinstance(tag, str) or not _TAG.fullmatch(tag) or tag == DEFAULT_TAG:
        problems.append(f"tag must be letters, digits and _.+- (not {DEFAULT_TAG!r}), got {tag!r}")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("https", "http", "file"):
        problems.append(f"url must be an https://, http:// or file:// URL, got {url!r}")
    if file_name is not None and (not isinstance(file_name, str) or not file_name or "/" in file_name or "\\" in file_name or file_name.startswith(".")):
        problems.append(f"file_name must be a plain file name (no directories, not hidden), got {file_name!r}")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.fullmatch(sha256)):
        problems.append(f"sha256 must be the file's 64 hexadecimal digits (lowercase), got {sha256!r}")
    size = fields["input_size"]
    if not (isinstance(size, (tuple, list)) and len(size) == 3 and all(isinstance(n, int) and n > 0 for n in size)):
        problems.append(f"input_size must be (channels, height, width), got {size!r}")
    if fields["interpolation"] not in _INTERPOLATIONS:
        problems.append(f"interpolation must be one of {list(_INTERPOLATIONS)}, got {fields['interpolation']!r}")
    if fields["crop_mode"] not in _CROP_MODES:
        problems.append(f"crop_mode must be one of {list(_CROP_MODES)}, got {fields['crop_mode']!r}")
    if not (isinstance(fields["crop_pct"], (int, float)) and 0 < fields["crop_pct"] <= 1):
        problems.append(f"crop_pct must be in (0, 1], got {fields['crop_pct']!r}")
    channels = size[0] if not any("input_size" in p for p in problems) else None
    for key in ("mean", "std"):
        value = fields[key]
        if not (isinstance(value, (tuple, list)) and all(isinstance(v, (int, float)) for v in value)) or (channels and len(value) != channels):
            problems.append(f"{key} must hold one number per input channel, got {value!r}")
    categories, num_classes = fields["categories"], fields["num_classes"]
    if categories is not None and not (isinstance(categories, (tuple, list)) and all(isinstance(c, str) for c in categories)):
        problems.append("categories must be a sequence of class names")
    elif categories is not None and num_classes is not None and len(categories) != num_classes:
        problems.append(f"{len(categories)} categories for num_classes={num_classes}")
    return problems


def register_weights(
    model_name: str,
    tag: str,
    *,
    url: str,
    sha256: str | None = None,
    file_name: str | None = None,
    default: bool = False,
    num_classes: int | None = None,
    categories: Sequence[str] | None = None,
    classifier: str | None = None,
    input_size: Sequence[int] = (3, 224, 224),
    interpolation: str = "bilinear",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_pct: float = 0.875,
    crop_mode: str = "center",
    **meta: Any,
) -> Weights:
    """Add weights for ``model_name`` under ``tag``; ``create_model(model_name, weights=tag)`` then loads them.

    ``sha256``: the file's full sha256 (64 hex digits); without it, the file name (``file_name``, else the
    URL's last part) must carry torch.hub's hash prefix (``resnet50-11ad3fa6.pth``). ``default=True``: the
    weights ``pretrained=True`` picks (the first registered for a model is its default until one says so).
    ``num_classes`` defaults to the number of ``categories``. Anything else (``acc@1``, ``license``) goes into
    ``meta``. The file is fetched only when a model asks for it: the torch hub cache first, then ``url``.

    Raises:
        DuplicateModelError: ``(model_name, tag)`` is registered already.
        ModelConfigError: naming every problem with the entry (no hash, a bad URL, mean/std of the wrong length).

    Example::

        >>> w = register_weights("mlp", "DIGITS_V1", url="https://example.com/mlp-digits.pth",
        ...                      sha256="0" * 64, num_classes=10, classifier="classifier", input_size=(1, 28, 28),
        ...                      mean=(0.1307,), std=(0.3081,), crop_pct=1.0)
        >>> w.name, w.file_name, w.is_default
        ('mlp.DIGITS_V1', 'mlp-digits.pth', True)
    """
    fields = dict(num_classes=num_classes, categories=categories, input_size=input_size, interpolation=interpolation,
                  mean=mean, std=std, crop_pct=crop_pct, crop_mode=crop_mode)  # fmt: skip
    problems = _check(model_name, tag, url, sha256, file_name, **fields)
    if not problems:
        file_name = file_name or urlsplit(url).path.rsplit("/", 1)[-1]
        in_name = _HASH_IN_NAME.search(file_name)
        if sha256 is None and in_name is None:
            problems.append(
                f"no hash: pass sha256= (the file's 64 hex digits: `sha256sum FILE`), or a file_name carrying "
                f"torch.hub's hash prefix (NAME-<first 8+ hex digits of its sha256>.EXT); got file_name={file_name!r}"
            )
    if problems:
        raise ModelConfigError(f"register_weights({model_name!r}, {tag!r}): {'; '.join(problems)}.")
    key = (model_name, tag)
    if key in _TABLE:
        raise DuplicateModelError(
            f"register_weights: {model_name!r} already has weights {tag!r} (from {_TABLE[key].url}); pick another tag."
        )
    entry = Weights(
        model=model_name, tag=tag, url=url, file_name=file_name, sha256=sha256 or in_name.group(1),
        num_classes=num_classes if num_classes is not None else (len(categories) if categories else None),
        categories=tuple(categories) if categories is not None else None, classifier=classifier,
        input_size=tuple(input_size), interpolation=interpolation, mean=tuple(mean), std=tuple(std),
        crop_pct=crop_pct, crop_mode=crop_mode, meta=dict(meta),
    )  # fmt: skip
    _TABLE[key] = entry
    if default or model_name not in _DEFAULTS:
        _DEFAULTS[model_name] = tag
    return entry


# lookup


def get_weights(model_name: str, tag: str | None = None) -> Weights:
    """The weights ``tag`` of ``model_name`` (None or ``"DEFAULT"``: its default, what ``pretrained=True`` picks).

    Raises:
        ModelConfigError: the model has no weights, or none under ``tag`` (naming the tags it has).
    """
    tags = [t for (m, t) in _TABLE if m == model_name]
    if not tags:
        with_weights = sorted({m for m, _ in _TABLE})
        raise ModelConfigError(
            f"No pretrained weights are registered for {model_name!r}.{did_you_mean(model_name, with_weights)} "
            f"Models with weights: {', '.join(with_weights) or 'none'} (torchsmith.list_pretrained()); add your own "
            f"with torchsmith.register_weights({model_name!r}, TAG, url=..., sha256=...)."
        )
    if tag is None or tag == DEFAULT_TAG:
        return _TABLE[(model_name, _DEFAULTS[model_name])]
    if (model_name, tag) not in _TABLE:
        raise ModelConfigError(
            f"{model_name!r} has no weights {tag!r}.{did_you_mean(tag, tags)} It has {', '.join(tags)} "
            f"(default {_DEFAULTS[model_name]}); pass one of them, or pretrained=True for the default."
        )
    return _TABLE[(model_name, tag)]


def list_pretrained(pattern: str = "*") -> list[str]:
    """Sorted ``"model.tag"`` names of the registered weights whose name matches an ``fnmatch`` pattern
    (timm's ``list_pretrained``); ``"resnet*"`` matches every ResNet's weights."""
    names = (e.name for e in _TABLE.values())
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n.split(".", 1)[0], pattern))


def all_weights() -> list[Weights]:
    """Every registered entry, in registration order (the CLI's table)."""
    return list(_TABLE.values())


def table_state() -> tuple[dict, dict]:
    """A copy of the table, for :func:`restore_table` (tests and doctests register entries and take them back)."""
    return dict(_TABLE), dict(_DEFAULTS)


def restore_table(state: tuple[dict, dict]) -> None:
    """Put back a table saved by :func:`table_state`."""
    _TABLE.clear()
    _TABLE.update(state[0])
    _DEFAULTS.clear()
    _DEFAULTS.update(state[1])
