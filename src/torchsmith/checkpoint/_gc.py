"""Pausing Python's cyclic garbage collector while a load makes many small objects.

A 100,000-tensor header makes a few objects per tensor (entries, spans, report
rows), none in cycles; with the collector running, the allocations trigger
hundreds of full passes over all of them (seconds, for nothing to collect).

    >>> import gc
    >>> with gc_paused():
    ...     gc.isenabled()
    False
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["gc_paused"]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector for the block (re-enabled after, if it was on)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
