"""The data path of loading: a checksum pass and a copy pass over tensor bytes, on a few threads.

``load_weights``, ``load_model`` and ``read_weights`` describe what to read as
:class:`Span` objects (an open file, a byte range, the recorded checksum) and
hand them here with their destinations. Reads (``preadv``) and xxh3 release
the GIL, so the work runs on up to :func:`threads` threads; a small load
(under :data:`INLINE_BYTES`) runs on the caller's thread.

- :func:`verify`: reads the spans with ``preadv`` into one small buffer per
  thread (:data:`WINDOW`, it stays in the core's cache) and hashes them there;
  the resident set grows by one buffer per thread. Loading into a live model
  runs it before the first byte is written: that is what keeps the load
  transactional. Nothing is memory-mapped: a file that another process cuts
  short while it is read ends the read (an error naming it), never the
  process (a mapping past the end of a file raises SIGBUS).
- :func:`read`: reads each span with ``preadv`` straight into its
  destination's memory (no intermediate buffer). With ``verify=True`` each
  :data:`HOT_CHUNK` is hashed right after it lands, while it is still in the
  CPU cache, so fresh tensors (``load_model``) cost one pass over the data.

Cold files (not in the page cache, what large models meet): each read is first tried with
``RWF_NOWAIT``, free when the data is cached; the first that would wait for the disk turns on
readahead hints (``POSIX_FADV_WILLNEED``, :data:`AHEAD` bytes in front of the reader), so the disk
streams while the bytes already read are hashed or copied. ``verify(spans, memory=...)`` hashes the
bytes of a file mapping instead (``load_model(mmap=True)``, opt-in: only there can a file truncated
under the reader raise SIGBUS).

Either stops at the first I/O error (a file cut short while reading) and
raises it once every thread has stopped; a checksum mismatch is reported for
the first damaged tensor in file order. Ctrl-C in the caller's thread stops
the workers after their current chunk, then propagates.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, TypeVar

import numpy as np
import torch

from ..errors import CorruptCheckpointError
from .checksums import checksum_error, tensor_hasher

__all__ = ["Span", "verify", "read", "threads"]

WINDOW = 2 * 1024 * 1024  # the checksum pass's buffer per thread (the RSS it adds): read, then hashed in cache
WINDOWS_PER_LOAD = 64  # smaller loads use smaller buffers: the RSS added stays about 1/64 of the data
MIN_WINDOW = 64 * 1024
CHUNK = 16 * 1024 * 1024  # bytes per task when not hashing: even work for the threads
READ = 4 * 1024 * 1024  # bytes per preadv when not hashing
HOT_CHUNK = 512 * 1024  # bytes per preadv when hashing on the fly: stays in a core's L2 until hashed
INLINE_BYTES = 32 * 1024 * 1024  # below this, threads cost more than they give
MAX_GROUP = 1024  # small tensors next to each other in a file are read in one preadv (IOV_MAX buffers at most)
MAX_THREADS = 8
AHEAD = 64 * 1024 * 1024  # bytes asked of the disk ahead of a reader, once its data proved not to be cached
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)  # preadv2 flag: fail with EAGAIN rather than wait for the disk


class Span(NamedTuple):
    """Tensor ``name`` of ``path``: bytes ``[begin, end)`` of the open file ``fd``, and its recorded digest."""

    fd: int
    path: str
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int
    digest: str | None

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def threads(tasks: int, nbytes: int) -> int:
    """How many threads move ``nbytes`` in ``tasks`` pieces: one per CPU available (at most 8), one for small loads."""
    if nbytes < INLINE_BYTES or tasks < 2:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_THREADS, tasks))


# running tasks


class _Mismatch(Exception):
    """A checksum mismatch found by a worker (carries the ChecksumError raised to the caller)."""

    def __init__(self, span: Span, got: str):
        super().__init__(span.name)
        self.error = checksum_error(span.path, span.name, span.digest or "", got)


Out = TypeVar("Out")
Task = Callable[[threading.Event], None]  # polls the event between chunks and returns when it is set


def _run(tasks: Sequence[tuple[int, Task]]) -> None:
    """Run ``(nbytes, task)`` pairs, the largest first, and raise the first error in the list's order.

    A checksum mismatch does not stop the other tasks (so the first damaged tensor in file order
    is the one named); any other error stops them after their current chunk.
    """
    stop = threading.Event()
    errors: list[BaseException | None] = [None] * len(tasks)
    queue = iter(sorted(range(len(tasks)), key=lambda i: -tasks[i][0]))
    lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():
            with lock:
                i = next(queue, None)
            if i is None:
                return
            try:
                tasks[i][1](stop)
            except _Mismatch as e:
                errors[i] = e
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread below
                errors[i] = e
                stop.set()

    n = threads(len(tasks), sum(nbytes for nbytes, _ in tasks))
    if n == 1:
        worker()
    else:
        workers = [threading.Thread(target=worker, name=f"torchsmith-load-{k}", daemon=True) for k in range(n)]
        for w in workers:
            w.start()
        try:
            for w in workers:
                w.join()
        except BaseException:  # Ctrl-C in the caller's thread: no worker may write after we return
            stop.set()
            for w in workers:
                w.join()
            raise
    failures = [e for e in errors if e is not None]
    first = next((e for e in failures if not isinstance(e, _Mismatch)), None) or next(iter(failures), None)
    for e in failures:
        if isinstance(e, _Mismatch):  # the caller gets e.error; the workers' frames (buffers, mapped views) go
            e.__traceback__ = None
    if first is not None:
        raise first.error if isinstance(first, _Mismatch) else first


def _truncated(span: Span) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{span.path!r} ended inside tensor {span.name!r}: the file was cut short while it was being read "
        f"(replaced in place?). Restore it from a good copy, and save with save_weights (atomic) next time."
    )


class _Reader:
    """``preadv`` for one sequential reader of ``[begin, end)`` of a file, with readahead hints only when cold.

    While the data is in the page cache (a warm load) it is read as is, with no extra system call: each
    read is tried with ``RWF_NOWAIT``, which fails rather than wait for the disk. The first read that would
    wait marks the data cold: from then on the kernel is asked (``POSIX_FADV_WILLNEED``) for the next
    :data:`AHEAD` bytes before the reader gets there, so the disk streams while the data read so far is
    hashed or copied.
    """

    __slots__ = ("fd", "end", "hinted")

    def __init__(self, fd: int, end: int):
        self.fd, self.end, self.hinted = fd, end, -1  # hinted: how far the kernel was asked to read; -1 while warm

    def __call__(self, views: list[memoryview], pos: int) -> int:
        if self.hinted < 0:
            if _NOWAIT:
                try:
                    return os.preadv(self.fd, views, pos, _NOWAIT)
                except BlockingIOError:  # not in the page cache: cold from here on
                    self.hinted = pos
                except OSError:  # no RWF_NOWAIT for this file system: plain reads, the kernel's readahead
                    self.hinted = self.end
            else:
                self.hinted = self.end
        if self.hinted < min(pos + AHEAD // 2, self.end):
            start = max(self.hinted, pos)
            n = min(AHEAD, self.end - start)
            os.posix_fadvise(self.fd, start, n, os.POSIX_FADV_WILLNEED)
            self.hinted = start + n
        return os.preadv(self.fd, views, pos)


# the checksum pass


def _hash_task(span: Span, window: int, memory: memoryview | None = None) -> Task:
    def task(stop: threading.Event) -> None:
        h = tensor_hasher(span.dtype, span.shape)
        if memory is not None:  # the file's mapping: hashed where it lies, window by window
            for pos in range(span.begin, span.end, window):
                if stop.is_set():
                    return
                h.update(memory[pos : min(pos + window, span.end)])
        else:
            buffer = memoryview(bytearray(min(window, span.nbytes)))
            pos, pread = span.begin, _Reader(span.fd, span.end)
            while pos < span.end:
                if stop.is_set():
                    return
                part = buffer[: min(window, span.end - pos)]
                got = pread([part], pos)
                if not got:  # cut short since its header was read
                    raise _truncated(span)
                h.update(part[:got])
                pos += got
        if h.hexdigest() != span.digest:
            raise _Mismatch(span, h.hexdigest())

    return task


def _small(span: Span, window: int) -> bool:
    return span.nbytes <= window // 4


def _groups(items: Sequence[tuple[Span, Out]], window: int) -> list[list[tuple[Span, Out]]]:
    """``(span, destination)`` pairs in file order, runs of small adjacent spans together (one read, one task)."""
    groups: list[list[tuple[Span, Out]]] = []
    size, fd, end, group = 0, None, None, None  # the open run of small spans: its bytes, file, end, items
    for item in items:
        span = item[0]
        n = span.end - span.begin
        if not _small(span, window):
            groups.append([item])
            group = None
        elif group is not None and span.fd == fd and span.begin == end and size + n <= window and len(group) < MAX_GROUP:
            group.append(item)
            size, end = size + n, span.end
        else:
            group = [item]
            groups.append(group)
            size, fd, end = n, span.fd, span.end
    return groups


def _check_all(pairs: Sequence[tuple[Span, memoryview]]) -> None:
    """Hash each ``(span, its bytes)`` that has a digest; raise at the first mismatch (in the given order)."""
    for span, data in pairs:
        if span.digest is not None:
            h = tensor_hasher(span.dtype, span.shape)
            h.update(data)
            if h.hexdigest() != span.digest:
                raise _Mismatch(span, h.hexdigest())


def _read_fully(span: Span, views: list[memoryview]) -> None:
    """``preadv`` from ``span.begin`` until ``views`` are full; a short file is an error."""
    total = sum(v.nbytes for v in views)
    pread = _Reader(span.fd, span.begin + total)
    done = pread(views, span.begin) if views else 0
    while done < total:  # a short read: finish buffer by buffer
        pos = 0
        for v in views:
            if done < pos + v.nbytes:
                got = pread([v[max(0, done - pos) :]], span.begin + done)
                if not got:
                    raise _truncated(span)
                done += got
                break
            pos += v.nbytes


def _hash_group_task(group: list[Span], memory: memoryview | None = None) -> Task:
    """Adjacent small spans: one ``preadv`` into one buffer (or the file's mapping), then each hashed while in cache."""

    def task(stop: threading.Event) -> None:
        begin = group[0].begin
        if memory is not None:
            buffer = memory[begin : group[-1].end]
        else:
            buffer = memoryview(bytearray(group[-1].end - begin))
            _read_fully(group[0], [buffer])
        _check_all([(span, buffer[span.begin - begin : span.end - begin]) for span in group])

    return task


def verify(spans: Sequence[Span], *, memory: Mapping[int, memoryview] | None = None) -> int:
    """Check every span's recorded digest; returns how many were checked.

    ``memory``: file descriptor -> the bytes of that whole file (a mapping of it); spans of those
    files are hashed where they lie instead of being read.

    Raises:
        ChecksumError: naming the file and the first tensor (in file order) whose data differs.
    """
    ordered = sorted(spans, key=lambda s: (s.path, s.begin))
    window = min(WINDOW, max(MIN_WINDOW, sum(s.nbytes for s in ordered) // WINDOWS_PER_LOAD))
    memory = memory or {}
    tasks = []
    for pairs in _groups([(s, None) for s in ordered], window):
        group = [span for span, _ in pairs]
        mem = memory.get(group[0].fd)
        if _small(group[0], window):  # a run of small spans (groups of more than one are all small)
            tasks.append((group[-1].end - group[0].begin, _hash_group_task(group, mem)))
        else:
            tasks.append((group[0].nbytes, _hash_task(group[0], window, mem)))
    _run(tasks)
    return len(ordered)


# the copy pass


def _bytes_of(dst: torch.Tensor | np.ndarray) -> memoryview:
    """A writable flat byte view of a contiguous CPU tensor (any dtype) or numpy array, without copying."""
    if isinstance(dst, np.ndarray):
        if not dst.flags.c_contiguous or not dst.flags.writeable:
            raise ValueError("the destination must be a writable C-contiguous array")
        ptr, nbytes = dst.ctypes.data, dst.nbytes
    else:
        if dst.device.type != "cpu" or not dst.is_contiguous():
            raise ValueError(f"the destination must be a contiguous CPU tensor, not one on {dst.device}")
        ptr, nbytes = dst.data_ptr(), dst.numel() * dst.element_size()
    return memoryview((ctypes.c_char * nbytes).from_address(ptr)).cast("B") if nbytes else memoryview(b"").cast("B")


def _fill(span: Span, out: memoryview, lo: int, hi: int, step: int, hasher, stop: threading.Event) -> bool:
    """Read file bytes ``[span.begin + lo, span.begin + hi)`` into ``out[lo:hi]``; False when stopped."""
    pos, pread = lo, _Reader(span.fd, span.begin + hi)
    while pos < hi:
        if stop.is_set():
            return False
        piece = out[pos : min(pos + step, hi)]
        got = pread([piece], span.begin + pos)
        if not got:
            raise _truncated(span)
        if hasher is not None:
            hasher.update(piece[:got])
        pos += got
    return True


def _read_task(span: Span, out: memoryview, lo: int, hi: int) -> Task:
    def task(stop: threading.Event) -> None:
        _fill(span, out, lo, hi, READ, None, stop)

    return task


def _read_hash_task(span: Span, out: memoryview) -> Task:
    def task(stop: threading.Event) -> None:
        h = tensor_hasher(span.dtype, span.shape)
        if _fill(span, out, 0, span.nbytes, HOT_CHUNK, h, stop) and h.hexdigest() != span.digest:
            raise _Mismatch(span, h.hexdigest())

    return task


def _read_group_task(group: list[tuple[Span, memoryview]], verify: bool) -> Task:
    """Adjacent small spans: one ``preadv`` into all their destinations, then each hashed while in cache."""

    def task(stop: threading.Event) -> None:
        _read_fully(group[0][0], [out for _, out in group if out.nbytes])
        if verify:
            _check_all(group)

    return task


def read(items: Sequence[tuple[Span, torch.Tensor | np.ndarray]], *, verify: bool) -> None:
    """Read each span into its destination (a contiguous CPU tensor or numpy array of exactly its size).

    With ``verify``, spans that carry a digest are hashed on the fly and checked; a mismatch raises
    :class:`~torchsmith.errors.ChecksumError` (the destinations then hold unchecked bytes: only
    use this on tensors the caller discards on error).
    """
    outs = []
    for span, dst in items:  # the views point into the destinations' memory: items keeps them alive meanwhile
        out = _bytes_of(dst)
        if out.nbytes != span.nbytes:
            raise ValueError(f"destination of {span.name!r} holds {out.nbytes} bytes, the file {span.nbytes}")
        outs.append((span, out))
    outs.sort(key=lambda so: (so[0].path, so[0].begin))
    tasks: list[tuple[int, Task]] = []
    for group in _groups(outs, WINDOW):
        span, out = group[0]
        if _small(span, WINDOW):  # a run of small spans (groups of more than one are all small)
            tasks.append((group[-1][0].end - span.begin, _read_group_task(group, verify)))
        elif verify and span.digest is not None:  # one task: the hash runs through the tensor in order
            tasks.append((span.nbytes, _read_hash_task(span, out)))
        else:  # pieces of CHUNK bytes: even work for the threads whatever the tensor sizes
            for lo in range(0, span.nbytes, CHUNK):
                hi = min(lo + CHUNK, span.nbytes)
                tasks.append((hi - lo, _read_task(span, out, lo, hi)))
    _run(tasks)
