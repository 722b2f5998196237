"""Human-readable sizes: the one ``format_bytes`` for reports, tables and the CLI."""

from __future__ import annotations

__all__ = ["format_bytes"]


def format_bytes(n: int, *, large_decimals: int = 2) -> str:
    """``1536`` -> ``'1.5 KiB'``; GiB and TiB with ``large_decimals`` digits.

    >>> format_bytes(1536), format_bytes(3 * 2**30), format_bytes(3 * 2**30, large_decimals=1)
    ('1.5 KiB', '3.00 GiB', '3.0 GiB')
    >>> format_bytes(512)
    '512 B'
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            if unit == "B":
                return f"{n} B"
            return f"{n:.{large_decimals}f} {unit}" if unit in ("GiB", "TiB") else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # unreachable
