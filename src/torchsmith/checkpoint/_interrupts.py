"""Holding Ctrl-C back while a model is being written, so it ends all old or all new.

    >>> import os, signal
    >>> done = []
    >>> try:
    ...     with deferred_interrupts():
    ...         os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C in the middle of the copy: remembered
    ...         done.append("copy finished")
    ... except KeyboardInterrupt:
    ...     done.append("then interrupted")
    >>> done
    ['copy finished', 'then interrupted']

Only the main thread receives signals in Python, so elsewhere (and where the SIGINT handler is not
Python's own) this does nothing. The copy phase it guards takes a fraction of a second: everything
that can fail (keys, shapes, checksums) is checked before it starts.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["deferred_interrupts"]


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Defer SIGINT until the block ends; then the previous handler runs (``KeyboardInterrupt`` by default)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # SIG_IGN / SIG_DFL / not set from Python: nothing to defer
        yield
        return
    received: list = []

    def remember(signum, frame) -> None:
        received.append((signum, frame))

    signal.signal(signal.SIGINT, remember)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            previous(*received[0])  # default_int_handler raises KeyboardInterrupt here
