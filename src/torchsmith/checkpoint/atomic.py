"""Atomic file writes: readers see the old file or the new one, never a mix.

The data goes to a temporary file in the target's directory (``.NAME.tmp-PID-RANDOM@HOST``,
named by :func:`temporary_name`); it is flushed and fsynced, renamed over the target with
``os.replace`` and the directory is fsynced. The old file's permission bits are kept.
Because the target is replaced (a new inode), tensors memory-mapped from the old file stay
valid while the new one is written: saving a model onto the file it was mapped from works.

Temporaries left by a process killed mid-save are removed by saves only, and only those a save
can prove dead: written on this host (the name says which) by a process that no longer runs
(:func:`clean_stale_temporaries`, called for the save's target). Readers never delete: on a file
system shared by several machines a temporary of another host may be a save in progress there.
The rest is cleaned on request (:func:`clean_temporaries`, ``torchsmith clean DIR``), other
hosts' temporaries only when asked and once they are old enough.

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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import CheckpointError
from .files import checked_path, shown

__all__ = [
    "atomic_write", "atomic_write_all", "temporary_name", "temporary_owner", "clean_stale_temporaries",
    "Temporary", "find_temporaries", "clean_temporaries",
]

# temporaries: the one naming, and the cleaners (a save: its target's own-host dead ones; on request: the rest)

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


@dataclass(frozen=True)
class Temporary:
    """One temporary found in a directory, and what :func:`clean_temporaries` does with it and why."""

    path: Path
    target: str  # the file it was going to replace
    pid: int
    host: str | None  # None in names written before the host was recorded
    age: float  # seconds since it was last written
    remove: bool
    reason: str

    def to_dict(self) -> dict:
        return {"path": str(self.path), "target": self.target, "pid": self.pid, "host": self.host,
                "age_seconds": round(self.age, 1), "remove": self.remove, "reason": self.reason}


def _judge(name: str, owner: tuple[str, int, str | None], age: float, other_hosts_older_than: float | None) -> tuple[bool, str]:
    target, pid, host = owner
    if host == _host():
        if _pid_alive(pid):
            return False, f"process {pid} on this host is running (a save in progress)"
        return True, f"process {pid} on this host is gone (killed while saving {target!r})"
    where = f"host {host!r}" if host else "a host it does not name (written by an older torchsmith)"
    if other_hosts_older_than is None:
        return False, f"written on {where}: its process cannot be checked from here (clean it with --other-hosts --older-than AGE)"
    if age < other_hosts_older_than:
        return False, f"written on {where} {age:,.0f} s ago, less than {other_hosts_older_than:,.0f} s: it may be a save in progress"
    return True, f"written on {where}, untouched for {age:,.0f} s (at least {other_hosts_older_than:,.0f} s)"


def find_temporaries(directory: str | os.PathLike, *, other_hosts_older_than: float | None = None) -> list[Temporary]:
    """Every temporary in ``directory``, with whether :func:`clean_temporaries` removes it and why.

    Removed: those of a process of this host that no longer runs; with ``other_hosts_older_than`` (seconds),
    also those of other hosts (or of none named) not written to for at least that long.

        >>> import os, subprocess
        >>> gone = subprocess.Popen(["true"]); _ = gone.wait()
        >>> _ = open(temporary_name("model.safetensors"), "w")                 # this process: running
        >>> os.rename(next(p for p in os.listdir() if ".tmp-" in p), f".model.safetensors.tmp-{gone.pid}-0a1b2c3d@{_host()}")
        >>> _ = open(".w.pt.tmp-4242-0a1b2c3d@node-7", "w")                     # another host's
        >>> [(t.target, t.remove) for t in find_temporaries(".")]
        [('model.safetensors', True), ('w.pt', False)]
    """
    found = []
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as e:
        raise CheckpointError(f"Cannot list {shown(directory)}: {e.strerror or e}.") from e
    now = time.time()
    for entry in entries:
        owner = temporary_owner(entry.name)
        if owner is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:  # removed meanwhile
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        age = max(0.0, now - info.st_mtime)
        remove, reason = _judge(entry.name, owner, age, other_hosts_older_than)
        found.append(Temporary(Path(entry.path), owner[0], owner[1], owner[2], age, remove, reason))
    return found


def clean_temporaries(directory: str | os.PathLike, *, dry_run: bool = False, other_hosts_older_than: float | None = None) -> list[Temporary]:
    """Remove the temporaries :func:`find_temporaries` marks (none with ``dry_run``); returns every one found.

    Raises:
        CheckpointError: the directory cannot be listed, or a temporary cannot be removed.
    """
    found = find_temporaries(directory, other_hosts_older_than=other_hosts_older_than)
    for t in found:
        if t.remove and not dry_run:
            try:
                t.path.unlink()
            except FileNotFoundError:  # another cleaner was first
                pass
            except OSError as e:
                raise CheckpointError(f"Cannot remove {shown(t.path)}: {e.strerror or e}.") from e
    return found


def clean_stale_temporaries(directory: str | os.PathLike, *, target: str | None = None) -> list[Path]:
    """Remove the temporaries in ``directory`` (only ``target``'s, when given) that a process of this host left
    and that no longer runs; returns them. Saves call it for their target; readers never do.

    Never raises: a missing or read-only directory is left as it is.
    """
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        owner = temporary_owner(entry.name)
        if owner is None or (target is not None and owner[0] != target) or owner[2] != _host() or _pid_alive(owner[1]):
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
    target = checked_path(path, action="write")
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
    except OSError as exc:  # a loop of links at the target, no permission to look
        raise CheckpointError(f"Cannot write {shown(target)}: {exc.strerror or exc}.") from exc
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
