"""One root for every error torchsmith raises.

Each area has its own subclass so callers can catch narrowly, and everything
can be caught with :class:`TorchsmithError`. Messages say what was asked, what
was found, and what to do.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "TorchsmithError",
    "UnknownModelError",
    "DuplicateModelError",
    "ModelConfigError",
    "FeatureExtractionError",
    "SurgeryError",
    "HeadNotFoundError",
    "InspectError",
    "closest",
    "did_you_mean",
    "CheckpointError",
    "CorruptCheckpointError",
    "ChecksumError",
    "UnsafeCheckpointError",
    "IncompatibleCheckpointError",
    "UnsaveableModelError",
    "SignatureError",
    "DownloadError",
    "SpecError",
]


class TorchsmithError(Exception):
    """Root of every error raised by torchsmith."""


class UnknownModelError(TorchsmithError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateModelError(TorchsmithError, ValueError):
    """A second registration under a name that is already taken."""


class ModelConfigError(TorchsmithError, ValueError):
    """Arguments that cannot build the requested model (bad widths, sizes, names)."""


class FeatureExtractionError(TorchsmithError, ValueError):
    """Feature nodes that do not exist, or a strategy that cannot serve them."""


class SurgeryError(TorchsmithError, ValueError):
    """A model change that cannot be made as asked (no such module, no head found, bad widths)."""


class HeadNotFoundError(SurgeryError):
    """No single layer of the model can be named its classifier (none, or several, give its prediction); pass ``path=``."""


class InspectError(TorchsmithError, RuntimeError):
    """A summary, trace or diagram that cannot be made: bad inputs, or a forward that raised (the module path and shapes are named)."""


def closest(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The registered names most like ``word`` (for "did you mean" hints).

    >>> closest("resnet5O", ["resnet50", "resnet18", "unet"])
    ['resnet50', 'resnet18']
    """
    choices = list(choices)
    hits = difflib.get_close_matches(word, choices, n=n, cutoff=0.6)
    if not hits:
        hits = difflib.get_close_matches(word.lower(), [c.lower() for c in choices], n=n, cutoff=0.4)
        lower = {c.lower(): c for c in choices}
        hits = [lower[h] for h in hits]
    return hits


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """``" Did you mean 'a', 'b'?"`` for the names closest to ``word``, or ``""``: the one spelling of the hint.

    >>> did_you_mean("resnet5O", ["resnet50", "resnet18", "unet"])
    " Did you mean 'resnet50', 'resnet18'?"
    >>> did_you_mean("zzz", ["resnet50"])
    ''
    """
    hits = closest(word, choices, n=n)
    return f" Did you mean {', '.join(map(repr, hits))}?" if hits else ""


# checkpoints


class CheckpointError(TorchsmithError):
    """A checkpoint that cannot be read, written or loaded as asked."""


class CorruptCheckpointError(CheckpointError):
    """A file whose bytes are not a valid checkpoint (truncated, forged header, bad zip)."""


class ChecksumError(CorruptCheckpointError):
    """Tensor data that does not match the checksum recorded when the file was written."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that would import and run code to load; refused unless ``trusted=True``."""


class IncompatibleCheckpointError(CheckpointError):
    """Keys, shapes or dtypes that do not fit the model; ``.report`` holds the full LoadReport."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class SignatureError(CheckpointError):
    """A checkpoint whose signature is missing or does not match its files and the public key given."""


class DownloadError(CheckpointError):
    """Weights that are neither at hand nor downloadable (offline, no network, an HTTP error); the message names
    the URL and the exact path to put the file at."""


class UnsaveableModelError(CheckpointError):
    """A model whose configuration cannot be written as JSON (``save_model``)."""


# specs


class SpecError(TorchsmithError, ValueError):
    """A model spec that cannot be read, validated or built; ``.problems`` lists each as ``"path: message"``."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])
