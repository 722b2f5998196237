"""Where a weights file comes from: an explicit file, the torch hub cache, or a download into that cache.

In this order, and every file is hash-checked before it is used:

1. a file the caller names (``weights_path=``);
2. the torch hub cache, ``torch.hub.get_dir()/checkpoints/<file name>`` (``$TORCH_HOME/hub/checkpoints``, by
   default ``~/.cache/torch/hub/checkpoints``): where torchvision puts the same files, so weights a user
   already has are used as they are;
3. a download from the entry's URL (``urllib``, the standard library), shown with a progress bar, hashed as
   it arrives and written to a temporary in the cache directory that is renamed into place only once the
   hash matched (``checkpoint.atomic``): a download that fails, is refused or is killed never leaves a file
   under the cache's name.

Offline (``TORCHSMITH_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) nothing is downloaded: the error names the URL
and the exact path to put the file at. Nothing here changes a model; :func:`fetch` returns a path.

    >>> cache_path(get_weights("resnet50")).name
    'resnet50-11ad3fa6.pth'
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .._version import __version__
from ..checkpoint.atomic import atomic_write
from ..checkpoint.files import open_regular
from ..checkpoint.hub import OFFLINE_VARIABLES, is_offline
from ..errors import CheckpointError, CorruptCheckpointError, DownloadError
from ..units import format_bytes
from .table import Weights, get_weights

__all__ = ["fetch", "fetch_weights", "cache_path", "hub_checkpoints", "file_sha256", "Progress"]

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes read from the network (and hashed) at a time
TIMEOUT_S = 60  # for each network operation (connect, each read), not the whole download

Progress = Callable[[int, "int | None"], None]  # (bytes so far, total bytes or None)


def hub_checkpoints() -> Path:
    """The torch hub's weights folder: ``torch.hub.get_dir()/checkpoints`` (follows ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cache_path(entry: Weights) -> Path:
    """Where ``entry``'s file is (or will be) in the torch hub cache: the path torchvision uses for it too."""
    return hub_checkpoints() / entry.file_name


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a regular file, as 64 hex digits (what ``register_weights(sha256=)`` takes).

    >>> p = Path("w.bin"); _ = p.write_bytes(b"abc")
    >>> file_sha256(p)[:16]
    'ba7816bf8f01cfea'
    """
    h = hashlib.sha256()
    with open_regular(path) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _refuse_hash(entry: Weights, where: str, got: str, fix: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"Refused {where} for the weights {entry.name}: its sha256 is {got}, which does not start with "
        f"{entry.sha256} (a damaged, partial or different file). {fix}"
    )


def _checked(entry: Weights, path: Path, *, cached: bool) -> Path:
    got = file_sha256(path)
    if not got.startswith(entry.sha256):
        fix = (
            f"Delete it to download the file again from {entry.url}, or put the right file there."
            if cached
            else "Pass the file those weights were published as, or register your file under its own tag."
        )
        raise _refuse_hash(entry, repr(str(path)), got, fix)
    return path


def _unavailable(entry: Weights, target: Path, why: str) -> DownloadError:
    return DownloadError(
        f"Cannot get the weights {entry.name}: {why}. They are downloaded from {entry.url} into the torch hub "
        f"cache; to use them without network, put that file at {str(target)!r} (on a machine with network: "
        f"`torchsmith fetch {entry.model} --weights {entry.tag}`, then copy {str(hub_checkpoints())!r}; or "
        f"`curl -L -o FILE {entry.url}`), or pass weights_path='FILE'. Its sha256 must start with {entry.sha256}."
    )


# progress


@contextlib.contextmanager
def _bar(title: str) -> Iterator[Progress]:
    """A rich progress bar on stderr (bytes, speed, time left) for the length of the block."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress as Bar, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Bar(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(title, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


# downloading


def _download(entry: Weights, target: Path, progress: Progress | None) -> None:
    """``entry.url`` into ``target``, atomically, hashed on the way; the hash is checked before the rename."""
    request = urllib.request.Request(entry.url, headers={"User-Agent": f"torchsmith/{__version__}"})
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"Cannot create the torch hub cache folder {str(target.parent)!r}: {e.strerror or e}. "
                              f"Set TORCH_HOME to a folder you can write.") from e
    log.info("downloading %s to %s", entry.url, target)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, atomic_write(target) as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            h, done = hashlib.sha256(), 0
            if progress is not None:
                progress(0, total)
            while chunk := response.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            if total is not None and done != total:
                raise _unavailable(entry, target, f"the download ended after {done:,} of {total:,} bytes")
            if not h.hexdigest().startswith(entry.sha256):
                fix = "Nothing was written to the cache. The server may be serving another file; check the URL."
                raise _refuse_hash(entry, f"the download from {entry.url}", h.hexdigest(), fix)
    except (urllib.error.URLError, OSError) as e:  # HTTPError is a URLError; timeouts and resets are OSErrors
        reason = f"HTTP {e.code}: {e.reason}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", None) or e
        raise _unavailable(entry, target, f"the download failed ({reason})") from e
    log.info("downloaded %s (%s)", target, format_bytes(done))


def fetch(entry: Weights, *, path: str | os.PathLike | None = None, progress: bool | Progress = True) -> Path:
    """The local file of ``entry``, hash-checked: ``path`` when given, else the torch hub cache's copy, else
    downloaded into the cache. ``progress``: True shows a bar on stderr while downloading, False nothing, a
    function is called with ``(bytes so far, total or None)``.

    Raises:
        CorruptCheckpointError: the file's hash does not match the entry's (nothing is deleted).
        DownloadError: not at hand and offline, or the download failed (naming the URL and where to put the file).
    """
    if path is not None:
        return _checked(entry, Path(path), cached=False)
    target = cache_path(entry)
    if target.is_file():
        return _checked(entry, target, cached=True)
    if is_offline():
        on = ", ".join(f"{v}={os.environ[v]}" for v in OFFLINE_VARIABLES if os.environ.get(v))
        raise _unavailable(entry, target, f"it is not in the torch hub cache and downloads are off ({on})")
    if progress is True:
        with _bar(f"{entry.name} ({entry.file_name})") as bar:
            _download(entry, target, bar)
    else:
        _download(entry, target, progress or None)
    return target


def fetch_weights(model_name: str, weights: str | None = None, *, progress: bool | Progress = True) -> Path:
    """The local file of the weights ``weights`` of ``model_name`` (None: its default): the torch hub cache's
    copy, hash-checked, or downloaded into the cache first (``torchsmith fetch MODEL``). Nothing is loaded.

    Raises:
        ModelConfigError: no such weights; DownloadError: offline, or the download failed (naming the URL and
            where to put the file); CorruptCheckpointError: the file's hash does not match.

    Example::

        >>> fetch_weights("resnet18")          # offline here, and not in this (empty) cache
        Traceback (most recent call last):
        ...
        torchsmith.errors.DownloadError: Cannot get the weights resnet18.IMAGENET1K_V1: it is not in the torch hub cache and downloads are off (TORCHSMITH_OFFLINE=1). ...
    """
    return fetch(get_weights(model_name, weights), progress=progress)
