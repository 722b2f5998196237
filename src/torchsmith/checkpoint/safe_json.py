"""JSON parsing for untrusted files: every malformed document raises ``ValueError``.

``json.loads`` raises ``RecursionError`` for deeply nested input (``[[[[...``);
here that is one more kind of bad JSON, so callers' ``except ValueError`` turn it
into a checkpoint error naming the file instead of letting it escape.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["loads"]


def loads(text: str | bytes, **kwargs: Any) -> Any:
    """``json.loads``, with nesting too deep to parse reported as ``ValueError``."""
    try:
        return json.loads(text, **kwargs)
    except RecursionError as e:
        raise ValueError("nested too deeply to parse") from e
