"""Atomic file writes: readers see the old file or the new one, never a mix.

The data goes to a temporary file in the target's directory; it is flushed and
fsynced, renamed over the target with ``os.replace`` and the directory is
fsynced. The old file's permission bits are kept. Temporaries left by dead
processes are removed. Because the target is replaced (a new inode), tensors
memory-mapped from the old file stay valid while the new one is written: saving
a model onto the file it was mapped from works.

    >>> with atomic_write("model.safetensors") as f:
    ...     _ = f.write(b"...")
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import CheckpointError

__all__ = ["atomic_write", "clean_stale_temporaries"]

_TMP_TAG = ".tmp-"


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}{_TMP_TAG}{os.getpid()}-{secrets.token_hex(4)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove temporaries of ``target`` left by processes that no longer run; returns them."""
    target = Path(target)
    removed = []
    prefix = f".{target.name}{_TMP_TAG}"
    try:
        entries = list(target.parent.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid_text = entry.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary file next to ``path`` for writing; on success it replaces ``path``.

    On any exception the temporary is removed and ``path`` is left as it was.

    Raises:
        CheckpointError: the directory does not exist or the write failed (the cause is chained).
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise CheckpointError(
            f"Cannot write {str(target)!r}: directory {str(target.parent)!r} does not exist; create it first."
        )
    clean_stale_temporaries(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    tmp = _temp_name(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise CheckpointError(f"Writing {str(target)!r} failed ({exc}); the previous file, if any, is unchanged.") from exc
        raise
    if fsync:
        _fsync_dir(target.parent)
