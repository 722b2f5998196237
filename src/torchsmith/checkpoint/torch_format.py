"""Torch files (``torch.save``): read with ``weights_only=True`` only, never unpickling code.

A file whose pickle wants other globals (a whole pickled model, a training
script's objects, or a payload) is refused with :class:`UnsafeCheckpointError`
naming those globals; the globals are found by scanning the pickle opcodes,
which executes nothing. ``trusted=True``, spelled out by the caller, is the
only way to run a full unpickle.

torchsmith writes torch files as ``{"state_dict": ..., "torchsmith": {...}}``,
the second entry holding checksums (a JSON string) and metadata; plain ``torch.load`` reads
them, and so does any loader that understands training-loop checkpoints.
"""

from __future__ import annotations

import _compat_pickle
import io
import json
import os
import pickle
import pickletools
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CorruptCheckpointError, UnsafeCheckpointError
from .checksums import HASH_NAME, tensor_hasher
from .files import open_regular
from .formats import DTYPE_NAMES, SAFETENSORS_SUFFIX, TORCHSMITH_KEY
from .safetensors_format import byte_view

__all__ = ["read_torch_file", "write_torch_file", "pickle_globals", "tensor_digest"]

_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def _python3_name(module: str, name: str) -> str:
    """The name unpickling would import: protocol 0-2 pickles use Python 2 names (``commands.call``)."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def _globals_of_one(stream: io.BytesIO, found: list[str]) -> bool:
    """Scan one pickle from ``stream``; True when it ended with STOP."""
    strings: list[str] = []
    memo: dict[int, str] = {}
    for op, arg, _ in pickletools.genops(stream):
        if op.name in ("GLOBAL", "INST"):  # INST imports and calls in one opcode
            found.append(_python3_name(*str(arg).split(" ", 1)))
        elif op.name in _STRING_OPS:
            strings.append(arg.decode("latin-1") if isinstance(arg, bytes) else str(arg))
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
            memo[int(arg)] = strings[-1]
        elif op.name == "MEMOIZE" and strings:
            memo[len(memo)] = strings[-1]
        elif op.name in ("BINGET", "LONG_BINGET", "GET") and int(arg) in memo:
            strings.append(memo[int(arg)])
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(f"{strings[-2]}.{strings[-1]}")
        elif op.name == "STOP":
            return True
    return False


def pickle_globals(data: bytes, *, max_pickles: int = 16) -> list[str]:
    """Every ``module.name`` the pickle(s) in ``data`` would import, found without unpickling.

    Legacy torch files hold several pickles back to back; each is scanned.
    Handles ``GLOBAL``, ``INST`` and ``STACK_GLOBAL`` (strings pushed directly or through
    the memo); stops quietly at the first malformed opcode.
    """
    found: list[str] = []
    stream = io.BytesIO(data)
    for _ in range(max_pickles):
        try:
            if not _globals_of_one(stream, found):
                break
        except Exception:  # malformed or raw data after the pickles: report what was seen
            break
    return list(dict.fromkeys(found))


# torchsmith's own allow-list, on top of torch's: only what a file of weights needs. torch's list grows
# with what gets imported (``torch.distributed`` once added ``traceback.FrameSummary``, which opens any
# path it names); a global must be on both lists to be unpickled.
_OWN_EXACT = {
    "collections.OrderedDict",
    "builtins.set", "builtins.frozenset", "builtins.complex", "builtins.slice", "builtins.bytearray",
    "torch.Size", "torch.device", "torch.serialization._get_layout",
    "torch.storage.UntypedStorage", "torch.storage.TypedStorage",
    "torch._tensor._rebuild_from_type_v2", "torch.nn.parameter.Parameter",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
}


def own_allowed(name: str) -> bool:
    """True when ``module.name`` is on torchsmith's weights-only allow-list (see ``_OWN_EXACT``)."""
    if name in _OWN_EXACT or name.startswith("torch._utils._rebuild_") or name.startswith("numpy.dtypes."):
        return True
    module, _, attr = name.rpartition(".")
    if module != "torch":
        return False
    value = getattr(torch, attr, None)
    return attr.endswith("Storage") or isinstance(value, (torch.dtype, torch.layout, torch.memory_format, torch.qscheme))


def _allowed_globals() -> set[str]:
    try:
        from torch import _weights_only_unpickler as wo

        return set(wo._get_allowed_globals()) | set(wo._get_user_allowed_globals())
    except (ImportError, AttributeError):  # a torch without these helpers: name every global
        return set()


