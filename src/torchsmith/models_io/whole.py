"""Whole models without pickle: ``config.json`` (how to build it) + ``model.safetensors`` (its weights).

    >>> save_model(create_model("resnet18", num_classes=10), "runs/r18")
    PosixPath('runs/r18')
    >>> model = load_model("runs/r18")        # rebuilt on the meta device, weights assigned
    >>> model.fc.out_features
    10

The configuration comes from the registry (``model.torchsmith_config``): the
builder's name and keywords, and the surgery steps recorded since, replayed by
``load_model`` on the meta device before the weights are read. ``save_model``
first rebuilds the model that way and compares it with yours, so it never
writes a directory ``load_model`` would rebuild differently. Values are
written by the one config codec (``torchsmith.codec``): JSON values as they are,
layer classes (``norm_layer=FrozenBatchNorm2d``) as their names and torch
dtypes as strings. Loading never imports anything a config names: only
registered models, the layer name tables and the torch.nn allow-list are
looked up.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..errors import CheckpointError, CorruptCheckpointError, TorchsmithError, UnknownModelError, UnsaveableModelError
from ..checkpoint import safe_json
from ..checkpoint.atomic import atomic_write_all, clean_stale_temporaries
from ..checkpoint.checksums import bytes_digest
from ..checkpoint.files import open_regular, read_capped
from ..checkpoint.formats import CONFIG_NAME, SIGNATURE_NAME, WEIGHTS_NAME, dtype_name
from ..checkpoint.hub import is_hf_source, resolve_model
from ..checkpoint.limits import Limits, current, how_to_raise, takes_limits
from ..checkpoint.safetensors_format import SafetensorsFile, write_safetensors
from ..checkpoint.signing import verify_checkpoint
from ..checkpoint.sources import SafetensorsSource
from ..checkpoint.torch_format import read_torch_file
from ..checkpoint.weights import check_fits, check_metadata, dedupe, load_weights, state_dict_of
from ..codec import decode, describe_module, encode, layer_names
from ..paths import unwrapped
from ..registry import model_config
from ..surgery.freeze import pinned_eval
from ..surgery.parametrized import original_class
from .replay import build_from_config, finish_loaded

__all__ = ["save_model", "load_model"]

FORMAT = "torchsmith.model"
FORMAT_VERSION = 1

PAIR_TRIES = 16  # reads of config.json + weights while a concurrent save is between its two renames

logger = logging.getLogger("torchsmith")


# config


def _config_size(value: Any, max_values: int, max_depth: int, depth: int = 0) -> tuple[int, int]:
    """(values, depth) of a JSON value, stopping as soon as either passes its limit."""
    if depth > max_depth:
        return 1, depth
    if isinstance(value, (list, dict)):
        count, deepest = 1, depth
        for v in value.values() if isinstance(value, dict) else value:
            n, d = _config_size(v, max_values, max_depth, depth + 1)
            count, deepest = count + n, max(deepest, d)
            if count > max_values or deepest > max_depth:
                break
        return count, deepest
    return 1, depth


def model_to_config(model: nn.Module) -> dict[str, Any]:
    """The JSON configuration of a registry-built model.

    Raises:
        UnsaveableModelError: the model was not built through the registry, or an argument is not JSON-able
            (listing every such argument and how to make it saveable).
    """
    cfg = model_config(model)
    if cfg is None:
        raise UnsaveableModelError(
            f"save_model: this {type(model).__name__} was not built through the torchsmith registry, so there is "
            f"no configuration to rebuild it from. Decorate its class (or a builder function) with "
            f"@torchsmith.register_model and build it through that, or save only its weights with save_weights()."
        )
    problems: list[str] = []
    kwargs = {k: encode(v, where=k, problems=problems) for k, v in cfg["kwargs"].items()}
    steps = encode(cfg["steps"], where="steps", problems=problems)
    if problems:
        raise UnsaveableModelError(
            f"save_model: model {cfg['name']!r} was built with arguments config.json cannot hold: "
            f"{'; '.join(problems)}. Pass plain values (numbers, strings, lists, dicts), torch dtypes, or layer "
            f"names ({', '.join(layer_names())}, or torch.nn names on the allow-list) instead, or register a "
            f"model class whose constructor takes JSON-able arguments and builds the objects itself."
        )
    return {"name": cfg["name"], "kwargs": kwargs, "steps": steps}


def _decode_config(doc: dict[str, Any], where: str) -> dict[str, Any]:
    problems: list[str] = []
    kwargs = decode(doc["kwargs"], where="kwargs", problems=problems)
    steps = decode(doc.get("steps", []), where="steps", problems=problems)
    if problems:
        raise CorruptCheckpointError(f"{where}: {'; '.join(problems)}.")
    return {"name": doc["name"], "kwargs": kwargs, "steps": steps}


def _module_kind(m: nn.Module) -> tuple:
    """What two modules at one path must share: the class (a parametrized one's original class, since torch
    makes a ``Parametrized<Name>`` class per instance, plus its parametrizations), and a pin to eval mode."""
    plists = getattr(m, "parametrizations", None) if original_class(m) is not type(m) else None
    listed = tuple((name, tuple(type(p) for p in plist)) for name, plist in plists.items()) if plists is not None else ()
    return original_class(m), listed, pinned_eval(m)


def _kind_name(m: nn.Module) -> str:
    cls, listed, pinned = _module_kind(m)
    with_p = "; ".join(f"{name}: {', '.join(p.__name__ for p in ps)}" for name, ps in listed)
    return cls.__name__ + (f" (parametrized {with_p})" if with_p else "") + (" (kept in eval mode)" if pinned else "")


def _differences(expected: nn.Module, found: nn.Module) -> list[str]:
    """Where ``found`` differs from ``expected``: module types along every path (parametrized ones by their
    class and parametrizations), BatchNorm modes pinned by ``freeze``, then state-dict keys, shapes and
    dtypes; ``path: expected X, found Y``, in model order."""
    out = []
    want, have = dict(expected.named_modules()), dict(found.named_modules())
    kind = _kind_name

    for path in dict.fromkeys([*have, *want]):
        where = path or "<model>"
        if path not in want:
            out.append(f"{where}: expected nothing, found {kind(have[path])}")
        elif path not in have:
            out.append(f"{where}: expected {kind(want[path])}, found nothing")
        elif _module_kind(want[path]) != _module_kind(have[path]):
            out.append(f"{where}: expected {kind(want[path])}, found {kind(have[path])}")
    sd_want, sd_have = expected.state_dict(), found.state_dict()
    for key in dict.fromkeys([*sd_have, *sd_want]):
        if key not in sd_want:
            out.append(f"{key}: expected no tensor, found {tuple(sd_have[key].shape)}")
        elif key not in sd_have:
            out.append(f"{key}: expected a {tuple(sd_want[key].shape)} tensor, found none")
        elif sd_want[key].shape != sd_have[key].shape:
            out.append(f"{key}: expected shape {tuple(sd_want[key].shape)}, found {tuple(sd_have[key].shape)}")
        elif sd_want[key].dtype != sd_have[key].dtype:
            out.append(f"{key}: expected {dtype_name(sd_want[key].dtype)}, "
                       f"found {dtype_name(sd_have[key].dtype)}")  # fmt: skip
    return out


def check_rebuildable(model: nn.Module, config: dict[str, Any]) -> None:
    """Rebuild ``config`` (as written to JSON) on the meta device and compare it with ``model``.

    Raises:
        UnsaveableModelError: naming the first differences (path, expected, found) and what to do.
    """
    decoded = _decode_config(json.loads(json.dumps(config)), "save_model")
    name = config["name"]
    try:
        rebuilt = rebuild(decoded, device="cpu", error=UnsaveableModelError)
    except TorchsmithError as e:
        raise UnsaveableModelError(f"save_model: the recorded config of this {name!r} does not rebuild: {e}") from e
    diffs = _differences(rebuilt, model)
    if diffs:
        shown = "; ".join(diffs[:5]) + (f"; ... ({len(diffs) - 5} more)" if len(diffs) > 5 else "")
        steps = len(decoded["steps"])
        raise UnsaveableModelError(
            f"save_model: load_model would not rebuild this model. Built from {name!r} with its recorded keywords "
            f"and {steps} recorded step{'s' if steps != 1 else ''}, it differs from yours in {len(diffs)} "
            f"place{'s' if len(diffs) != 1 else ''}: {shown}.{_why_unrecorded(rebuilt, model)} Change models with "
            f"torchsmith's recorded operations (replace_module with a module built from allow-listed torch.nn layers, "
            f"or from create_model or create_layer; replace_head, freeze, ...), or "
            f"register the class with @register_model and build it through create_model; or save only the "
            f"weights with save_weights(). Nothing was written."
        )


def rebuild(config: dict[str, Any], *, device: str | torch.device, error: type[CheckpointError] = CheckpointError) -> nn.Module:
    """``config`` built on the meta device; where the builder computes on tensors there (torchvision's RegNet
    calls ``.tolist()``), built for real on ``device`` instead.

    Raises:
        error: neither build works (saying why each failed).
    """
    try:
        return build_from_config(config, device="meta")
    except TorchsmithError:
        raise
    except Exception as meta_err:  # noqa: BLE001 - a builder that reads tensor values cannot run on meta
        logger.info("%r does not build on the meta device (%s: %s); building it for real",
                    config["name"], type(meta_err).__name__, meta_err)
        try:
            return build_from_config(config, device=device)
        except TorchsmithError:
            raise
        except Exception as err:
            raise error(
                f"{config['name']!r} does not build from its recorded config: on the meta device "
                f"{type(meta_err).__name__}: {meta_err}; for real on {device}: {type(err).__name__}: {err}. "
                "Check that its builder runs with these keywords."
            ) from err


def _why_unrecorded(expected: nn.Module, found: nn.Module) -> str:
    """Why the first module of ``found`` that ``expected`` lacks was not recorded (the config codec's reasons)."""
    want = dict(expected.named_modules())
    for path, module in found.named_modules():
        if path and (path not in want or _module_kind(want[path]) != _module_kind(module)):
            _, problems = describe_module(module, path=path)
            if problems:
                return f" {path!r} is not plain data, so it could not be recorded: {'; '.join(problems[:3])}."
            return f" {path!r} is plain data: put it in with replace_module(model, {path!r}, module) to record it."
    return ""


# whole models


def save_model(model: nn.Module, directory: str | os.PathLike, *, metadata: dict[str, str] | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed); returns it.

    The configuration is validated before anything is written; both files are written to temporaries
    and fsynced before either is renamed into place, so a failed save leaves the old pair; ``config.json``
    records the weights header's checksum, so a pair mixed by a crash between the two renames is caught.
    """
    model = unwrapped(model)  # torch.compile's wrapper: the model it compiles is what is saved
    config = model_to_config(model)
    check_rebuildable(model, config)
    stored, aliases = dedupe(state_dict_of(model))
    metadata = check_metadata(metadata)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # both files are written and fsynced before either is renamed: a failure while writing (a full
    # disk) leaves the old pair in place; then the weights are renamed, then config.json, back to back
    # (a load in between reads the pair again)
    with atomic_write_all([directory / WEIGHTS_NAME, directory / CONFIG_NAME]) as (weights_file, config_file):
        header = write_safetensors(weights_file, stored, metadata=metadata, aliases=aliases)
        _write_config(config_file, config, header)
    return directory


def _write_config(f, config: dict[str, Any], header: bytes) -> None:
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **config,
        "weights": WEIGHTS_NAME,
        "torchsmith_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "checksums": {WEIGHTS_NAME: {"header_xxh3-64": bytes_digest(header)}},
    }
    doc["checksums"][CONFIG_NAME] = {"xxh3-64": _config_digest(doc)}
    f.write((json.dumps(doc, indent=2) + "\n").encode())


def _config_digest(doc: dict[str, Any]) -> str:
    """xxh3-64 of the canonical JSON of ``doc`` without its own digest (every field is covered)."""
    checksums = doc.get("checksums")
    rest = {k: v for k, v in checksums.items() if k != CONFIG_NAME} if isinstance(checksums, dict) else checksums
    return bytes_digest(json.dumps({**doc, "checksums": rest}, sort_keys=True, separators=(",", ":")).encode())


def _open_config(directory: Path):
    path = directory / CONFIG_NAME
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(
            f"load_model: {str(directory)!r} has no {CONFIG_NAME}; it is not a save_model directory. "
            f"For weights alone use load_weights(model, path)."
        )
    return open_regular(path, inside=directory, limit="max_config_bytes")


def _read_config(directory: Path, verify: bool = True, opened=None) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    where = f"{str(path)!r}"
    try:
        with opened or _open_config(directory) as f:
            raw = read_capped(f, path, "max_config_bytes")
        doc = safe_json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CorruptCheckpointError(f"{where} is not readable JSON ({e}).") from e
    problems = []
    if not isinstance(doc, dict):
        raise CorruptCheckpointError(f"{where} holds a JSON {type(doc).__name__}, expected an object.")
    if doc.get("format") != FORMAT:
        problems.append(f"'format' is {doc.get('format')!r}, expected {FORMAT!r}")
    if doc.get("format_version") != FORMAT_VERSION:
        problems.append(f"'format_version' is {doc.get('format_version')!r}; this torchsmith reads {FORMAT_VERSION}")
    if not isinstance(doc.get("name"), str):
        problems.append("'name' must be the registered model name")
    if not isinstance(doc.get("kwargs"), dict):
        problems.append("'kwargs' must be an object")
    steps = doc.get("steps", [])
    if not isinstance(steps, list) or not all(isinstance(s, dict) and isinstance(s.get("op"), str) for s in steps):
        problems.append("'steps' must be a list of objects with an 'op' name")
    if doc.get("weights") != WEIGHTS_NAME:
        problems.append(f"'weights' must be {WEIGHTS_NAME!r}")
    checksum = doc.get("checksums", {}).get(WEIGHTS_NAME, {}) if isinstance(doc.get("checksums"), dict) else None
    if not isinstance(checksum, dict) or not isinstance(checksum.get("header_xxh3-64"), str):
        problems.append("'checksums' must record the weights header checksum")
    own = doc["checksums"].get(CONFIG_NAME) if isinstance(doc.get("checksums"), dict) else None
    if not isinstance(own, dict) or not isinstance(own.get("xxh3-64"), str):
        problems.append(f"'checksums' must record the checksum of {CONFIG_NAME} itself (a damaged or hand-edited file?)")
    elif verify and own["xxh3-64"] != _config_digest(doc):
        problems.append(
            f"its content does not match its checksum (recorded {own['xxh3-64']}, content hashes to "
            f"{_config_digest(doc)}): the file was damaged or edited after save_model wrote it (if you edited it "
            f"on purpose, pass verify=False, or save the model again)"
        )
    if isinstance(doc.get("kwargs"), dict):
        bounds = current()
        count, depth = _config_size([doc["kwargs"], doc.get("steps", [])], bounds.max_config_values, bounds.max_config_depth)
        if count > bounds.max_config_values:
            problems.append(f"'kwargs' and 'steps' hold more than {bounds.max_config_values:,} values, nothing was built. {how_to_raise('max_config_values')}")
        elif depth > bounds.max_config_depth:
            problems.append(f"'kwargs' and 'steps' nest deeper than {bounds.max_config_depth}, nothing was built. {how_to_raise('max_config_depth')}")
    if problems:
        raise CorruptCheckpointError(f"{where} is not a valid torchsmith model config: {'; '.join(problems)}.")
    return doc


def _read_pair(directory: Path, verify: bool) -> tuple[dict[str, Any], SafetensorsFile]:
    """``config.json`` and the weights file it was saved with, as one generation.

    A concurrent ``save_model`` renames the weights, then the config, back to back. The config is
    opened first, then the weights (both before either is parsed): the weights a save renamed in
    before that config are the ones open, unless another rename fell in the microseconds between
    the two opens; then the pair is read again (after a short random pause) until it matches, and
    only a mismatch that persists is reported.
    """
    weights = directory / WEIGHTS_NAME
    for attempt in range(PAIR_TRIES):
        config_file = _open_config(directory)
        try:
            st = SafetensorsFile(weights, inside=directory)
        except BaseException:
            config_file.close()
            raise
        doc = _read_config(directory, verify, config_file)
        recorded = doc["checksums"][WEIGHTS_NAME]["header_xxh3-64"]
        got = bytes_digest(st.header_bytes)
        if not verify or got == recorded:
            return doc, st
        st.close()
        if attempt < PAIR_TRIES - 1:
            time.sleep(random.uniform(0, 0.002 * 2**min(attempt, 8)))  # random: never in step with a writer
    raise CorruptCheckpointError(
        f"load_model: {str(weights)!r} is not the file {CONFIG_NAME} was saved with (header checksum "
        f"{got}, recorded {recorded}). Save the model again, or load the weights alone with load_weights."
    )


def _refuse_pickled_model(path: Path, trusted: bool) -> nn.Module:
    obj = read_torch_file(path, trusted=trusted, mmap=False)
    if isinstance(obj, nn.Module):
        return obj
    raise CheckpointError(
        f"load_model: {str(path)!r} holds a {type(obj).__name__}, not a whole model. "
        f"For weights use load_weights(model, {str(path)!r})."
    )


@takes_limits
def load_model(
    directory: str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    verify: bool = True,
    trusted: bool = False,
    verify_signature: str | os.PathLike | None = None,
    limits: Limits | None = None,
) -> nn.Module:
    """Rebuild a model saved by :func:`save_model`, without pickle; returns the model.

    The model is built on the meta device (no memory, no init), its recorded
    surgery steps are replayed, and the weights are read straight into newly
    allocated tensors that become its parameters: one allocation of the
    weights in all. Models holding non-persistent buffers, or whose builder
    reads tensor values (torchvision's RegNet calls ``.tolist()``, which the
    meta device cannot), are built for real instead, then loaded in place.
    Every key must match: anything else raises
    :class:`IncompatibleCheckpointError` with the full report as ``.report``.

    A legacy whole-model pickle (``torch.save(model)``) is refused with an
    error naming what it would import; with ``trusted=True`` it is unpickled.

    ``directory`` may be ``hf://ORG/NAME[@REVISION][/FOLDER]``: a save_model directory pushed to the Hugging
    Face Hub, read from the Hugging Face cache (fetched into it first unless offline).

    ``verify_signature``: a public key (PEM); the directory's signature (``model.sig``, made by
    :func:`sign_checkpoint` / ``torchsmith sign``) is checked against it before anything is read.

    Raises:
        CheckpointError: not a save_model directory, or the model name is not registered
            (import the module that registers it first); plus the errors of load_weights.
        SignatureError: ``verify_signature`` was given and the signature is missing or does not match.
    """
    if is_hf_source(directory):
        directory = resolve_model(directory, also=(SIGNATURE_NAME,) if verify_signature is not None else ())
    directory = Path(directory)
    if directory.is_dir():
        clean_stale_temporaries(directory)  # a save killed with -9 left one (it would also fail a signature)
    if verify_signature is not None:
        verify_checkpoint(directory, public_key=verify_signature)
    if directory.is_file():
        return _refuse_pickled_model(directory, trusted)
    doc, st = _read_pair(directory, verify)
    weights = directory / WEIGHTS_NAME
    config = _decode_config(doc, f"load_model: {str(directory / CONFIG_NAME)!r}")
    try:
        model = rebuild(config, device=map_location)
    except UnknownModelError as e:
        raise CheckpointError(
            f"load_model: {str(directory)!r} holds a {doc['name']!r}, which is not registered here. "
            f"Import the module that registers it (with @register_model) before load_model. ({e})"
        ) from e
    except TorchsmithError:
        raise
    except Exception as e:
        raise CheckpointError(f"load_model: building {doc['name']!r} with {config['kwargs']} failed: {type(e).__name__}: {e}") from e
    # the very file whose header matched config.json, not the path again (a save may replace it meanwhile)
    source = SafetensorsSource(weights, [st], dict(st.aliases), dict(st.metadata), "safetensors")
    persistent = set(model.state_dict())
    tensors = [*model.parameters(), *model.buffers()]
    on_meta = bool(tensors) and tensors[0].is_meta  # else rebuild() built it for real (its builder needs values)
    if on_meta and any(name not in persistent for name, _ in model.named_buffers()):
        # non-persistent buffers need a real build: first the meta model must fit the weights' header,
        # so a config asking for more than the file holds allocates nothing
        check_fits(model, source)
        model = build_from_config(config, device=map_location)
    load_weights(model, source, map_location=map_location, verify=verify, prefix=None)
    return finish_loaded(model, config["steps"])
