"""Hugging Face Hub sources: ``hf://ORG/NAME[@REVISION][/FILE]`` turned into files of the local cache.

Resolution happens before anything opens a file: :func:`open_source` (so ``load_weights``, ``read_weights``,
``inspect_checkpoint``, ``diff_checkpoints``, ``convert_checkpoint`` and the CLI) and ``load_model`` hand an
``hf://`` string to :func:`resolve_weights` / :func:`resolve_model` and read the local paths they return,
through the same safe readers as any file. The network is ``huggingface_hub``'s, imported here only when an
``hf://`` source is used (``pip install 'torchsmith[hub]'``); this module holds no network code of its own.

The cache comes first: a file already in the Hugging Face cache (``HF_HUB_CACHE``, by default
``~/.cache/huggingface/hub``) is used without asking the Hub. ``HF_HUB_OFFLINE=1`` (or ``TORCHSMITH_OFFLINE=1``)
allows nothing else. A sharded checkpoint is fetched through its index. Without ``FILE`` the repository's
weights are the first of ``model.safetensors.index.json``, ``model.safetensors``, ``pytorch_model.bin``,
``model.pt``, ``model.pth`` that the cache holds (else that the Hub has).

    >>> parse_hf("hf://timm/resnet18.a1_in1k")
    HFSource(repo_id='timm/resnet18.a1_in1k', revision=None, filename=None)
    >>> parse_hf("hf://org/name@v1.0/weights/model.safetensors")
    HFSource(repo_id='org/name', revision='v1.0', filename='weights/model.safetensors')
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ..errors import CheckpointError, CorruptCheckpointError
from . import safe_json
from .files import read_json_bytes
from .formats import CONFIG_NAME, DIRECTORY_CANDIDATES, INDEX_SUFFIX, WEIGHTS_NAME

__all__ = ["HF_SCHEME", "OFFLINE_VARIABLES", "HFSource", "is_offline", "is_hf_source", "parse_hf", "resolve_weights", "resolve_model"]

HF_SCHEME = "hf://"
OFFLINE_VARIABLES = ("TORCHSMITH_OFFLINE", "HF_HUB_OFFLINE")  # either one truthy: nothing is downloaded
_TRUE = {"1", "on", "yes", "true"}  # huggingface_hub's spelling of a true variable
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_SPECIAL_REF = re.compile(r"refs/(?:pr/\d+|convert/[\w.-]+)")  # revisions with a '/' in them, as huggingface_hub
_OTHER_TYPES = ("datasets", "spaces", "kernels", "buckets")


def is_offline() -> bool:
    """Whether downloads are off: ``TORCHSMITH_OFFLINE`` or ``HF_HUB_OFFLINE`` set to 1/on/yes/true (read at each call)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in OFFLINE_VARIABLES)


def is_hf_source(source: Any) -> bool:
    """Whether ``source`` is an ``hf://`` string (a Path never is: ``Path("hf://a")`` is ``hf:/a``)."""
    return isinstance(source, str) and source.startswith(HF_SCHEME)


@dataclass(frozen=True)
class HFSource:
    """A parsed ``hf://`` source: the model repository, the revision (None: ``main``) and a file in it (or None)."""

    repo_id: str
    revision: str | None
    filename: str | None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HF_SCHEME}{self.repo_id}{rev}" + (f"/{self.filename}" if self.filename else "")


def parse_hf(source: str) -> HFSource:
    """``hf://[models/]ORG/NAME[@REVISION][/FILE]`` (huggingface_hub's grammar, model repositories only).

    A revision holding ``/`` is written percent-encoded (``@my%2Fbranch``), except ``refs/pr/N``.

    Raises:
        CheckpointError: not of that form (naming what is wrong).
    """
    rest = source[len(HF_SCHEME) :] if is_hf_source(source) else ""
    kind = rest.split("/", 1)[0]
    if kind == "models":
        rest = rest[len("models/") :]
    elif kind in _OTHER_TYPES:
        raise CheckpointError(f"{source!r}: only model repositories hold checkpoints; use hf://ORG/NAME, not {kind}/.")
    org, _, after = rest.partition("/")
    name, _, after = after.partition("/")
    name, at, revision = name.partition("@")
    path = after
    if at:
        special = _SPECIAL_REF.match(f"{revision}/{after}") if revision == "refs" else None
        if special:
            revision, path = special.group(0), f"{revision}/{after}"[special.end() + 1 :]
        revision = unquote(revision)
    problems = []
    for label, part in (("ORG", org), ("NAME", name)):
        if not _NAME.fullmatch(part) or "--" in part or ".." in part:
            problems.append(f"{label} {part!r} is not a repository name (letters, digits, '-', '_', '.'; no '--' or '..')")
    if at and not revision:
        problems.append("the revision after '@' is empty")
    segments = path.split("/") if path else []
    if any(s in ("", ".", "..") for s in segments) or "\\" in path:
        problems.append(f"the file {path!r} must be a path inside the repository (no empty, '.' or '..' parts)")
    if problems or not is_hf_source(source):
        raise CheckpointError(
            f"{source!r} is not a Hugging Face source: {'; '.join(problems) or 'it must start with hf://'}. "
            f"Write hf://ORG/NAME, hf://ORG/NAME@REVISION or hf://ORG/NAME/FILE (e.g. hf://timm/resnet18.a1_in1k)."
        )
    return HFSource(f"{org}/{name}", revision if at else None, path.rstrip("/") or None)