def _unsafe_globals(path: Path) -> list[str]:
    """The globals of the pickle(s) in ``path`` that the weights-only unpickler would refuse."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = [g for n in z.namelist() if n.endswith(".pkl") for g in pickle_globals(z.read(n))]
        else:
            names = pickle_globals(path.read_bytes())
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return []
    allowed = _allowed_globals()
    return [n for n in dict.fromkeys(names) if n not in allowed]


_SKIPPED = ("PROTO", "FRAME", "BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE")


def bound_method(data: bytes) -> str | None:
    """The method name when the pickle ``data`` holds a bound method, ``getattr(obj, "state_dict")`` (what
    ``torch.save(model.state_dict, path)`` writes, without the call), else None. Read without unpickling.

    >>> import pickle
    >>> bound_method(pickle.dumps(getattr, protocol=2)) is None
    True
    """
    try:
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(io.BytesIO(data)) if op.name not in _SKIPPED]
    except Exception:  # malformed: not this case
        return None
    if len(ops) < 4 or [name for name, _ in ops[-3:]] != ["TUPLE2", "REDUCE", "STOP"]:
        return None
    first, method = ops[0], ops[-4]
    is_getattr = first[0] == "GLOBAL" and _python3_name(*str(first[1]).split(" ", 1)) == "builtins.getattr"
    return str(method[1]) if is_getattr and method[0] in _STRING_OPS else None


def refusal(path: Path, names: list[str], cause: str = "") -> UnsafeCheckpointError:
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    wanted = (
        f"wants to import {shown} while loading"
        if names
        else f"cannot be read as weights only ({cause}): it is damaged, or needs code to load"
    )
    return UnsafeCheckpointError(
        f"Refused to load {str(path)!r}: it is a pickle that {wanted}, and torchsmith never runs code from a "
        f"checkpoint by default. Nothing was executed. If you trust this file (you made it, or trust its source), "
        f"convert it once: `torchsmith convert {path} {path.with_suffix(SAFETENSORS_SUFFIX).name} --trusted` "
        f"(in Python: pass trusted=True to load_weights / load_model / read_weights, then save_weights); "
        f"the converted file loads without pickle."
    )


def read_torch_file(path: str | Path, *, trusted: bool = False, mmap: bool = False, map_location="cpu", inside: Path | None = None) -> object:
    """The object in a torch file, loaded with ``weights_only=True`` (or fully when ``trusted``).

    Not memory-mapped by default: a mapped file that another process rewrites in place (plain
    ``torch.save`` truncates and rewrites) would kill this process with SIGBUS on the next read.

    Raises:
        UnsafeCheckpointError: the pickle wants globals outside torch's weights-only allow-list.
        CorruptCheckpointError: the file is not a readable torch file.
    """
    path = Path(path)
    opened = open_regular(path, inside=inside)
    with opened:
        is_zip = _is_zip(opened)
        pickles = check_zip_records(opened, path) if is_zip else [_legacy_head(opened)]
        if not trusted:
            strangers = [g for p in pickles for g in pickle_globals(p) if not own_allowed(g)]
            method = bound_method(pickles[0]) if strangers and len(pickles) == 1 else None
            if method:
                raise UnsafeCheckpointError(
                    f"{str(path)!r}: this file holds model.{method} without the call: it was saved as "
                    f"torch.save(model.{method}, path), a bound method, which pickles the whole model with its code instead of its weights. Save "
                    f"model.{method}() (with parentheses), or use torchsmith.save_weights(model, path). Nothing was "
                    f"executed. If you made this file, convert it once to recover the weights: `torchsmith convert "
                    f"{path} {path.with_suffix(SAFETENSORS_SUFFIX).name} --trusted` (in Python: trusted=True)."
                )
            if strangers:
                raise refusal(path, list(dict.fromkeys(strangers)))
        return _load_pinned(path, _pinned(opened, path), trusted, mmap and is_zip, map_location)


def _legacy_head(opened, limit: int = 64 * 2**20) -> bytes:
    """The start of a legacy (non-zip) torch file, where its pickles are (the raw data follows them)."""
    try:  # read(n) allocates n bytes up front: ask only for what the file holds
        return opened.read(min(limit, os.fstat(opened.fileno()).st_size))
    finally:
        opened.seek(0)


def _is_data_record(name: str) -> bool:
    """A tensor storage record (``archive/data/0``): covered by the per-tensor checksums, not read here."""
    parts = name.split("/")
    return len(parts) >= 3 and parts[-2] == "data" and parts[-1].isdigit()


def check_zip_records(opened, path: Path) -> list[bytes]:
    """Check the CRC-32 of every record of a torch zip but the tensor data, before anything is unpickled.

    The pickle (``data.pkl``) holds the ``"torchsmith"`` entry with the checksums, the tensor names,
    dtypes, shapes and storage offsets; torch itself ignores the CRCs, so a damaged pickle could
    otherwise load as a file without checksums, or put bytes in the wrong place. torch writes records
    uncompressed; a compressed one (a zip bomb's way to turn kilobytes into gigabytes) is refused
    without being inflated.

    Returns the pickle records' bytes (for the allow-list scan).

    Raises:
        CorruptCheckpointError: a record whose bytes do not match their CRC, or a compressed or oversized record.
    """
    size = os.fstat(opened.fileno()).st_size
    pickles = []
    try:
        with zipfile.ZipFile(opened) as z:
            for info in z.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    raise CorruptCheckpointError(
                        f"{str(path)!r}: record {info.filename!r} is compressed ({info.compress_size:,} bytes that "
                        f"claim to inflate to {info.file_size:,}); torch writes records uncompressed, and torchsmith "
                        f"never inflates a checkpoint (a zip bomb). Re-save it with torch.save."
                    )
                if info.file_size > size:
                    raise CorruptCheckpointError(f"{str(path)!r}: record {info.filename!r} claims {info.file_size:,} bytes, more than the whole {size:,}-byte file.")
                if _is_data_record(info.filename):
                    continue
                with z.open(info) as record:  # zipfile checks the CRC-32 when the record ends
                    chunks = list(iter(lambda: record.read(1 << 20), b""))
                if info.filename.endswith(".pkl"):
                    pickles.append(b"".join(chunks))
    except zipfile.BadZipFile as e:
        raise CorruptCheckpointError(f"{str(path)!r} is a damaged torch file: {e} (the pickle or a small record changed).") from e
    except (OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as e:
        raise CorruptCheckpointError(f"{str(path)!r} is a damaged torch file ({type(e).__name__}: {e}).") from e
    finally:
        opened.seek(0)
    return pickles


def _is_zip(opened) -> bool:
    """``zipfile.is_zipfile``, which raises (not returns False) for some damaged end records."""
    try:
        return zipfile.is_zipfile(opened)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


def _pinned(opened, path: Path) -> Path:
    """A name for the very file ``opened`` is: torch opens files by name (twice, with mmap), and a concurrent
    save may replace ``path`` in between; ``/proc/self/fd/N`` always names the file opened first."""
    proc = Path(f"/proc/self/fd/{opened.fileno()}")
    return proc if proc.exists() else path


def _load_pinned(path: Path, pinned: Path, trusted: bool, mmap: bool, map_location) -> object:
    try:
        return torch.load(pinned, map_location=map_location, weights_only=not trusted, mmap=mmap)
    except pickle.UnpicklingError as e:
        if trusted:
            raise CorruptCheckpointError(f"{str(path)!r} is not a readable torch file: {e}") from e
        raise refusal(path, _unsafe_globals(pinned), str(e).splitlines()[0]) from None
    except Exception as e:  # torch raises RuntimeError / EOFError / ValueError ... for damaged files
        raise CorruptCheckpointError(
            f"{str(path)!r} is not a readable torch file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})."
        ) from e


def tensor_digest(t: torch.Tensor) -> str:
    """The checksum torchsmith records for a tensor (dtype and shape, then the bytes)."""
    t = t.detach()
    if t.device.type != "cpu" or not t.is_contiguous():
        t = t.to("cpu").contiguous()
    h = tensor_hasher(DTYPE_NAMES[t.dtype], t.shape)
    h.update(byte_view(t))
    return h.hexdigest()


def write_torch_file(f, tensors: Mapping[str, torch.Tensor], *, metadata: Mapping[str, str] | None = None) -> None:
    """``torch.save`` of ``{"state_dict": tensors, "torchsmith": {hash, checksums, metadata}}`` to ``f``."""
    info = {
        "hash": HASH_NAME,
        # a JSON string, not a dict: pickle would share the key strings with the state dict, so a damaged
        # key would rename both consistently; in a string each name is stored a second time
        "checksums": json.dumps({name: tensor_digest(t) for name, t in tensors.items()}, sort_keys=True),
        "metadata": dict(metadata or {}),
    }
    torch.save({"state_dict": dict(tensors), TORCHSMITH_KEY: info}, f)
