"""Opening checkpoint files: regular files only, inside their directory, with a size check.

Every file torchsmith reads from a checkpoint is opened here. A FIFO or a device (``/dev/zero``)
is refused before a byte is read (it is opened non-blocking, so a FIFO with no writer cannot hang
the open); a file that a directory or an index names must really live in that directory: the
opened file's real path (``/proc/self/fd/N``, so a link swapped in after the check does not count)
must be inside the directory's real path, so a symlink out of a checkpoint directory is refused.

One kind of link is accepted: in a snapshot of the Hugging Face cache (``models--ORG--NAME/snapshots/REV/``)
every file is a link into the same repository's ``blobs/`` folder, so a file opened there may resolve into
``models--ORG--NAME/blobs/`` of that very repository; a link anywhere else (another repository's blobs, a
file outside the cache) is refused like any other.

    >>> d = save_model(create_model("mlp", in_features=4, hidden=[8], num_classes=2), "run")
    >>> with open_regular("run/config.json", inside="run", limit="max_config_bytes") as f:
    ...     f.read(1)
    b'{'
    >>> import os; os.symlink(os.path.abspath("run/model.safetensors"), "elsewhere.safetensors")
    >>> os.mkdir("linked"); os.symlink(os.path.abspath("elsewhere.safetensors"), "linked/model.safetensors")
    >>> open_regular("linked/model.safetensors", inside="linked")
    Traceback (most recent call last):
    ...
    torchsmith.errors.CorruptCheckpointError: Refused 'linked/model.safetensors': it resolves to ... outside the checkpoint directory ...
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import BinaryIO

from ..errors import CheckpointError, CorruptCheckpointError
from .limits import current, enforce, how_to_raise

__all__ = ["open_regular", "read_json_bytes", "read_capped", "hf_cache_blobs"]

HF_SNAPSHOTS, HF_BLOBS, HF_MODEL_PREFIX = "snapshots", "blobs", "models--"  # the Hugging Face cache's layout


def _real_path(fd: int, path: Path) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: the path as resolved now
        return os.path.realpath(path)


def hf_cache_blobs(root: str) -> str | None:
    """The ``blobs`` folder of the Hugging Face cache repository whose snapshot holds the real path ``root``
    (``.../models--ORG--NAME/snapshots/REV[/...]`` -> ``.../models--ORG--NAME/blobs``), else None.

    >>> hf_cache_blobs("/cache/hub/models--timm--resnet18.a1_in1k/snapshots/0123abcd")
    '/cache/hub/models--timm--resnet18.a1_in1k/blobs'
    >>> hf_cache_blobs("/cache/hub/models--timm--resnet18.a1_in1k/blobs") is None
    True
    """
    parts = Path(root).parts
    for i in range(len(parts) - 2, 0, -1):  # the innermost snapshots/REV below a models--ORG--NAME folder
        if parts[i] == HF_SNAPSHOTS and parts[i - 1].startswith(HF_MODEL_PREFIX):
            return str(Path(*parts[:i], HF_BLOBS))
    return None


def _inside(real: str, root: str) -> bool:
    return os.path.commonpath([real, root]) == root


def open_regular(path: str | os.PathLike, *, inside: str | os.PathLike | None = None, limit: str | None = None) -> BinaryIO:
    """An unbuffered binary handle on the regular file ``path``.

    ``limit``: the name of the :class:`~torchsmith.checkpoint.limits.Limits` field that bounds the file's size.

    Raises:
        CheckpointError: the file cannot be opened, or it is not a regular file (FIFO, device, directory).
        CorruptCheckpointError: ``path`` resolves outside ``inside`` (a link out of the checkpoint directory;
            in a Hugging Face cache snapshot, out of its repository's ``blobs/``), or the file is larger than its ``limit``.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise CheckpointError(f"Cannot read {str(path)!r}: {e.strerror or e}.") from e
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a directory" if stat.S_ISDIR(info.st_mode) else "not a file"
            raise CheckpointError(
                f"Cannot read {str(path)!r}: it is {kind}, not a regular file. A checkpoint is read from regular "
                f"files only (nothing waits on a pipe or reads a device); copy the data into a file."
            )
        if inside is not None:
            real, root = _real_path(fd, path), os.path.realpath(inside)
            blobs = hf_cache_blobs(root)
            if not _inside(real, root) and not (blobs is not None and _inside(real, blobs)):
                also = f" and its Hugging Face cache repository's {blobs!r}" if blobs is not None else ""
                raise CorruptCheckpointError(
                    f"Refused {str(path)!r}: it resolves to {real!r}, outside the checkpoint directory {root!r}{also} "
                    f"(a symbolic link out of the directory). A checkpoint directory must hold its own files; copy "
                    f"the file in, or pass the file itself."
                )
        if limit is not None:
            enforce(limit, info.st_size, f"{str(path)!r} is {info.st_size:,} bytes (damaged or hostile?)")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def read_json_bytes(path: str | os.PathLike, *, inside: str | os.PathLike | None = None, limit: str = "max_json_bytes") -> bytes:
    """The bytes of a small JSON file (an index, ``config.json``), no more than its ``limit`` allows."""
    with open_regular(path, inside=inside, limit=limit) as f:
        return read_capped(f, path, limit)


def read_capped(f: BinaryIO, path: str | os.PathLike, limit: str) -> bytes:
    """The rest of the open file ``f``, refused past the ``limit`` (a file that grew while read)."""
    max_bytes = getattr(current(), limit)
    chunks, total = [], 0
    while chunk := f.read(min(1 << 20, max_bytes + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:  # its size was checked when opened: how much more it holds now is unknown
            raise CorruptCheckpointError(f"{str(path)!r} grew past the limit for this kind of file. {how_to_raise(limit)}")
    return b"".join(chunks)
