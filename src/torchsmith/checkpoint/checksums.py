"""Checksums of tensor data: xxh3-64 over a small descriptor, then the bytes.

The descriptor (dtype and shape) is hashed first, so a header whose dtype or
shape was damaged but still parses fails the check of that very tensor.
``bytes_digest`` is the same hash over raw bytes (headers, ``config.json``, a shard index).

    >>> h = tensor_hasher("F32", [2]); h.update(bytes(8)); is_digest(h.hexdigest())
    True
    >>> bytes_digest(b"{}")
    '1349cde127705c16'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import xxhash

from ..errors import ChecksumError

__all__ = ["HASH_NAME", "DIGEST_LEN", "PLACEHOLDER", "tensor_hasher", "is_digest", "bytes_digest", "checksum_error"]

HASH_NAME = "xxh3-64"
DIGEST_LEN = 16  # hex characters
PLACEHOLDER = "0" * DIGEST_LEN


def tensor_hasher(dtype: str, shape: Sequence[int]) -> "xxhash.xxh3_64":
    """A hasher primed with the tensor's descriptor; feed it the data bytes with ``update``."""
    h = xxhash.xxh3_64()
    h.update(f"{dtype}{list(shape)}".encode())
    return h


_DIGEST = re.compile(f"[0-9a-f]{{{DIGEST_LEN}}}")


def is_digest(value: object) -> bool:
    """Whether ``value`` is written as a digest (16 lowercase hex characters)."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def bytes_digest(data: bytes) -> str:
    """The xxh3-64 hex digest of ``data``."""
    return xxhash.xxh3_64_hexdigest(data)


def checksum_error(path: object, name: str, recorded: str, got: str) -> ChecksumError:
    """The error for tensor ``name`` of ``path`` whose data no longer matches its checksum."""
    return ChecksumError(
        f"Checksum mismatch in {str(path)!r}, tensor {name!r}: recorded {recorded}, data hashes to {got}. "
        f"The file is damaged; nothing was loaded. Restore it from a good copy."
    )
