"""Atomic file writes: readers see the old file or the new one, never a mix.

The data goes to a temporary file in the target's directory (``.NAME.tmp-PID-RANDOM@HOST``,
named by :func:`temporary_name`); it is flushed and fsynced, renamed over the target with
``os.replace`` and the directory is fsynced. The old file's permission bits are kept.
Temporaries left by dead processes are removed by the one cleaner,
:func:`clean_stale_temporaries` (a save: its target's; a load: its directory's). Because the target is replaced (a new inode), tensors
memory-mapped from the old file stay valid while the new one is written: saving
a model onto the file it was mapped from works.

    >>> with atomic_write("model.safetensors") as f:
    ...     _ = f.write(b"...")
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import CheckpointError

__all__ = ["atomic_write", "atomic_write_all", "temporary_name", "temporary_owner", "clean_stale_temporaries"]

# temporaries: the one naming and the one cleaner (saves call it for their target, loads for the directory)

_TMP_TAG = ".tmp-"
_TMP_NAME = re.compile(r"\.(?P<target>.+)" + re.escape(_TMP_TAG) + r"(?P<pid>\d+)-[0-9a-f]+(?:@(?P<host>[A-Za-z0-9._-]+))?")


def _host() -> str:
    """This machine's name as it may appear in a file name (letters, digits, ``.``, ``_``, ``-``; at most 32)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:32] or "host"


def temporary_name(target: str | os.PathLike) -> Path:
    """A fresh temporary for ``target``, hidden in its directory: ``.NAME.tmp-PID-RANDOM@HOST``.

        >>> temporary_name("runs/model.safetensors").name
        '.model.safetensors.tmp-...-...@...'
    """
    target = Path(target)
    return target.with_name(f".{target.name}{_TMP_TAG}{os.getpid()}-{secrets.token_hex(4)}@{_host()}")


def temporary_owner(name: str) -> tuple[str, int, str | None] | None:
    """``(target name, pid, host)`` of a temporary's file name (host None in names written before it was
    recorded), or None when ``name`` is not a temporary's.

        >>> temporary_owner(".model.safetensors.tmp-4242-0a1b2c3d@node-7")
        ('model.safetensors', 4242, 'node-7')
        >>> temporary_owner("model.safetensors") is None
        True
    """
    m = _TMP_NAME.fullmatch(name)
    return (m["target"], int(m["pid"]), m["host"]) if m else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temporaries(directory: str | os.PathLike, *, target: str | None = None) -> list[Path]:
    """Remove the temporaries in ``directory`` (only ``target``'s, when given) whose writing process no
    longer runs; returns them. Saves call it for their target, loads for the whole directory.

    Never raises: a missing or read-only directory is left as it is.
    """
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        owner = temporary_owner(entry.name)
        if owner is None or (target is not None and owner[0] != target) or _pid_alive(owner[1]):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
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
def atomic_write(path: str | os.PathLike, *, fsync: bool = True, commit: bool = True) -> Iterator[BinaryIO]:
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
    clean_stale_temporaries(target.parent, target=target.name)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    tmp = temporary_name(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise CheckpointError(f"Writing {str(target)!r} failed ({exc}); the previous file, if any, is unchanged.") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.tmp_path, f.target = tmp, target  # for atomic_write_all, which renames itself (commit=False)
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if not commit:
            return
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise CheckpointError(f"Writing {str(target)!r} failed ({exc}); the previous file, if any, is unchanged.") from exc
        raise
    if fsync:
        _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_write_all(paths: list[str | os.PathLike]) -> Iterator[list[BinaryIO]]:
    """Like :func:`atomic_write` for several files of one directory, committed together.

    Every file is written and fsynced before the first rename; the renames then follow each other
    in the order given (a reader, or a crash, can only fall in the microseconds between two of
    them), and the directory is fsynced once. On any exception no path changes.
    """
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(atomic_write(p, commit=False)) for p in paths]
        yield files
    # every file is complete, fsynced and closed: now the renames, back to back
    for f in files:
        try:
            os.replace(f.tmp_path, f.target)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                for g in files:
                    os.unlink(g.tmp_path)
            raise CheckpointError(f"Writing {str(f.target)!r} failed ({exc}); the previous file, if any, is unchanged.") from exc
    _fsync_dir(Path(paths[0]).parent)