# resolving, through huggingface_hub


def _hub() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.constants  # submodules load lazily: name the ones used
        import huggingface_hub.errors
    except ImportError as e:
        raise CheckpointError(
            "hf:// sources need the huggingface_hub package: pip install 'torchsmith[hub]' (or huggingface_hub)."
        ) from e
    return huggingface_hub


def _cache_dir(hub: Any) -> str:
    return str(hub.constants.HF_HUB_CACHE)


def _not_here(hub: Any, src: HFSource, names: list[str], why: str) -> CheckpointError:
    folder = "models--" + src.repo_id.replace("/", "--")
    rev = f" --revision {src.revision}" if src.revision else ""
    return CheckpointError(
        f"{src}: {why}; looked for {', '.join(names)} in the Hugging Face cache {_cache_dir(hub)!r}. On a machine with "
        f"network: `hf download {src.repo_id} {names[0]}{rev}` (or huggingface-cli download), then copy its cache "
        f"folder {folder} into {_cache_dir(hub)!r}; or unset HF_HUB_OFFLINE / TORCHSMITH_OFFLINE to download."
    )


def _cached(hub: Any, src: HFSource, filename: str) -> Path | None:
    found = hub.try_to_load_from_cache(src.repo_id, filename, revision=src.revision)
    return Path(found) if isinstance(found, str) else None  # None, or huggingface_hub's "known missing" marker


def _get(hub: Any, src: HFSource, filename: str, *, required: bool) -> Path | None:
    """``filename`` of ``src`` in the local cache: cached, else downloaded (unless offline); None when the
    repository does not have it and it is not ``required``."""
    found = _cached(hub, src, filename)
    if found is not None:
        return found
    if is_offline():
        if required:
            raise _not_here(hub, src, [filename], "not in the cache, and downloads are off")
        return None
    errors = hub.errors
    try:
        return Path(hub.hf_hub_download(src.repo_id, filename, revision=src.revision))
    except errors.LocalEntryNotFoundError as e:  # no connection, and not in the cache
        raise _not_here(hub, src, [filename], f"the Hub cannot be reached ({e.__class__.__name__})") from e
    except errors.EntryNotFoundError as e:
        if required:
            raise CheckpointError(f"{src}: the repository has no file {filename!r}.") from e
        return None
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as e:
        raise CheckpointError(f"{src}: no such repository or revision on the Hub (or it is private: log in with `hf auth login`). {e}") from e
    except (errors.HfHubHTTPError, OSError) as e:
        raise CheckpointError(f"{src}: downloading {filename!r} failed: {e}") from e


def _with_shards(hub: Any, src: HFSource, index: Path, folder: str) -> Path:
    """Fetch every shard a sharded checkpoint's index names (next to it); returns the index."""
    try:
        doc = safe_json.loads(read_json_bytes(index).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CorruptCheckpointError(f"{src}: the index {str(index)!r} is not readable JSON ({e}).") from e
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict):
        raise CorruptCheckpointError(f"{src}: the index {str(index)!r} must hold a 'weight_map' of tensor name -> shard file.")
    for shard in dict.fromkeys(v for v in weight_map.values() if isinstance(v, str) and Path(v).name == v and v not in ("", ".", "..")):
        _get(hub, src, folder + shard, required=True)  # anything else is refused by the index reader, naming it
    return index


def resolve_weights(source: str) -> Path:
    """The local file (or shard index, its shards fetched too) of an ``hf://`` weights source.

    Raises:
        CheckpointError: not a valid source, huggingface_hub missing, the file not in the cache while offline
            (naming the cache and how to fill it), no such repository, revision or file.
    """
    src = parse_hf(source)
    hub = _hub()
    if src.filename is not None:
        path = _get(hub, src, src.filename, required=True)
        folder = src.filename.rpartition("/")[0]
    else:
        folder = ""
        path = next((p for p in (_cached(hub, src, n) for n in DIRECTORY_CANDIDATES) if p is not None), None)
        if path is None and is_offline():
            raise _not_here(hub, src, list(DIRECTORY_CANDIDATES), "no weights file in the cache, and downloads are off")
        if path is None:
            path = next((p for p in (_get(hub, src, n, required=False) for n in DIRECTORY_CANDIDATES) if p is not None), None)
        if path is None:
            raise CheckpointError(
                f"{src}: the repository holds none of {', '.join(DIRECTORY_CANDIDATES)}; name the file: {src}/FILE."
            )
    if path.name.endswith(INDEX_SUFFIX):
        return _with_shards(hub, src, path, folder + "/" if folder else "")
    return path


def resolve_model(source: str, *, also: tuple[str, ...] = ()) -> Path:
    """The local snapshot folder holding ``config.json`` and ``model.safetensors`` of an ``hf://`` source
    written by ``save_model`` (``hf://ORG/NAME[@REVISION][/FOLDER]``), both fetched into the cache, and the
    files named in ``also`` (``model.sig``) when the repository has them."""
    src = parse_hf(source)
    hub = _hub()
    folder = f"{src.filename}/" if src.filename else ""
    config = _get(hub, src, folder + CONFIG_NAME, required=True)
    _get(hub, src, folder + WEIGHTS_NAME, required=True)
    for name in also:
        _get(hub, src, folder + name, required=False)
    return config.parent
