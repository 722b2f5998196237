"""Opening checkpoint files: regular files only, inside their directory, with a size check.

Every file torchsmith reads from a checkpoint is opened here. A FIFO or a device (``/dev/zero``)
is refused before a byte is read (it is opened non-blocking, so a FIFO with no writer cannot hang
the open); a file that a directory or an index names must really live in that directory: the
opened file's real path (``/proc/self/fd/N``, so a link swapped in after the check does not count)
must be inside the directory's real path, so a symlink out of a checkpoint directory is refused.

    >>> d = save_model(create_model("mlp", in_features=4, hidden=[8], num_classes=2), "run")
    >>> with open_regular("run/config.json", inside="run", max_bytes=MAX_JSON_BYTES) as f:
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

__all__ = ["open_regular", "read_json_bytes", "read_capped", "MAX_JSON_BYTES"]

MAX_JSON_BYTES = 256 * 2**20  # config.json and shard indexes: far above a 100k-tensor index (~10 MB)


def _real_path(fd: int, path: Path) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: the path as resolved now
        return os.path.realpath(path)


def open_regular(path: str | os.PathLike, *, inside: str | os.PathLike | None = None, max_bytes: int | None = None) -> BinaryIO:
    """An unbuffered binary handle on the regular file ``path``.

    Raises:
        CheckpointError: the file cannot be opened, or it is not a regular file (FIFO, device, directory).
        CorruptCheckpointError: ``path`` resolves outside ``inside`` (a link out of the checkpoint directory),
            or the file is larger than ``max_bytes``.
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
            if os.path.commonpath([real, root]) != root:
                raise CorruptCheckpointError(
                    f"Refused {str(path)!r}: it resolves to {real!r}, outside the checkpoint directory {root!r} "
                    f"(a symbolic link out of the directory). A checkpoint directory must hold its own files; copy "
                    f"the file in, or pass the file itself."
                )
        if max_bytes is not None and info.st_size > max_bytes:
            raise CorruptCheckpointError(
                f"{str(path)!r} is {info.st_size:,} bytes, over the {max_bytes:,}-byte limit for this kind of file "
                f"(damaged or hostile?)."
            )
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def read_json_bytes(path: str | os.PathLike, *, inside: str | os.PathLike | None = None, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of a small JSON file (``config.json``, an index), at most ``max_bytes`` read."""
    with open_regular(path, inside=inside, max_bytes=max_bytes) as f:
        return read_capped(f, path, max_bytes)


def read_capped(f: BinaryIO, path: str | os.PathLike, max_bytes: int) -> bytes:
    """The rest of the open file ``f``, refused past ``max_bytes`` (a file that grew while read)."""
    chunks, total = [], 0
    while chunk := f.read(min(1 << 20, max_bytes + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise CorruptCheckpointError(f"{str(path)!r} is over the {max_bytes:,}-byte limit for this kind of file.")
    return b"".join(chunks)
